"""Our super peer side by side with drasyl-rs' ``drasyl-sp``: the same load, one run.

Both super peers run as subprocesses on loopback with the same identity (a vector identity,
no proof of work to compute), so the very same HELLO and APP bytes serve both; they are
driven by the same code as ``sp_capacity.py`` and ``sp_relay.py``. Every repeat starts a
fresh pair of processes, and within a repeat every rate step runs against both super peers
back to back, the order alternating between repeats, so machine noise hits both alike.
The table shows medians over the repeats and the ratio ours/theirs per row.

Rows: registration (highest offered HELLO/s whose median answered share is >= 99 %, as at
every lower rate; ``--nodes`` registered nodes), relay (likewise for 1200-byte APPs/s delivered,
``--pairs`` interleaved pairs), the super peer's CPU per answered packet, and RSS (empty,
with the nodes, per 1000 nodes, after each HELLO rate step). After the table: the answered
share and CPU per step, and whether the load generator could have been the bottleneck.

    python3 bench/vs_drasyl_rs.py [--nodes 20000] [--rates 10000,20000,...,70000]
        [--relay-rates 10000,20000,30000,...,90000] [--seconds 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import vector_identity  # noqa: E402
from sp_capacity import HelloLoad  # noqa: E402
from sp_relay import PAYLOAD, RelayLoad  # noqa: E402
from spprocess import DRASYL_RS, OURS, SuperPeerProcess, drasyl_rs_binary  # noqa: E402
from udpload import Step  # noqa: E402

IMPLS = (OURS, DRASYL_RS)
MAX_PEERS = 1 << 16  # drasyl-rs wants a power of two
MB = 1e6
MIB = 2**20


@dataclass
class Run:
    """One super peer's numbers in one repeat."""

    rss_empty: int = 0
    rss_nodes: int = 0
    registered: int = 0
    hello: list[Step] = field(default_factory=list)
    relay: list[Step] = field(default_factory=list)


def best_rate(results: list[dict[str, Run]], pick, impl: str) -> float:
    """The highest offered rate whose median answered share over the repeats is >= 99 %, as
    it is at every lower rate (one noisy step in one repeat does not decide the row)."""
    best = 0.0
    for i, step in enumerate(pick(results[0][impl])):
        if statistics.median(pick(r[impl])[i].ratio for r in results) < 0.99:
            break
        best = step.rate
    return best


def cpu_us_per_packet(results: list[dict[str, Run]], pick, impl: str) -> float:
    """Median super peer CPU µs per answered packet, over the steps both passed."""
    values = []
    for r in results:
        for ours, theirs in zip(pick(r[OURS]), pick(r[DRASYL_RS])):
            if ours.ok and theirs.ok:
                step = ours if impl == OURS else theirs
                values.append(step.sp_cpu * step.seconds / step.received * 1e6)
    return statistics.median(values) if values else float("nan")


def one_repeat(repeat: int, args, sp_id, hellos: HelloLoad, relay: RelayLoad) -> dict[str, Run]:
    order = IMPLS if repeat % 2 == 0 else IMPLS[::-1]
    sps: dict[str, SuperPeerProcess] = {}
    runs = {k: Run() for k in order}
    try:
        for k in order:
            sps[k] = SuperPeerProcess(sp_id, k, MAX_PEERS)
            runs[k].rss_empty = sps[k].rss()
        for k in order:
            runs[k].registered = hellos.register(sps[k], args.register_rate)[1]
            runs[k].rss_nodes = sps[k].rss()
            print(f"  [{repeat + 1}] {k:9}: {runs[k].registered:,} nodes registered, "
                  f"RSS {runs[k].rss_empty / MIB:.1f} -> {runs[k].rss_nodes / MIB:.1f} MiB", flush=True)
        for rate in args.rates:
            for k in order:
                step = hellos.offer(sps[k], rate, args.seconds)
                runs[k].hello.append(step)
                print(f"  [{repeat + 1}] {k:9} {step.line('HELLO/s', 'acked')}", flush=True)
        for rate in args.relay_rates:
            for k in order:
                step = relay.offer(sps[k], rate, args.seconds)
                runs[k].relay.append(step)
                print(f"  [{repeat + 1}] {k:9} {step.line('APP/s', 'relayed')}", flush=True)
    finally:
        for sp in sps.values():
            sp.stop()
    return runs


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "–"


