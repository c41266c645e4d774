"""Our super peer side by side with drasyl-rs' ``drasyl-sp``: the same load, one run, each
super peer's ceiling.

Both super peers run as subprocesses on loopback with the same identity (a vector identity,
no proof of work to compute), so the very same HELLO and APP bytes serve both; they are
driven by the same code as ``sp_capacity.py`` and ``sp_relay.py``. Every repeat starts a
fresh set of processes. Within a repeat the offered rate starts at ``--start-rate`` and is
raised by ``--step`` (× 1.25) until every super peer has dropped below 99 % answered; each
rate step runs against every super peer still passing, back to back, the order alternating
between repeats, so machine noise hits them alike. A super peer's *ceiling* in a repeat is
the highest rate it answered ≥ 99 % before its first step below; the table shows medians over
the repeats and the ratio to drasyl-rs per row.

``--impls`` names the super peers: ``ours``, ``drasyl-rs``, ``ours:N`` for ours with
``DRASYL_WORKERS=N`` (CPU and RSS then sum the worker processes), and ``ours-py`` (or
``ours-py:N``) for ours without its C accelerator (``DRASYL_NATIVE=off``).

Rows: registration ceiling (HELLO/s ACKed ≥ 99 %, ``--nodes`` registered nodes), relay
ceiling (1200-byte APPs/s delivered ≥ 99 %, ``--pairs`` interleaved pairs), the super peer's
CPU per answered packet (over the steps every super peer passed), and RSS (empty, with the
nodes, per 1000 nodes, the most after any HELLO step). After the table: the answered share
and CPU per step, and whether the load generator (one Python process, one core) could have
been the bottleneck; a ceiling it decided is marked "≥".

    python3 bench/vs_drasyl_rs.py [--nodes 20000] [--start-rate 10000] [--start-relay-rate 10000]
        [--step 1.25] [--max-rate 400000] [--seconds 4] [--repeats 3] [--impls ours,drasyl-rs]
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

MAX_PEERS = 1 << 16  # drasyl-rs wants a power of two
OURS_PY = "ours-py"  # ours with DRASYL_NATIVE=off
MB = 1e6
MIB = 2**20
#: A step is decided by the generator, not the super peer, when it got out less than this
#: share of the offered packets or used this much of its core.
GEN_SHORTFALL = 0.03
GEN_CPU = 0.95


class Impl(SuperPeerProcess):
    """A super peer process of ``name`` (``ours``, ``ours:N``, ``drasyl-rs``); CPU and RSS
    include its child processes (the workers of ``ours:N``)."""

    def __init__(self, identity, name: str) -> None:
        kind, _, workers = name.partition(":")
        env = {"DRASYL_WORKERS": workers} if workers else {}
        if kind == OURS_PY:
            kind, env["DRASYL_NATIVE"] = OURS, "off"
        super().__init__(identity, kind, MAX_PEERS, extra_env=env)
        self.name = name

    def _procs(self):
        try:
            return [self._ps, *self._ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self._ps]

    def rss(self) -> int:
        total = 0
        for p in self._procs():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total


@dataclass
class Run:
    """One super peer's numbers in one repeat."""

    rss_empty: int = 0
    rss_nodes: int = 0
    registered: int = 0
    hello: dict[float, Step] = field(default_factory=dict)
    relay: dict[float, Step] = field(default_factory=dict)


def generator_bound(step: Step) -> bool:
    return step.send_shortfall > GEN_SHORTFALL or step.gen_cpu > GEN_CPU


def ceiling(steps: dict[float, Step]) -> tuple[float, bool]:
    """(highest rate answered ≥ 99 % before the first step below, whether the ramp ended
    without a loss: the generator or ``--max-rate`` stopped it, the ceiling is higher)."""
    best = 0.0
    for rate in sorted(steps):
        if not steps[rate].ok:
            return best, False
        best = rate
    return best, True


def ramp(start: float, factor: float, top: float) -> list[float]:
    rates, rate = [], start
    while rate <= top:
        rates.append(float(round(rate, -2)))
        rate *= factor
    return rates


