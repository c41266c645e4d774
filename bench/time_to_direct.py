"""Time to direct: agent start -> first ping reply -> direct path, behind two cone NATs, next to nebula.

Two measurements, both with our super peer (scenario 1 of tests/test_nat_lab.py):

1. **natlab** (``--runs`` times, medians printed): the topology of ``tests/natlab.py``
   (randomly named namespaces), routers in cone mode with flushed conntrack, a fresh super
   peer, agent b started and registered, then agent a started at t0. A raw-ICMP prober in
   a's namespace (``../shared/bench/dlb.py firstping``: every 20 ms from t0, no-route errors
   ignored) gives the first echo reply from b's overlay address; a's ``status --json`` polled
   until it reports b's path ``direct`` gives the time to direct (resolution: one status call,
   ~0.2-0.4 s on this machine).
2. **peers.sh** (unless ``--no-peers``): ``../shared/bench/peers.sh nebula drasyl --nat cone``
   with our agent and super peer plugged in through ``PEERS_EXTRA=bench/peers_drasyl.sh``,
   so nebula and drasyl are measured in one run, in the same lab, by the same method:
   time to first ping from starting the second node, time to direct from the super peer
   host's byte counters (2 s windows; ``<=x`` when already direct at the first window).
   peers.sh uses fixed namespace names (``dl-*``): it is not started when they exist.

    python3 bench/time_to_direct.py [--runs 5] [--no-peers] [--keep-logs DIR]

``DL_BENCH_DIR`` (default ``../shared/bench``) and ``DRASYL_VECTORS`` (``tests/vectors``)
say where those are. Needs root, nftables, ping; nebula (``apt-get install nebula``) for the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from natlab import NatLab, wait_until  # noqa: E402
from netns import Lab  # noqa: E402

from drasyl.identity import Identity  # noqa: E402

BENCH_DIR = Path(os.environ.get("DL_BENCH_DIR", REPO.parent / "shared" / "bench"))
VECTORS = Path(os.environ.get("DRASYL_VECTORS", REPO / "tests" / "vectors"))
TIMEOUT_S = 30.0


def vector_identities() -> list[Identity]:
    derived = json.loads((VECTORS / "derived.json").read_text())
    return [Identity.from_hex(v["secret_key_hex"], v["proof_of_work"]) for v in derived["identities"].values()]


# --- 1. natlab -------------------------------------------------------------------------------


def natlab_run(net: NatLab) -> dict[str, float | None]:
    net.reset({"a": "cone", "b": "cone"})
    sp = net.super_peer("py")
    sp.start()
    a, b = net.agents["a"], net.agents["b"]
    b.start([sp.url()], net.network_url)
    wait_until("b registered", lambda: b.super_peer_transport(sp) == "udp", 15, lambda: "")
    t0 = time.time() + 0.5  # the prober is up and waits for t0, as in peers.sh
    prober = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, str(BENCH_DIR / "dlb.py"), "firstping",
                               "--target", b.overlay_ip, "--t0", f"{t0:.6f}", "--timeout", str(TIMEOUT_S)],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(max(0.0, t0 - time.time()))  # start a at t0 (a timed start, not synchronisation)
    a.start([sp.url()], net.network_url)
    out, _ = prober.communicate(timeout=TIMEOUT_S + 10)
    first = json.loads(out).get("seconds")
    direct = None
    if first is not None:
        wait_until("a reports b direct", lambda: a.path_to(b) == "direct", TIMEOUT_S, lambda: "", interval=0)
        direct = time.time() - t0
    return {"first_ping_s": first, "direct_s": direct}


def natlab(runs: int, workdir: Path) -> list[dict[str, float | None]]:
    ids = vector_identities()
    results = []
    with Lab() as lab:
        net = NatLab(lab, workdir, {"a": ids[0], "b": ids[1]}, [Identity.generate(0), Identity.generate(0)])
        for i in range(runs):
            result = natlab_run(net)
            print(f"natlab run {i + 1}: {result}", file=sys.stderr)
            results.append(result)
        net.reset({})
    return results


# --- 2. peers.sh with PEERS_EXTRA ------------------------------------------------------------


def peers_sh(keep_logs: str | None) -> list[dict]:
    taken = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if n.startswith("dl-")]
    if taken:
        raise SystemExit(f"peers.sh's namespaces exist ({', '.join(sorted(set(taken)))}): another bench runs; "
                         "try again later or pass --no-peers")
    env = dict(os.environ, PEERS_EXTRA=str(REPO / "bench" / "peers_drasyl.sh"), DRASYL_VECTORS=str(VECTORS))
    argv = [str(BENCH_DIR / "peers.sh"), "nebula", "drasyl", "--nat", "cone", "--seconds", "3"]
    if keep_logs:
        argv += ["--keep-logs", keep_logs]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"peers.sh failed ({out.returncode}):\n{out.stderr[-3000:]}")
    print(out.stdout[out.stdout.rfind("\n\n"):], file=sys.stderr)  # its table
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def peers_metric(records: list[dict], tool: str, metric: str) -> str:
    rec = next((r for r in records if r.get("tool") == tool and r.get("metric") == metric), None)
    if rec is None:
        return "-"
    if rec.get("value") is None:
        return f"never ({rec.get('error', '')})"
    prefix = "<=" if rec.get("upper_bound") is True else ""
    unit = f" {rec['unit']}" if rec.get("unit") else ""
    return f"{prefix}{rec['value']}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-peers", action="store_true", help="skip the peers.sh run (nebula and drasyl)")
    parser.add_argument("--keep-logs", metavar="DIR", help="peers.sh: keep configs and daemon logs in DIR")
    args = parser.parse_args()
    if not (BENCH_DIR / "dlb.py").exists():
        parser.error(f"{BENCH_DIR}/dlb.py not found: set DL_BENCH_DIR to ../shared/bench")
    workdir = Path(tempfile.mkdtemp(prefix="ttd-"))
    try:
        results = natlab(args.runs, workdir / "natlab") if args.runs else []
        records = [] if args.no_peers else peers_sh(args.keep_logs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("time to direct, two cone NATs (plain masquerade), our super peer")
    if results:
        firsts = [r["first_ping_s"] for r in results if r["first_ping_s"] is not None]
        directs = [r["direct_s"] for r in results if r["direct_s"] is not None]
        print(f"natlab, {len(results)} runs, agent start -> first ping reply: median "
              f"{statistics.median(firsts):.2f} s ({', '.join(f'{x:.2f}' for x in firsts)})")
        print(f"natlab, {len(results)} runs, agent start -> status 'direct':  median "
              f"{statistics.median(directs):.2f} s ({', '.join(f'{x:.2f}' for x in directs)})")
    for tool in ("drasyl", "nebula") if records else ():
        print(f"peers.sh {tool:<7} time to first ping {peers_metric(records, tool, 'time_to_first_ping')}, "
              f"time to direct {peers_metric(records, tool, 'time_to_direct')}, "
              f"direct after a 3000-packet burst {peers_metric(records, tool, 'direct_after_burst')}, "
              f"path during iperf3 {peers_metric(records, tool, 'path')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