def report(args, results: list[dict[str, Run]]) -> None:
    med = statistics.median

    def m(f, k):
        return med(f(r[k]) for r in results)

    rows: list[tuple[str, float, float, str, str]] = []
    fmt_rate = "{:,.0f}".format
    top_h, top_r = max(args.rates), max(args.relay_rates)
    hello, relay = (lambda r: r.hello), (lambda r: r.relay)
    rows.append((f"registration: HELLO/s answered ≥ 99 % ({args.nodes:,} nodes)",
                 best_rate(results, hello, OURS), best_rate(results, hello, DRASYL_RS), "higher", fmt_rate))
    rows.append((f"relay: {PAYLOAD}-byte APPs/s delivered ≥ 99 % ({args.pairs} pairs)",
                 best_rate(results, relay, OURS), best_rate(results, relay, DRASYL_RS), "higher", fmt_rate))
    fmt_us = "{:.1f} µs".format
    for name, pick in (("HELLO → ACK", lambda r: r.hello), ("relayed APP", lambda r: r.relay)):
        rows.append((f"super peer CPU per {name} (steps both passed)", cpu_us_per_packet(results, pick, OURS),
                     cpu_us_per_packet(results, pick, DRASYL_RS), "lower", fmt_us))
    fmt_mib = "{:.1f} MiB".format
    rows.append(("RSS, empty", m(lambda r: r.rss_empty, OURS) / MIB, m(lambda r: r.rss_empty, DRASYL_RS) / MIB,
                 "lower", fmt_mib))
    rows.append((f"RSS with {args.nodes:,} nodes", m(lambda r: r.rss_nodes, OURS) / MIB,
                 m(lambda r: r.rss_nodes, DRASYL_RS) / MIB, "lower", fmt_mib))
    per_k = lambda r: (r.rss_nodes - r.rss_empty) / r.registered * 1000 / MB  # noqa: E731
    rows.append(("RSS per 1000 nodes", m(per_k, OURS), m(per_k, DRASYL_RS), "lower", "{:.2f} MB".format))
    for i, rate in enumerate(args.rates):
        rows.append((f"RSS after {rate:,.0f} HELLO/s", m(lambda r: r.hello[i].rss, OURS) / MIB,
                     m(lambda r: r.hello[i].rss, DRASYL_RS) / MIB, "lower", fmt_mib))

    print(f"\n## ours vs drasyl-rs: medians of {len(results)} repeats\n")
    print("| row | ours | drasyl-rs | ours/theirs | better |")
    print("|---|---:|---:|---:|---|")
    for name, ours, theirs, better, fmt in rows:
        print(f"| {name} | {fmt(ours)} | {fmt(theirs)} | {ratio(ours, theirs)} | {better} |")
    print(f"\nTop offered rates: {top_h:,.0f} HELLO/s and {top_r:,.0f} APP/s; "
          "a super peer at the top rate may sustain more.")

    for title, pick, rates in (("HELLO/s", lambda r: r.hello, args.rates), ("APP/s", lambda r: r.relay, args.relay_rates)):
        print(f"\n| offered {title} | ours answered | drasyl-rs answered | ours CPU | drasyl-rs CPU | generator CPU |")
        print("|---:|---:|---:|---:|---:|---:|")
        for i, rate in enumerate(rates):
            ours = [pick(r[OURS])[i] for r in results]
            theirs = [pick(r[DRASYL_RS])[i] for r in results]
            gen = max(s.gen_cpu for s in ours + theirs)
            print(f"| {rate:,.0f} | {med(s.ratio for s in ours):.2%} | {med(s.ratio for s in theirs):.2%} | "
                  f"{med(s.sp_cpu for s in ours):.0%} | {med(s.sp_cpu for s in theirs):.0%} | ≤ {gen:.0%} |")

    steps = [s for r in results for run in r.values() for kind in (run.hello, run.relay) for s in deciding(kind)]
    gen = max(s.gen_cpu for s in steps)
    short = max(s.send_shortfall for s in steps)
    late = max(s.seconds / s.asked - 1 for s in steps)
    verdict = "not the bottleneck" if gen < 0.9 and short < 0.01 and late < 0.05 else "POSSIBLY THE BOTTLENECK"
    print(f"\nLoad generator, in the steps that decide the rows (each super peer's steps up to its first loss): "
          f"at most {gen:.0%} of a core, at most {max(short, 0):.2%} of offered packets not sent, steps at most "
          f"{max(late, 0):.1%} longer than asked: {verdict}.")


def deciding(steps: list[Step]) -> list[Step]:
    """The steps up to and including the first one below 99 %."""
    for i, step in enumerate(steps):
        if not step.ok:
            return steps[: i + 1]
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20_000)
    ap.add_argument("--rates", default="10000,20000,30000,40000,50000,60000,70000")
    ap.add_argument("--relay-rates", default="10000,20000,30000,45000,60000,75000,90000")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--register-rate", type=float, default=3000.0, help="new nodes per second")
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    args.relay_rates = [float(r) for r in args.relay_rates.split(",")]
    try:
        drasyl_rs_binary()
    except FileNotFoundError as exc:
        sys.exit(str(exc))

    print(f"machine: {psutil.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.platform()}; load average {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")
    print(f"building {args.nodes:,} simulated nodes and {args.pairs} pairs ...", flush=True)
    sp_id = vector_identity()
    hellos = HelloLoad(args.nodes, sp_id.public_key)
    hellos.build()  # session keys, once
    relay = RelayLoad(args.pairs, sp_id.public_key)
    busy0 = psutil.cpu_times()
    results = [one_repeat(i, args, sp_id, hellos, relay) for i in range(args.repeats)]
    report(args, results)
    print(f"\nmachine busy during the run (all processes, both CPUs): {busy_share(busy0, psutil.cpu_times()):.0%}; "
          f"load average at the end: {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")


def busy_share(t0, t1) -> float:
    """Share of all CPUs' time spent not idle between two psutil.cpu_times() readings."""
    idle = (t1.idle + getattr(t1, "iowait", 0)) - (t0.idle + getattr(t0, "iowait", 0))
    total = sum(t1) - sum(t0)
    return 1 - idle / total if total else 0.0


if __name__ == "__main__":
    main()