def run_ramp(repeat: int, kind: str, rates: list[float], seconds: float, load, sps: dict[str, Impl],
             runs: dict[str, Run], order: list[str]) -> None:
    """Raise the rate until every super peer lost (or the generator could not keep up)."""
    active = list(order)
    unit, answered = ("HELLO/s", "acked") if kind == "hello" else ("APP/s", "relayed")
    for rate in rates:
        if not active:
            return
        for k in list(active):
            step = load.offer(sps[k], rate, seconds)
            getattr(runs[k], kind)[rate] = step
            bound = generator_bound(step)
            print(f"  [{repeat + 1}] {k:9} {step.line(unit, answered)}{'  (generator-bound)' if bound else ''}",
                  flush=True)
            if not step.ok or bound:
                active.remove(k)


def one_repeat(repeat: int, args, sp_id, hellos: HelloLoad, relay: RelayLoad) -> dict[str, Run]:
    order = args.impls if repeat % 2 == 0 else args.impls[::-1]
    sps: dict[str, Impl] = {}
    runs = {k: Run() for k in order}
    try:
        for k in order:
            sps[k] = Impl(sp_id, k)
            runs[k].rss_empty = sps[k].rss()
        for k in order:
            runs[k].registered = hellos.register(sps[k], args.register_rate)[1]
            runs[k].rss_nodes = sps[k].rss()
            print(f"  [{repeat + 1}] {k:9}: {runs[k].registered:,} nodes registered, "
                  f"RSS {runs[k].rss_empty / MIB:.1f} -> {runs[k].rss_nodes / MIB:.1f} MiB", flush=True)
        run_ramp(repeat, "hello", args.rates, args.seconds, hellos, sps, runs, order)
        run_ramp(repeat, "relay", args.relay_rates, args.seconds, relay, sps, runs, order)
    finally:
        for sp in sps.values():
            sp.stop()
    return runs


def cpu_us_per_packet(results: list[dict[str, Run]], kind: str, impl: str, impls: list[str]) -> float:
    """Median super peer CPU µs per answered packet, over the steps every super peer passed."""
    values = []
    for r in results:
        steps = getattr(r[impl], kind)
        for rate, step in steps.items():
            others = [getattr(r[k], kind).get(rate) for k in impls]
            if all(s is not None and s.ok for s in others) and step.received:
                values.append(step.sp_cpu * step.seconds / step.received * 1e6)
    return statistics.median(values) if values else float("nan")


