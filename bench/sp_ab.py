"""Two source trees of our super peer under the same load, steps interleaved: A/B of a change.

``vs_drasyl_rs.py`` runs each configuration's steps minutes apart, so on a shared machine
its CPU per packet moves more between runs than a change of 10-20 % does. Here both super
peers (``--before`` and ``--after``: directories holding a ``drasyl`` package, e.g. a
``git archive`` of main and this worktree) run at once with the same nodes registered, and
every round offers one HELLO step and one relay step to each, the order alternating, so
machine noise hits both alike. Prints CPU µs per answered packet per step and the medians.

    python3 bench/sp_ab.py --before /tmp/main-tree [--after .] [--nodes 5000]
        [--hello-rate 30000] [--app-rate 40000] [--seconds 3] [--rounds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simnodes import vector_identity  # noqa: E402
from sp_capacity import HelloLoad  # noqa: E402
from sp_relay import RelayLoad  # noqa: E402
from spprocess import OURS, SuperPeerProcess  # noqa: E402

MIB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="directory with the drasyl package to compare against")
    ap.add_argument("--after", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--hello-rate", type=float, default=30000)
    ap.add_argument("--app-rate", type=float, default=40000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    for tree in trees.values():
        if not (Path(tree) / "drasyl" / "__init__.py").is_file():
            sys.exit(f"{tree} holds no drasyl package")

    sp_id = vector_identity()
    loads = {"HELLO": (HelloLoad(args.nodes, sp_id.public_key), args.hello_rate),
             "APP": (RelayLoad(args.pairs, sp_id.public_key), args.app_rate)}
    loads["HELLO"][0].build()
    sps: dict[str, SuperPeerProcess] = {}
    cpu: dict[tuple[str, str], list[float]] = {(t, k): [] for t in trees for k in loads}
    try:
        for name, tree in trees.items():
            sps[name] = SuperPeerProcess(sp_id, OURS, 1 << 16, extra_env={"PYTHONPATH": tree})
            registered = loads["HELLO"][0].register(sps[name], 3000.0)[1]
            print(f"{name:6}: {registered:,} nodes registered, RSS {sps[name].rss() / MIB:.1f} MiB", flush=True)
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(trees)[::-1]
            for kind, (load, rate) in loads.items():
                for name in order:
                    step = load.offer(sps[name], rate, args.seconds)
                    us = step.sp_cpu * step.seconds / step.received * 1e6 if step.received else float("nan")
                    cpu[(name, kind)].append(us)
                    print(f"  [{r + 1}] {name:6} {kind:5} {us:6.2f} µs per packet, answered {step.ratio:7.2%}",
                          flush=True)
        for name in trees:
            print(f"{name:6}: RSS at the end {sps[name].rss() / MIB:.1f} MiB")
    finally:
        for sp in sps.values():
            sp.stop()
    for kind in loads:
        before, after = (statistics.median(cpu[(t, kind)]) for t in trees)
        print(f"{kind:5} CPU per packet: before {before:.2f} µs, after {after:.2f} µs, "
              f"after/before {after / before:.3f} (medians of {args.rounds})")


if __name__ == "__main__":
    main()
