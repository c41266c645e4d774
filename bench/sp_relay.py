"""(b) Relay throughput of a real drasyl-sp: 1200-byte APPs between registered nodes,
packets per second relayed with >= 99 % delivery.

``--pairs`` pairs of simulated nodes register over real UDP on loopback; the senders offer
armed APPs (end-to-end encrypted, as nodes send them) at increasing rates, interleaved over
the pairs, and the receivers count the relayed APPs (UNITEs are not counted). With one pair
the super peer can batch its output to the one receiver (UDP GSO); with many interleaved
pairs it cannot, which is the conservative case.

    python3 bench/sp_relay.py [--pairs 16] [--rates 10000,30000,50000,70000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import app_for, cheap_identity, hello_for  # noqa: E402
from spprocess import SuperPeerProcess  # noqa: E402
from udpload import LoadSocket, paced  # noqa: E402

from drasyl.messages import LONG_HEADER_LEN  # noqa: E402

PAYLOAD = 1200


def register(sp: SuperPeerProcess, sock: LoadSocket, node) -> None:
    sock.send(hello_for(node, sp.identity.public_key, sock.address), sp.address)
    deadline = time.monotonic() + 5
    while not sock.drain():
        if time.monotonic() > deadline:
            raise RuntimeError("super peer did not ACK the registration HELLO")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--rates", default="10000,30000,50000,70000")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    sp = SuperPeerProcess(cheap_identity())
    pairs = [(cheap_identity(), LoadSocket(), cheap_identity(), LoadSocket()) for _ in range(args.pairs)]
    app_len = LONG_HEADER_LEN + 48 + PAYLOAD
    is_app = lambda d: len(d) == app_len  # noqa: E731
    try:
        best = 0.0
        for rate in (float(r) for r in args.rates.split(",")):
            for a, sa, b, sb in pairs:  # (re-)register: HELLOs expire after 30 s
                register(sp, sa, a)
                register(sp, sb, b)
            apps = [(sa, app_for(a, b, bytes(PAYLOAD))) for a, sa, b, _ in pairs]
            receivers = [sb for _, _, _, sb in pairs]
            cpu0 = sp.cpu_seconds()
            sent = received = turn = 0
            for due in paced(rate, args.seconds):
                for _ in range(due):
                    sock, app = apps[turn % len(apps)]
                    turn += 1
                    sent += sock.send(app, sp.address)
                if due:
                    received += sum(r.drain(is_app) for r in receivers)
                    for _, sa, _, _ in pairs:
                        sa.drain()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                got = sum(r.drain(is_app) for r in receivers)
                received += got
                if not got:
                    time.sleep(0.01)
            cpu = sp.cpu_seconds() - cpu0
            ratio = received / sent if sent else 0.0
            ok = ratio >= 0.99
            if ok:
                best = max(best, sent / args.seconds)
            print(f"offered {rate:>8,.0f} pps: sent {sent:>8,} relayed {received:>8,} ratio {ratio:6.2%}  "
                  f"sp cpu {cpu / args.seconds:5.0%}  {'ok' if ok else 'LOSS'}")
        print(f"RESULT relay ({args.pairs} pairs): {best:,.0f} pps of {PAYLOAD}-byte APPs with >= 99% delivery "
              f"({best * PAYLOAD * 8 / 1e6:,.0f} Mbit/s of payload)")
    finally:
        sp.stop()


if __name__ == "__main__":
    main()
