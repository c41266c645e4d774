"""(a) Registration capacity of a real drasyl-sp: HELLO/s answered with >= 99 % ACKs, RSS per
1000 registered nodes.

Simulated nodes (PoW difficulty 0) send armed HELLOs over real UDP on loopback to a
``drasyl-sp`` subprocess. Every node is first registered (the first HELLO of a key costs a
PoW check and a key derivation), then re-registration HELLOs are offered at increasing rates;
each rate step reports sent, ACKed and the ACK ratio.

    python3 bench/sp_capacity.py [--nodes 50000] [--rates 5000,10000,15000,20000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import cheap_identity, hello_for  # noqa: E402
from spprocess import SuperPeerProcess  # noqa: E402
from udpload import LoadSocket, paced  # noqa: E402

SOCKETS = 64


def offer(sp: SuperPeerProcess, socks: list[LoadSocket], hellos: list[list[bytes]], rate: float, seconds: float) -> tuple[int, int]:
    """Send HELLOs at ``rate`` for ``seconds``, each from the next socket; count the ACKs."""
    cursors = [itertools.cycle(h) for h in hellos]
    sent = acked = 0
    turn = 0
    n = len(socks)
    for due in paced(rate, seconds):
        for _ in range(due):
            i = turn % n
            turn += 1
            sent += socks[i].send(next(cursors[i]), sp.address)
        if due:
            for s in socks:
                acked += s.drain()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        got = sum(s.drain() for s in socks)
        acked += got
        if not got:
            time.sleep(0.01)
    return sent, acked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=50_000)
    ap.add_argument("--rates", default="5000,10000,15000,20000,30000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--register-rate", type=float, default=3000.0, help="new nodes per second")
    args = ap.parse_args()

    print(f"building {args.nodes} simulated nodes ...", file=sys.stderr)
    sp_id = cheap_identity()
    nodes = [cheap_identity() for _ in range(args.nodes)]
    socks = [LoadSocket() for _ in range(SOCKETS)]
    sp = SuperPeerProcess(sp_id)
    try:
        groups = [nodes[i::SOCKETS] for i in range(SOCKETS)]

        def build() -> list[list[bytes]]:
            return [[hello_for(n, sp_id.public_key, s.address) for n in g] for g, s in zip(groups, socks)]

        hellos = build()
        rss0 = sp.rss()
        # registration: every key once, paced for the first-HELLO path (PoW + key derivation)
        t0 = time.perf_counter()
        sent = acked = 0
        for batch in range(0, max(map(len, hellos)), 8):
            for s, h in zip(socks, hellos):
                for data in h[batch : batch + 8]:
                    sent += s.send(data, sp.address)
            time.sleep(8 * len(socks) / args.register_rate)
            acked += sum(x.drain() for x in socks)
        deadline = time.monotonic() + 10
        while acked < sent and time.monotonic() < deadline:
            acked += sum(x.drain() for x in socks)
            time.sleep(0.05)
        reg_time = time.perf_counter() - t0
        rss1 = sp.rss()
        print(f"registered: {acked}/{sent} ACKed in {reg_time:.1f} s "
              f"({acked / reg_time:,.0f} new registrations/s)")
        print(f"RSS: {rss0 / 2**20:.1f} MiB empty, {rss1 / 2**20:.1f} MiB with {args.nodes} nodes "
              f"=> {(rss1 - rss0) / args.nodes * 1000 / 1e6:.2f} MB per 1000 nodes")
        best = 0
        for rate in (float(r) for r in args.rates.split(",")):
            hellos = build()  # fresh timestamps (hello_max_age)
            cpu0 = sp.cpu_seconds()
            sent, acked = offer(sp, socks, hellos, rate, args.seconds)
            cpu = sp.cpu_seconds() - cpu0
            ratio = acked / sent if sent else 0.0
            ok = ratio >= 0.99
            best = max(best, sent / args.seconds) if ok else best
            print(f"offered {rate:>8,.0f} HELLO/s: sent {sent:>8,} acked {acked:>8,} "
                  f"ratio {ratio:6.2%}  sp cpu {cpu / args.seconds:5.0%}  {'ok' if ok else 'LOSS'}")
        print(f"RESULT registration capacity: {best:,.0f} HELLO/s with >= 99% ACKs "
              f"(= {best * 5:,.0f} nodes at the 5 s interval)")
    finally:
        sp.stop()


if __name__ == "__main__":
    main()
