"""(a) Registration capacity of a real super peer: HELLO/s answered with >= 99 % ACKs, RSS per
1000 registered nodes.

Simulated nodes (PoW difficulty 0) send armed HELLOs over real UDP on loopback to a super
peer subprocess (ours by default, ``--impl drasyl-rs`` for the reference). Every node is
first registered (the first HELLO of a key costs a PoW check and a key derivation), then
re-registration HELLOs are offered at increasing rates; each rate step reports sent, ACKed,
the ACK ratio, both processes' CPU and the super peer's RSS. ``vs_drasyl_rs.py`` drives the
same :class:`HelloLoad` against both implementations. ``--scrape`` (ours only) turns the
Prometheus endpoint on and scrapes /metrics after each step, to watch what scrapes of many
peers do to RSS.

    python3 bench/sp_capacity.py [--nodes 50000] [--rates 5000,10000,15000,20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import cheap_identity, hello_for  # noqa: E402
from spprocess import DRASYL_RS, OURS, SuperPeerProcess, free_udp_port  # noqa: E402
from udpload import LoadSocket, Meter, SocketGroup, Step, paced  # noqa: E402

from drasyl.identity import Identity  # noqa: E402

SOCKETS = 64


class HelloLoad:
    """``nodes`` simulated nodes spread over :data:`SOCKETS` sockets, all registering with
    super peers of one identity (so the same HELLO bytes serve every super peer)."""

    def __init__(self, nodes: int, sp_public_key: bytes, sockets: int = SOCKETS) -> None:
        self.sp_public_key = sp_public_key
        self.nodes = [cheap_identity() for _ in range(nodes)]
        self.socks = [LoadSocket() for _ in range(sockets)]
        self.replies = SocketGroup(self.socks)
        self.groups = [self.nodes[i::sockets] for i in range(sockets)]

    def build(self) -> list[list[bytes]]:
        """Every node's HELLO, stamped now (hello_max_age), per socket."""
        pk = self.sp_public_key
        return [[hello_for(n, pk, s.address) for n in g] for g, s in zip(self.groups, self.socks)]

    def register(self, sp: SuperPeerProcess, rate: float = 3000.0) -> tuple[int, int, float]:
        """Register every node once at ``rate`` (the first HELLO of a key costs a PoW check
        and a key derivation); (sent, acked, seconds)."""
        t0 = time.perf_counter()
        step = self.offer(sp, rate, len(self.nodes) / rate)
        return step.sent, step.received, time.perf_counter() - t0

    def offer(self, sp: SuperPeerProcess, rate: float, seconds: float) -> Step:
        """Send HELLOs (fresh stamps) at ``rate`` for ``seconds``, socket after socket,
        each socket cycling through its nodes; count the ACKs."""
        cursors = [itertools.cycle(h) for h in self.build()]
        socks, replies = self.socks, self.replies
        replies.drain()  # nothing left over from a previous step
        sent = acked = turn = 0
        n = len(socks)
        dest = sp.address
        meter = Meter(sp, seconds)
        for due in paced(rate, seconds):
            for _ in range(due):
                i = turn % n
                turn += 1
                sent += socks[i].send(next(cursors[i]), dest)
            acked += replies.drain()
        meter.sending_done()
        acked += replies.drain_tail()
        return meter.step(rate, sent, acked)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=(OURS, DRASYL_RS), default=OURS)
    ap.add_argument("--nodes", type=int, default=50_000)
    ap.add_argument("--rates", default="5000,10000,15000,20000,30000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--register-rate", type=float, default=3000.0, help="new nodes per second")
    ap.add_argument("--scrape", action="store_true", help="metrics on, scrape /metrics after each step (ours)")
    args = ap.parse_args()

    print(f"building {args.nodes} simulated nodes ...", file=sys.stderr)
    sp_id: Identity = cheap_identity()
    load = HelloLoad(args.nodes, sp_id.public_key)
    metrics_port = free_udp_port()
    env = {"DRASYL_PROMETHEUS_LISTEN": f"127.0.0.1:{metrics_port}"} if args.scrape else {}
    sp = SuperPeerProcess(sp_id, args.impl, extra_env=env)
    try:
        rss0 = sp.rss()
        sent, acked, reg_time = load.register(sp, args.register_rate)
        rss1 = sp.rss()
        print(f"registered: {acked}/{sent} ACKed in {reg_time:.1f} s "
              f"({acked / reg_time:,.0f} new registrations/s)")
        print(f"RSS: {rss0 / 2**20:.1f} MiB empty, {rss1 / 2**20:.1f} MiB with {args.nodes} nodes "
              f"=> {(rss1 - rss0) / args.nodes * 1000 / 1e6:.2f} MB per 1000 nodes")
        best = 0.0
        for rate in (float(r) for r in args.rates.split(",")):
            step = load.offer(sp, rate, args.seconds)
            if step.ok:
                best = max(best, step.sent / step.seconds)
            print(step.line("HELLO/s", "acked"))
            if args.scrape:
                size = len(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read())
                print(f"  scraped /metrics ({size / 1e6:.1f} MB of text): RSS {sp.rss() / 2**20:.1f} MiB")
        print(f"RESULT registration capacity: {best:,.0f} HELLO/s with >= 99% ACKs "
              f"(= {best * 5:,.0f} nodes at the 5 s interval)")
    finally:
        sp.stop()


if __name__ == "__main__":
    main()
