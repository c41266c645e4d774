"""(b) Relay throughput of a real super peer: 1200-byte APPs between registered nodes,
packets per second relayed with >= 99 % delivery.

``--pairs`` pairs of simulated nodes register over real UDP on loopback; the senders offer
armed APPs (end-to-end encrypted, as nodes send them) at increasing rates, interleaved over
the pairs, and the receivers count the relayed APPs (UNITEs are not counted). With one pair
the super peer can batch its output to the one receiver (UDP GSO); with many interleaved
pairs it cannot, which is the conservative case. ``--impl drasyl-rs`` runs the reference;
``vs_drasyl_rs.py`` drives the same :class:`RelayLoad` against both.

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
from spprocess import DRASYL_RS, OURS, SuperPeerProcess  # noqa: E402
from udpload import LoadSocket, Meter, SocketGroup, Step, paced  # noqa: E402

from drasyl.messages import LONG_HEADER_LEN  # noqa: E402

PAYLOAD = 1200
APP_LEN = LONG_HEADER_LEN + 48 + PAYLOAD


def is_app(data: bytes) -> bool:
    return len(data) == APP_LEN


class RelayLoad:
    """``pairs`` (sender, receiver) node pairs, each node on its own socket."""

    def __init__(self, pairs: int, sp_public_key: bytes) -> None:
        self.sp_public_key = sp_public_key
        self.pairs = [(cheap_identity(), LoadSocket(), cheap_identity(), LoadSocket()) for _ in range(pairs)]
        self.apps = [(sa, app_for(a, b, bytes(PAYLOAD))) for a, sa, b, _ in self.pairs]
        self.relayed = SocketGroup([sb for _, _, _, sb in self.pairs], is_app)
        self.unites = SocketGroup([sa for _, sa, _, _ in self.pairs])  # drained, not counted

    def register(self, sp: SuperPeerProcess) -> None:
        """(Re-)register every node with ``sp`` (registrations expire after 30 s)."""
        for a, sa, b, sb in self.pairs:
            for node, sock in ((a, sa), (b, sb)):
                sock.send(hello_for(node, self.sp_public_key, sock.address), sp.address)
                deadline = time.monotonic() + 5
                while not sock.drain():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{sp.kind} super peer did not ACK the registration HELLO")
                    time.sleep(0.001)

    def offer(self, sp: SuperPeerProcess, rate: float, seconds: float) -> Step:
        self.register(sp)
        self.relayed.drain()
        apps, dest, n = self.apps, sp.address, len(self.apps)
        sent = received = turn = 0
        meter = Meter(sp, seconds)
        for due in paced(rate, seconds):
            for _ in range(due):
                sock, app = apps[turn % n]
                turn += 1
                sent += sock.send(app, dest)
            received += self.relayed.drain()
            self.unites.drain()
        meter.sending_done()
        received += self.relayed.drain_tail()
        return meter.step(rate, sent, received)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=(OURS, DRASYL_RS), default=OURS)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--rates", default="10000,30000,50000,70000")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    sp_id = cheap_identity()
    sp = SuperPeerProcess(sp_id, args.impl)
    load = RelayLoad(args.pairs, sp_id.public_key)
    try:
        best = 0.0
        for rate in (float(r) for r in args.rates.split(",")):
            step = load.offer(sp, rate, args.seconds)
            if step.ok:
                best = max(best, step.sent / step.seconds)
            print(step.line("pps", "relayed"))
        print(f"RESULT relay ({args.pairs} pairs): {best:,.0f} pps of {PAYLOAD}-byte APPs with >= 99% delivery "
              f"({best * PAYLOAD * 8 / 1e6:,.0f} Mbit/s of payload)")
    finally:
        sp.stop()


if __name__ == "__main__":
    main()
