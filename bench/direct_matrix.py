"""Direct-rate matrix: for every NAT topology, is the path direct, how long until it is, and
how many bytes cross the super peer — our agent next to nebula (and drasyl-rs' super peer).

Two labs, both built and removed by what this runs (root; nothing leaves the namespaces):

1. ``../shared/bench/peers.sh`` (the lab the peers are measured in): both routers cone, both
   symmetric, or no NAT; nebula and our agent (``bench/peers_drasyl.sh``) in the same run.
   ``time_to_direct`` is from the second node's start until a 20 pkt/s probe stops passing
   the rendezvous host; ``sp_in_bytes`` counts what reached it during iperf3.
2. Our NAT lab (``tests/test_nat_lab.py``): every topology our tests know, including mixed
   cone/symmetric (probing), a mapping router (miniupnpd: PCP, NAT-PMP, UPnP), a NAT behind a
   NAT, two hosts behind one NAT; rows for drasyl-rs' super peer where the scenario runs with
   it. Its summary table (path, found by, time to direct, bytes relayed) is printed as is.

Usage: ``python3 bench/direct_matrix.py [--seconds 3] [--skip-peers] [--skip-natlab]``.
nebula comes from Debian (``apt-get install nebula iperf3 conntrack``); without it the
peers.sh rows say "not installed".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO.parent / "shared" / "bench" / "peers.sh"
MODES = ("none", "cone", "symmetric")


def run_peers(seconds: int) -> list[dict]:
    """JSON records of nebula and our agent in the shared lab, one run per NAT mode."""
    records = []
    env = dict(os.environ, PEERS_EXTRA=str(REPO / "bench" / "peers_drasyl.sh"))
    for mode in MODES:
        print(f"== peers.sh nebula drasyl --nat {mode}", file=sys.stderr, flush=True)
        out = subprocess.run(["bash", str(PEERS), "nebula", "drasyl", "--nat", mode, "--seconds", str(seconds),
                              "--no-table"], env=env, capture_output=True, text=True, timeout=900)
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                record.setdefault("nat", mode)
                records.append(record)
    return records


def peers_table(records: list[dict]) -> list[str]:
    rows: dict[tuple[str, str], dict] = {}
    for r in records:
        key = (r.get("nat", "?"), r.get("tool", "?"))
        row = rows.setdefault(key, {})
        if r.get("metric") == "time_to_direct":
            v = r.get("value")
            row["ttd"] = "never" if v is None else (f"<={v:.2f}" if r.get("upper_bound") else f"{v:.2f}")
        elif r.get("metric") == "path":
            row["path"], row["sp_bytes"] = r.get("value"), r.get("sp_in_bytes")
        elif r.get("metric") == "skipped":
            row["path"] = r.get("value")
    lines = [f"{'NAT (both sides)':<18} {'tool':<10} {'path':<16} {'to direct s':>12} {'bytes via sp (iperf3)':>22}"]
    lines.append("-" * len(lines[0]))
    for (nat, tool), row in rows.items():
        if tool in ("underlay",):
            continue
        lines.append(f"{nat:<18} {tool:<10} {str(row.get('path', '-')):<16} {str(row.get('ttd', '-')):>12} "
                     f"{str(row.get('sp_bytes', '-')):>22}")
    return lines


def run_natlab() -> list[str]:
    """The NAT lab's summary table (printed by the test run's terminal summary)."""
    print("== tests/test_nat_lab.py", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_nat_lab.py"],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    lines = out.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "NAT lab: scenario x super peer" in line), None)
    if start is None:
        return ["NAT lab: no summary (pytest output follows)", *lines[-40:]]
    table = []
    for line in lines[start + 1:]:
        if line.startswith("=") and table:
            break
        table.append(line)
    return [*table, lines[-1] if lines else ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3, help="iperf3 seconds per peers.sh run (default 3)")
    parser.add_argument("--skip-peers", action="store_true", help="leave out the peers.sh lab")
    parser.add_argument("--skip-natlab", action="store_true", help="leave out our NAT lab")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("direct_matrix.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not args.skip_peers:
        if not PEERS.exists():
            print(f"direct_matrix.py: {PEERS} not found; use --skip-peers", file=sys.stderr)
            return 2
        print("\n".join(peers_table(run_peers(args.seconds))))
        print()
    if not args.skip_natlab:
        print("\n".join(run_natlab()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
