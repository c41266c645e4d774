"""(c) CPU per HELLO and per relayed packet inside the sans-I/O super peer core, and per
codec call (arming and disarming with AEGIS-256X2).

No sockets: packets are fed to SuperPeerCore.receive directly and the outbox is discarded.
Prints µs of CPU (process time) per operation, median of several rounds.

    python3 bench/core_cpu.py [--peers 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import app_for, cheap_identity, hello_for  # noqa: E402

from drasyl.messages import ACK, APP, LONG_HEADER_LEN, encode_message, open_body, parse_long_header  # noqa: E402
from drasyl.superpeer.core import SuperPeerConfig, SuperPeerCore  # noqa: E402
from drasyl.transmit import UDP  # noqa: E402


def per_call_us(fn, rounds: int, n: int = 100_000) -> float:
    """Median over ``rounds`` of the CPU µs per call of ``fn()``."""
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        times.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(times)


def codec_costs(rounds: int) -> None:
    """µs per arming (encode_message) and disarming (open_body) of an ACK and a full APP."""
    a, b = cheap_identity(), cheap_identity()
    key = bytes(32)
    for name, mtype, body in (("8-byte ACK body", ACK, bytes(8)), ("1345-byte APP", APP, bytes(1345))):
        def arm(mtype=mtype, body=body):
            return encode_message(mtype, 1, b.public_key, a.public_key, a.proof_of_work, body, key)
        data = bytes(arm())
        header = parse_long_header(data)
        assert open_body(data, header, key) == body
        print(f"{name}: arm (encode_message) {per_call_us(arm, rounds):.2f} µs, "
              f"disarm (open_body) {per_call_us(lambda: open_body(data, header, key), rounds):.2f} µs "
              f"({len(data) - LONG_HEADER_LEN} armed bytes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    sp = cheap_identity()
    core = SuperPeerCore(sp, SuperPeerConfig(min_pow_difficulty=0, max_peers=1 << 20, send_unites_ms=5000))
    local = ("192.0.2.1", 22527)
    print(f"building {args.peers} simulated nodes ...", file=sys.stderr)
    nodes = [cheap_identity() for _ in range(args.peers)]
    hellos = [(hello_for(n, sp.public_key, ("10.0.0.1", 20000 + i % 40000)), ("198.51.100.7", 20000 + i % 40000))
              for i, n in enumerate(nodes)]
    now = time.time_ns() // 1000
    t0 = time.process_time()
    for data, src in hellos:
        core.receive(data, UDP, local, src, now)
    first = (time.process_time() - t0) / len(hellos) * 1e6
    assert len(core.peers) == len(nodes), core.drops
    core.outbox.clear()

    hello_us = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        for data, src in hellos:
            core.receive(data, UDP, local, src, now)
        hello_us.append((time.process_time() - t0) / len(hellos) * 1e6)
        core.outbox.clear()

    a, b = nodes[0], nodes[1]
    app = app_for(a, b, bytes(1200))
    src = hellos[0][1]
    n = 100_000
    relay_us = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        for _ in range(n):
            core.receive(app, UDP, local, src, now)
        relay_us.append((time.process_time() - t0) / n * 1e6)
        core.outbox.clear()

    codec_costs(args.rounds)
    print(f"first HELLO per new peer (PoW check + key derivation): {first:.1f} µs")
    print(f"HELLO from a registered peer -> ACK: {statistics.median(hello_us):.2f} µs "
          f"(=> {1e6 / statistics.median(hello_us):,.0f} HELLO/s of core CPU)")
    print(f"relayed 1200-byte APP: {statistics.median(relay_us):.2f} µs "
          f"(=> {1e6 / statistics.median(relay_us):,.0f} pps of core CPU)")


if __name__ == "__main__":
    main()
