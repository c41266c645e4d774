"""Data-path stall while agents apply a large network config (ping RTTs and iperf3 during the apply).

The lab of ``tests/test_agent_e2e.py`` (super peer, agents a and b in namespaces behind a
router, net1 from a ``file://`` config). Once a pings b (10.77.0.2), b runs ``iperf3 -s`` and
a runs, for ``--seconds`` (40), ``iperf3 -c 10.77.0.2 -i 1 --forceflush`` and at the same time
``ping -D -n -i 0.01 10.77.0.2`` (every reply with its time). Phases, from the start of both:

1. **baseline** (0-10 s): net1 as in the tests (10.77.0.0/24, a staff, b servers);
2. **large** (10-30 s): net1 rewritten as 10.77.0.0/16 with ``--nodes`` (10 000) extra
   ``[[node]]`` entries (random valid Ed25519 public keys, hostnames ``x<i>``, group ``extra``,
   a policy extra → staff, so a's policy tables, send handles and names really grow; b is
   the gateway of the routed /24, which no group limits, so its tables grow too). The agents
   re-fetch every 10 s: the first fetch after the rewrite parses and applies, the next one
   sees the same text;
3. **restore** (30 s-end): net1 as in phase 1 again (tables shrink, handles released).

Per phase: ping RTT median, p99 and max, pings lost (no reply), the longest time between two
replies ("gap": a frozen agent answers nothing) and when it began ("at"), iperf3's mean and lowest 1-s throughput, and
when each agent logged "Policy tables: …" (its apply), relative to the start. A ping is
counted in the phase it was sent in (reply time − RTT; for a lost one, from its sequence
number). Goal: the longest stall (gap, max RTT) during the large phase < 50 ms.

    python3 bench/config_stall.py [--nodes 10000] [--repeat 1] [--seconds 40] [--repo PATH] [--only-a]

``--repo PATH`` runs the lab and agents of another checkout (its ``tests/`` and ``drasyl``;
e.g. a ``git worktree`` of an older commit) for comparison. Needs root, iproute2, nftables,
iperf3, ping. ``DRASYL_VECTORS`` (default ``<repo>/tests/vectors``) holds the identities.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

PING_LINE = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [0-9.]+: icmp_seq=(\d+) .*time=([0-9.]+) ms")
IPERF_LINE = re.compile(r"^\[\s*\d+\]\s+([0-9.]+)-([0-9.]+)\s+sec\s+\S+ \S+\s+([0-9.]+) ([KMG]?)bits/sec")
APPLY_LINE = re.compile(r"Policy tables: .*peer\(s\)")
UNITS = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}
PING_INTERVAL_S = 0.01


def large_net1(e2e, ids, nodes: int) -> str:
    """net1 as a /16 with ``nodes`` extra nodes that may talk to a (staff)."""
    from nacl.bindings import crypto_sign_seed_keypair
    taken = {ids["a"].public_key_hex, ids["b"].public_key_hex, ids["sp"].public_key_hex}
    extra = []
    for i in range(nodes):
        pk = crypto_sign_seed_keypair(os.urandom(32))[0].hex()
        assert pk not in taken
        n = 16 + i  # 10.77.0.16 upward; a /16 holds 65 000
        extra.append(f'[[node]]\npk = "{pk}"\nip = "10.77.{n >> 8}.{n & 255}"\nhostname = "x{i}"\n'
                     f'groups = ["extra"]\n')
    assert 16 + nodes < 65534, "too many nodes for a /16"
    policies = f'''
[[route]]
dest = "{e2e.ROUTED}"
gw = "{ids['b'].public_key_hex}"

[[policy]]
source_groups = ["staff"]
destination_groups = ["servers"]

[[policy]]
source_groups = ["extra"]
destination_groups = ["staff"]
'''
    return e2e.network_config(ids, "10.77.0.0/16", e2e.OVERLAY, {"a": "staff", "b": "servers"}, name="e2e one",
                              extra="\n".join(extra) + policies)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def run_once(e2e, netns, ids, args, big_text: str) -> dict:
    """One lab, one timeline; the raw results (times relative to the start of ping/iperf3)."""
    b_ip = e2e.OVERLAY["b"]
    tmp = Path(tempfile.mkdtemp(prefix="config-stall-"))
    with netns.Lab() as lab:
        cluster = e2e.Cluster(lab, tmp, ids)
        try:
            a, b = cluster.agents["a"], cluster.agents["b"]
            if args.only_a:  # b keeps a copy of the small config: only a applies the large one
                cluster.write_net("net1-b", e2e.net1(ids))
                b.config.write_text(b.config.read_text().replace(cluster.net_url("net1"), cluster.net_url("net1-b")))
            for agent in cluster.agents.values():
                agent.start()
            e2e.wait_until(lambda: "1 received" in a.ping(b_ip, count=1).stdout, 60, "a pings b", cluster.describe)
            a.exec("ping", "-n", "-q", "-c", "30", "-i", "0.1", b_ip)  # settle (direct path)
            server = lab.start(b.ns, ["iperf3", "-s", "-1", "-B", b_ip, "--forceflush"], "iperf3-s")
            server.wait_for_line(r"Server listening", 10)
            wall = time.time() - time.monotonic()  # Line.at (monotonic) → wall clock
            t0 = time.time()
            ping = lab.start(a.ns, ["ping", "-D", "-n", "-i", str(PING_INTERVAL_S), "-w", str(round(args.seconds)), b_ip],
                             "ping")
            client = lab.start(a.ns, ["iperf3", "-c", b_ip, "-t", str(round(args.seconds)), "-i", "1", "--forceflush"],
                               "iperf3-c")
            marks = {a.name: a.proc.mark(), b.name: b.proc.mark()}
            time.sleep(max(0.0, t0 + args.baseline - time.time()))
            t_big = time.time() - t0
            cluster.write_net("net1", big_text)
            time.sleep(max(0.0, t0 + args.baseline + args.large - time.time()))
            t_restore = time.time() - t0
            cluster.write_net("net1", e2e.net1(ids))
            client.wait(args.seconds + 30)
            ping.wait(30)
            applies = {name: [(line.at + wall - t0, line.text.strip())
                              for line in cluster.agents[name].proc.stdout.lines[since:] if APPLY_LINE.search(line.text)]
                       for name, since in marks.items()}
            warnings = {name: [line.text for line in cluster.agents[name].proc.stdout.lines[since:]
                               if " WARNING " in line.text] for name, since in marks.items()}
            ping_lines = [line.text for line in ping.stdout.lines]
            odd = [t for t in ping_lines if t and not PING_LINE.match(t)] + [t.text for t in ping.stderr.lines]
            if odd:
                print(f"  ping (exit {ping.popen.returncode}) also said: " + " | ".join(odd[:4]))
            iperf_lines = [line.text for line in client.stdout.lines]
        finally:
            cluster.close()
            shutil.rmtree(tmp, ignore_errors=True)
    replies = {}
    for text in ping_lines:
        m = PING_LINE.match(text)
        if m:
            at, seq, rtt = float(m.group(1)) - t0, int(m.group(2)), float(m.group(3))
            replies[seq] = (at - rtt / 1000, at, rtt)
    intervals = []
    for text in iperf_lines:
        m = IPERF_LINE.match(text)
        if m and "sender" not in text and "receiver" not in text and float(m.group(2)) - float(m.group(1)) <= 1.5:
            intervals.append((float(m.group(1)), float(m.group(3)) * UNITS[m.group(4)]))
    summary = [t for t in iperf_lines if "sender" in t or "receiver" in t]
    return {"replies": replies, "intervals": intervals, "applies": applies, "t_big": t_big,
            "t_restore": t_restore, "iperf_summary": summary, "warnings": warnings}


def phases(raw: dict, seconds: float) -> list[tuple[str, float, float]]:
    return [("baseline", 0.0, raw["t_big"]), ("large", raw["t_big"], raw["t_restore"]),
            ("restore", raw["t_restore"], seconds)]


def per_phase(raw: dict, seconds: float) -> dict[str, dict]:
    replies = raw["replies"]
    if not replies:
        raise RuntimeError("no ping replies at all")
    last_seq = max(replies)
    # send time of every sequence number: measured for replies, interpolated for lost ones
    first = min(replies)
    sent_at = {seq: replies[seq][0] for seq in replies}
    before = first
    for seq in range(first, last_seq + 1):
        if seq in replies:
            before = seq
        else:
            sent_at[seq] = replies[before][0] + (seq - before) * PING_INTERVAL_S
    out = {}
    for name, start, end in phases(raw, seconds):
        seqs = [s for s in range(first, last_seq + 1) if start <= sent_at[s] < end]
        rtts = [replies[s][2] for s in seqs if s in replies]
        arrivals = sorted(replies[s][1] for s in seqs if s in replies)
        gaps = [((b - a) * 1000, a) for a, b in zip(arrivals, arrivals[1:])]
        gap, gap_at = max(gaps, default=(float("nan"), float("nan")))
        mbits = [v for t, v in raw["intervals"] if start <= t and t + 1 <= end + 0.5]
        out[name] = {
            "pings": len(seqs), "lost": len(seqs) - len(rtts),
            "median": statistics.median(rtts) if rtts else float("nan"),
            "p99": pct(rtts, 0.99), "max": max(rtts, default=float("nan")),
            "gap": gap, "gap_at": gap_at,
            "mbit_mean": statistics.fmean(mbits) if mbits else float("nan"),
            "mbit_min": min(mbits, default=float("nan")),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000, help="extra [[node]] entries in the large config")
    ap.add_argument("--repeat", type=int, default=1, help="labs, one after another; medians printed")
    ap.add_argument("--seconds", type=float, default=40.0, help="ping/iperf3 duration")
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds before the rewrite")
    ap.add_argument("--large", type=float, default=20.0, help="seconds the large config stays")
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout whose tests/ lab and drasyl package run (default: this one)")
    ap.add_argument("--json", type=Path, help="also write every repeat's numbers here")
    ap.add_argument("--only-a", action="store_true",
                    help="only agent a applies the large config (b keeps the small one): one agent per "
                         "machine, as in real networks, instead of two applying at once on the same cores")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    repo = args.repo.resolve()
    sys.path[:0] = [str(repo / "tests"), str(repo)]
    import netns
    import test_agent_e2e as e2e
    from drasyl.identity import Identity
    assert Path(netns.__file__).resolve().parents[1] == repo, netns.__file__

    vectors = Path(os.environ.get("DRASYL_VECTORS", repo / "tests" / "vectors"))
    derived = json.loads((vectors / "derived.json").read_text())
    ids = e2e._identities({name: Identity.from_hex(v["secret_key_hex"], v["proof_of_work"])
                           for name, v in derived["identities"].items()})
    big_text = large_net1(e2e, ids, args.nodes)
    print(f"repo {repo} ({os.popen(f'git -C {repo} rev-parse --short HEAD').read().strip()}); "
          f"large config: {args.nodes} extra nodes, {len(big_text.encode()) / 1e6:.2f} MB; "
          f"{args.seconds:g} s: baseline {args.baseline:g} s, large {args.large:g} s, then restored")

    results = []
    for r in range(args.repeat):
        raw = run_once(e2e, netns, ids, args, big_text)
        table = per_phase(raw, args.seconds)
        results.append({"phases": table, "applies": raw["applies"], "t_big": raw["t_big"],
                        "t_restore": raw["t_restore"]})
        print(f"\nrepeat {r + 1}: rewrite at {raw['t_big']:.1f} s, restore at {raw['t_restore']:.1f} s")
        for name, lines in raw["applies"].items():
            for at, text in lines:
                print(f"  agent {name} at {at:6.2f} s: {text[-90:]}")
        for name, lines in raw["warnings"].items():
            if lines:
                print(f"  agent {name}: {len(lines)} warning line(s), first: {lines[0][-100:]}")
        for line in raw["iperf_summary"]:
            print(f"  iperf3: {line.strip()}")
        print_table(table)

    if args.repeat > 1:
        print(f"\nmedian of {args.repeat} repeats")
        merged = {name: {k: statistics.median(res["phases"][name][k] for res in results)
                         for k in results[0]["phases"][name]}
                  for name in results[0]["phases"]}
        print_table(merged)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def print_table(table: dict[str, dict]) -> None:
    print(f"  {'phase':<9} {'pings':>6} {'lost':>5} {'RTT med':>8} {'p99':>8} {'max':>8} {'gap':>8} {'at':>6} "
          f"{'Mbit/s':>7} {'min 1s':>7}")
    for name, row in table.items():
        print(f"  {name:<9} {row['pings']:>6.0f} {row['lost']:>5.0f} {row['median']:>6.2f}ms {row['p99']:>6.1f}ms "
              f"{row['max']:>6.1f}ms {row['gap']:>6.0f}ms {row['gap_at']:>5.1f}s {row['mbit_mean']:>7.0f} {row['mbit_min']:>7.0f}")


if __name__ == "__main__":
    main()
