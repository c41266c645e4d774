"""Instructions per HELLO → ACK and per relayed APP in the super peer core, counted by
callgrind: a before/after measure that the machine's noise does not move.

Wall-clock and CPU-time numbers on this shared 2-vCPU machine move by 10-30 % between runs;
instruction counts move by < 0.5 %. The script runs itself under ``valgrind --tool=callgrind``
twice per operation, with ``--n`` and ``3 × --n`` operations after the same setup, and prints
the difference per operation (setup, interpreter start and imports cancel out). ``--path
server`` also counts the daemon's sending of the outbox per batch of 64
(``SuperPeerServer._send_outbox``) into a socket that drops what it is given (no syscalls).

    python3 bench/sp_instructions.py [--peers 500] [--n 3000] [--path core|server]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def workload(op: str, peers: int, n: int, path: str) -> None:
    from simnodes import app_for, cheap_identity, hello_for

    from drasyl.superpeer.core import SuperPeerConfig, SuperPeerCore
    from drasyl.transmit import UDP

    sp = cheap_identity()
    core = SuperPeerCore(sp, SuperPeerConfig(min_pow_difficulty=0, max_peers=1 << 20, send_unites_ms=5000))
    local = ("192.0.2.1", 22527)
    nodes = [cheap_identity() for _ in range(peers)]
    srcs = [("198.51.100.7", 20000 + i) for i in range(peers)]
    hellos = [(hello_for(node, sp.public_key, ("10.0.0.1", 20000 + i)), srcs[i]) for i, node in enumerate(nodes)]
    now = time.time_ns() // 1000
    for data, src in hellos:
        core.receive(data, UDP, local, src, now)
    assert len(core.peers) == peers, core.drops
    core.outbox.clear()
    if op == "hello":
        packets = hellos
    else:  # pairs (0, 1), (2, 3), ...: one UNITE pair each, then plain relays
        packets = [(app_for(nodes[i], nodes[i ^ 1], bytes(1200)), srcs[i]) for i in range(peers)]
    batches = [packets[i:i + 64] for i in range(0, len(packets), 64)]
    if path == "server":
        from drasyl.superpeer import server

        class Sink:
            def send_batch(self, batch):
                pass

            def send_segments(self, datagrams, size, addr):
                pass

        srv = server.SuperPeerServer.__new__(server.SuperPeerServer)  # only what sending needs
        srv.core, srv._udp, srv.drops = core, {local: Sink()}, Counter()
        srv._faults = server.FaultLog(srv.drops)
        done = 0
        while done < n:
            for batch in batches:
                for data, src in batch:
                    core.receive(data, UDP, local, src, now)
                srv._send_outbox()
                done += len(batch)
                if done >= n:
                    break
    else:
        receive = core.receive
        done = 0
        while done < n:
            for data, src in packets:
                receive(data, UDP, local, src, now)
                done += 1
                if done >= n:
                    break
            core.outbox.clear()


def count(op: str, peers: int, n: int, path: str) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                        __file__, "--child", op, "--peers", str(peers), "--n", str(n), "--path", path],
                       check=True, capture_output=True)
        text = Path(out).read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=500)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--path", choices=("core", "server"), default="core")
    ap.add_argument("--ops", default="hello,relay")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        workload(args.child, args.peers, args.n, args.path)
        return
    for op in args.ops.split(","):
        a = count(op, args.peers, args.n, args.path)
        b = count(op, args.peers, 3 * args.n, args.path)
        print(f"{args.path} {op}: {(b - a) / (2 * args.n):,.0f} instructions per packet", flush=True)


if __name__ == "__main__":
    main()
