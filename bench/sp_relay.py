"""(b) Relay throughput of a real drasyl-sp: 1200-byte APPs between two registered nodes,
packets per second relayed with >= 99 % delivery.

Two simulated nodes register over real UDP on loopback; the sender offers armed APPs
(end-to-end encrypted, as a node sends them) at increasing rates; the receiver counts the
relayed APPs (UNITEs are not counted).

    python3 bench/sp_relay.py [--rates 10000,20000,30000,40000] [--seconds 5]
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
    sock.send_same_size([hello_for(node, sp.identity.public_key, sock.address)], sp.address)
    deadline = time.monotonic() + 5
    while not sock.drain():
        if time.monotonic() > deadline:
            raise RuntimeError("super peer did not ACK the registration HELLO")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="10000,20000,30000,40000,50000")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    sp_id, a, b = cheap_identity(), cheap_identity(), cheap_identity()
    sa, sb = LoadSocket(), LoadSocket()
    sp = SuperPeerProcess(sp_id)
    app_len = LONG_HEADER_LEN + 48 + PAYLOAD
    try:
        best = 0.0
        for rate in (float(r) for r in args.rates.split(",")):
            register(sp, sa, a)
            register(sp, sb, b)
            app = app_for(a, b, bytes(PAYLOAD))
            cpu0 = sp.cpu_seconds()
            sent = received = 0
            is_app = lambda d: len(d) == app_len  # noqa: E731
            for due in paced(rate, args.seconds):
                while due > 0:
                    n = min(due, 64)
                    sent += sa.send_same_size([app] * n, sp.address)
                    due -= n
                received += sb.drain(is_app)
                sa.drain()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                got = sb.drain(is_app)
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
        print(f"RESULT relay: {best:,.0f} pps of {PAYLOAD}-byte APPs with >= 99% delivery "
              f"({best * PAYLOAD * 8 / 1e6:,.0f} Mbit/s of payload)")
    finally:
        sp.stop()


if __name__ == "__main__":
    main()
