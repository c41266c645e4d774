"""CPU per packet of our super peer's socket loop with ``recvmmsg``/``sendmmsg`` and without.

One in-process :class:`SuperPeerServer` on loopback, nodes registered; each round fills its
socket with a burst of HELLOs (then relayed APPs) from the load sockets, and times only the
server's part: one reader call after another (receive, core, send the outbox) until the
socket is empty, as thread CPU time (user and kernel; loopback delivers the replies within the
send call). Rounds alternate the batched path and the plain one (``UdpSocket.batcher``
switched off) on the same server, so both see the same peers and the same machine noise;
the load generator's sends and reads fall outside the timed part.

    python3 bench/udp_batching.py [--nodes 5000] [--burst 64] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import hello_for, vector_identity  # noqa: E402
from sp_capacity import HelloLoad  # noqa: E402
from sp_relay import RelayLoad  # noqa: E402

from drasyl.net.udp import UdpSocket  # noqa: E402
from drasyl.superpeer.config import DaemonConfig  # noqa: E402
from drasyl.superpeer.server import SuperPeerServer  # noqa: E402

ENV = {"DRASYL_UDP4_LISTEN": "127.0.0.1:0", "DRASYL_UDP6_LISTEN": "", "DRASYL_TCP4_LISTEN": "",
       "DRASYL_TCP6_LISTEN": "", "DRASYL_PROMETHEUS_LISTEN": "", "DRASYL_MIN_POW_DIFFICULTY": "0",
       "DRASYL_MAX_PEERS": "65536", "DRASYL_PEERS_PRINT_INTERVAL": "0"}


def waiting(udp: UdpSocket) -> bool:
    try:
        udp.sock.recv(1, socket.MSG_PEEK)
        return True
    except BlockingIOError:
        return False


async def measure(args) -> None:
    sp_id = vector_identity()
    server = SuperPeerServer(sp_id, DaemonConfig.from_env(ENV))
    await server.start()
    (udp,) = server._udp.values()
    batcher = udp.batcher
    if batcher is None:
        sys.exit("recvmmsg/sendmmsg are not available here: nothing to compare")
    hellos = HelloLoad(args.nodes, sp_id.public_key)
    relay = RelayLoad(args.pairs, sp_id.public_key)

    def pump(items: list) -> float:
        """Send ``(LoadSocket, datagram)`` items burst by burst; CPU µs per item of serving them."""
        cpu = 0.0
        for k in range(0, len(items), args.burst):
            for sock, data in items[k:k + args.burst]:
                sock.send(data, udp.local)
            t0 = time.thread_time()
            udp._readable()
            while waiting(udp):
                udp._readable()
            cpu += time.thread_time() - t0
            hellos.replies.drain()
            relay.relayed.drain()
            relay.unites.drain()
        return cpu / len(items) * 1e6

    def hello_items() -> list:
        return [(s, h) for group, s in zip(hellos.build(), hellos.socks) for h in group]

    try:
        pump(hello_items())  # registration: PoW checks and key derivations, not measured
        pump([(sock, hello_for(node, sp_id.public_key, sock.address))
              for a, sa, b, sb in relay.pairs for node, sock in ((a, sa), (b, sb))])
        apps = [relay.apps[i % len(relay.apps)] for i in range(args.nodes)]
        cpu: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for mode in ("batched", "plain") if r % 2 == 0 else ("plain", "batched"):
                udp.batcher = batcher if mode == "batched" else None
                cpu.setdefault((mode, "HELLO → ACK"), []).append(pump(hello_items()))
                cpu.setdefault((mode, "relayed APP"), []).append(pump(apps))
    finally:
        await server.close()
    drops = {k: v for k, v in (server.core.drops + server.io_drops()).items() if v}
    print(f"{args.nodes:,} nodes, bursts of {args.burst}, {args.rounds} rounds; drops: {drops or 'none'}")
    for kind in ("HELLO → ACK", "relayed APP"):
        plain, batched = (statistics.median(cpu[(m, kind)]) for m in ("plain", "batched"))
        print(f"  {kind}: plain {plain:.2f} µs, batched {batched:.2f} µs per packet "
              f"(batched/plain {batched / plain:.3f}, medians)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--burst", type=int, default=64, help="datagrams waiting per reader call")
    ap.add_argument("--rounds", type=int, default=10)
    asyncio.run(measure(ap.parse_args()))


if __name__ == "__main__":
    main()