def report(args, results: list[dict[str, Run]]) -> None:
    med = statistics.median
    impls = args.impls
    base = DRASYL_RS if DRASYL_RS in impls else impls[-1]

    def m(f, k):
        return med(f(r[k]) for r in results)

    def ceil_cell(kind: str, k: str) -> tuple[float, str]:
        values = [ceiling(getattr(r[k], kind)) for r in results]
        value = med(v for v, _ in values)
        open_ended = sum(o for _, o in values) * 2 > len(values)
        return value, ("≥ " if open_ended else "") + f"{value:,.0f}"

    rows: list[tuple[str, dict[str, tuple[float, str]], str]] = []
    rows.append((f"registration ceiling: HELLO/s ACKed ≥ 99 % ({args.nodes:,} nodes)",
                 {k: ceil_cell("hello", k) for k in impls}, "higher"))
    rows.append((f"relay ceiling: {PAYLOAD}-byte APPs/s delivered ≥ 99 % ({args.pairs} pairs)",
                 {k: ceil_cell("relay", k) for k in impls}, "higher"))
    for name, kind in (("HELLO → ACK", "hello"), ("relayed APP", "relay")):
        cells = {}
        for k in impls:
            v = cpu_us_per_packet(results, kind, k, impls)
            cells[k] = (v, f"{v:.1f} µs")
        rows.append((f"super peer CPU per {name} (steps all passed)", cells, "lower"))

    def mib_row(name, f):
        cells = {k: (m(f, k) / MIB, f"{m(f, k) / MIB:.1f} MiB") for k in impls}
        rows.append((name, cells, "lower"))

    mib_row("RSS, empty", lambda r: r.rss_empty)
    mib_row(f"RSS with {args.nodes:,} nodes", lambda r: r.rss_nodes)
    per_k = lambda r: (r.rss_nodes - r.rss_empty) / r.registered * 1000 / MB  # noqa: E731
    rows.append(("RSS per 1000 nodes", {k: (m(per_k, k), f"{m(per_k, k):.2f} MB") for k in impls}, "lower"))
    mib_row("RSS, most after any HELLO step", lambda r: max((s.rss for s in r.hello.values()), default=0))

    others = [k for k in impls if k != base]
    print(f"\n## {' / '.join(impls)}: medians of {len(results)} repeats\n")
    print("| row | " + " | ".join(impls) + " | " + " | ".join(f"{k}/{base}" for k in others) + " | better |")
    print("|---|" + "---:|" * (len(impls) + len(others)) + "---|")
    for name, cells, better in rows:
        ratios = [f"{cells[k][0] / cells[base][0]:.2f}×" if cells[base][0] else "–" for k in others]
        print(f"| {name} | " + " | ".join(cells[k][1] for k in impls) + " | " + " | ".join(ratios)
              + f" | {better} |")
    print("\n\"≥\": in most repeats the ramp ended without a loss (the load generator could not offer more, "
          f"or --max-rate {args.max_rate:,.0f} was reached): the ceiling is higher.")

    for title, kind in (("HELLO/s", "hello"), ("APP/s", "relay")):
        rates = sorted({rate for r in results for k in impls for rate in getattr(r[k], kind)})
        print(f"\n| offered {title} | " + " | ".join(f"{k} answered | {k} CPU" for k in impls) + " | generator CPU |")
        print("|---:|" + "---:|---:|" * len(impls) + "---:|")
        for rate in rates:
            cells, gen = [], 0.0
            for k in impls:
                steps = [getattr(r[k], kind)[rate] for r in results if rate in getattr(r[k], kind)]
                if steps:
                    gen = max([gen] + [s.gen_cpu for s in steps])
                    n = f" ({len(steps)}/{len(results)})" if len(steps) < len(results) else ""
                    cells.append(f"{med(s.ratio for s in steps):.2%}{n} | {med(s.sp_cpu for s in steps):.0%}")
                else:
                    cells.append("– | –")
            print(f"| {rate:,.0f} | " + " | ".join(cells) + f" | ≤ {gen:.0%} |")
        print("\nCPU is in cores (100 % = one core); a step not run by every repeat shows (runs/repeats).")

    steps = [s for r in results for run in r.values() for kind in (run.hello, run.relay)
             for s in deciding(kind)]
    if steps:
        gen = max(s.gen_cpu for s in steps)
        short = max(s.send_shortfall for s in steps)
        late = max(s.seconds / s.asked - 1 for s in steps)
        verdict = "not the bottleneck" if gen < 0.9 and short < 0.01 and late < 0.05 else "POSSIBLY THE BOTTLENECK"
        print(f"\nLoad generator, in the steps that decide the ceilings (each super peer's steps up to its first "
              f"loss): at most {gen:.0%} of a core, at most {max(short, 0):.2%} of offered packets not sent, "
              f"steps at most {max(late, 0):.1%} longer than asked: {verdict}.")


def deciding(steps: dict[float, Step]) -> list[Step]:
    """The steps up to and including the first one below 99 %."""
    out = []
    for rate in sorted(steps):
        out.append(steps[rate])
        if not steps[rate].ok:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20_000)
    ap.add_argument("--start-rate", type=float, default=10_000, help="first HELLO/s step")
    ap.add_argument("--start-relay-rate", type=float, default=10_000, help="first APP/s step")
    ap.add_argument("--step", type=float, default=1.25, help="factor from one rate step to the next")
    ap.add_argument("--max-rate", type=float, default=400_000, help="no step above this rate")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--register-rate", type=float, default=3000.0, help="new nodes per second")
    ap.add_argument("--impls", default=f"{OURS},{DRASYL_RS}",
                    help="comma-separated: ours, ours:N (DRASYL_WORKERS=N), ours-py[:N] (DRASYL_NATIVE=off), drasyl-rs")
    args = ap.parse_args()
    args.impls = args.impls.split(",")
    args.rates = ramp(args.start_rate, args.step, args.max_rate)
    args.relay_rates = ramp(args.start_relay_rate, args.step, args.max_rate)
    if DRASYL_RS in args.impls:
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
    print(f"\nmachine busy during the run (all processes, all CPUs): {busy_share(busy0, psutil.cpu_times()):.0%}; "
          f"load average at the end: {', '.join(f'{x:.2f}' for x in psutil.getloadavg())}")


def busy_share(t0, t1) -> float:
    """Share of all CPUs' time spent not idle between two psutil.cpu_times() readings."""
    idle = (t1.idle + getattr(t1, "iowait", 0)) - (t0.idle + getattr(t0, "iowait", 0))
    total = sum(t1) - sum(t0)
    return 1 - idle / total if total else 0.0


if __name__ == "__main__":
    main()
