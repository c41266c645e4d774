"""Tunnel RTT overhead of two agents, and CPU seconds per GB, for variants of the agent side by side.

Usage (root)::

    python3 bench/agent_latency.py                                          # this tree
    python3 bench/agent_latency.py --variant base --variant uv:DRASYL_EVENT_LOOP=uvloop
    python3 bench/agent_latency.py --variant before:PYTHONPATH=/tmp/main-tree --variant after --iperf 5

The lab of bench/agent_rss.py (tests/netns.py, randomly named namespaces): our super peer on one
bridged "internet", no NAT, one file:// network config, and one pair of agents (a_i, b_i, each in
its own namespace, difficulty-0 identities) per variant, all up at once. The machine this runs
on is shared and noisy, so the variants are measured at the same time: every pair's a pings its
b ``--pings`` times every ``--interval`` s through the TUN (a lone packet each time: the idle path,
as peers.sh measures it), the pairs' pings started ``interval / variants`` apart so they take
turns; then a pings b over the underlay. ``--rounds`` repeats that; with ``--iperf S``, each round
also runs iperf3 TCP a→b for S s per variant in turn (each round another variant first), and the agents' CPU time (both of the pair,
from /proc) per GB received is reported.

A variant is ``NAME`` or ``NAME:VAR=VALUE,VAR=VALUE``: environment variables of its agents. The
agents run as ``python -P -m drasyl.agent`` (``-P``: the working directory, this checkout, is not
put first on ``sys.path``), so a variant's ``PYTHONPATH`` decides which tree runs.
Prints one line per round and variant and a table of medians.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_rss import (SP_IP, Lab, identities, python_env, start_super_peer, wait_ping,  # noqa: E402
                       write_agent_config)
from netns import Process  # noqa: E402

from drasyl.identity import Identity  # noqa: E402

_TIME = re.compile(r"time=([0-9.]+) ms")


@dataclass
class Pair:
    """One variant's two agents."""

    index: int
    a: str
    b: str
    a_ip: str
    b_ip: str
    a_overlay: str
    b_overlay: str
    procs: list[Process]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def iperf(lab: Lab, pair: Pair, seconds: int) -> tuple[float, float]:
    """(Mbit/s received, CPU seconds of the pair's agents per GB received) of one iperf3 run a→b."""
    server = lab.start(pair.b, ["iperf3", "-s", "-1", "--forceflush"], f"iperf3-s-{time.monotonic()}")
    server.wait_for_line(r"Server listening", 10)
    pids = [p.pid for p in pair.procs]
    before = cpu_seconds(pids)
    out = subprocess.run(["ip", "netns", "exec", pair.a, "iperf3", "-c", pair.b_overlay, "-t", str(seconds), "-J"],
                         capture_output=True, text=True, timeout=seconds + 30)
    cpu = cpu_seconds(pids) - before
    if out.returncode != 0:
        raise SystemExit(f"iperf3 failed: {out.stdout[-500:]}{out.stderr}")
    server.wait(10)
    received = json.loads(out.stdout)["end"]["sum_received"]
    return received["bits_per_second"] / 1e6, cpu / (received["bytes"] / 1e9)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    env = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, env


def start_pair(lab: Lab, td: Path, index: int, env: dict[str, str]) -> Pair:
    """Namespaces, configs and running agents of variant ``index``'s pair."""
    pair = Pair(index, lab.namespace(f"a{index}"), lab.namespace(f"b{index}"), f"198.51.100.{11 + 2 * index}",
                f"198.51.100.{12 + 2 * index}", overlay_of(index, 1), overlay_of(index, 2), [])
    for side, ns, ip in (("a", pair.a, pair.a_ip), ("b", pair.b, pair.b_ip)):
        lab.internet(ns, ip)
        lab.etc_file(ns, "hosts", "127.0.0.1 localhost\n")
        conf = td / f"{side}{index}"
        pair.procs.append(lab.start(ns, [
            sys.executable, "-P", "-m", "drasyl.agent", "run", "--config", str(conf / "config.toml"),
            "--token", str(conf / "auth.token"), "--log-level", "warning",
        ], f"agent-{side}{index}", python_env(DRASYL_RUN_DIR=str(conf / "run"), DRASYL_MIN_POW_DIFFICULTY="0", **env)))
    return pair


def overlay_of(index: int, host: int) -> str:
    return f"10.77.{index}.{host}"


def write_configs(td: Path, count: int, sp_url: str) -> None:
    lines = ['network = "10.77.0.0/16"', 'name = "latency"', ""]
    for i in range(count):
        for side, host in (("a", 1), ("b", 2)):
            ident = Identity.generate(0)
            write_agent_config(td / f"{side}{i}" / "config.toml", sp_url, ident, td / "net.toml")
            lines += ["[[node]]", f'pk = "{ident.public_key_hex}"', f'ip = "{overlay_of(i, host)}"',
                      f'hostname = "{side}{i}"', ""]
    lines += ["[[policy]]", 'source_groups = ["ALL"]', 'destination_groups = ["ALL"]']
    (td / "net.toml").write_text("\n".join(lines) + "\n")


def start_lab(lab: Lab, td: Path, envs: list[dict[str, str]]) -> list[Pair]:
    """The super peer and one pair of agents per entry of ``envs``, each pair on its direct path."""
    sp = lab.namespace("sp")
    lab.internet(sp, SP_IP)
    sp_url = start_super_peer(lab, td, sp, identities()["id_1"], DRASYL_MIN_POW_DIFFICULTY="0")
    write_configs(td, len(envs), sp_url)
    pairs = [start_pair(lab, td, i, env) for i, env in enumerate(envs)]
    for pair in pairs:
        wait_ping(pair.a, pair.b_overlay, "-4")
    concurrent_pings([(p.a, p.b_overlay) for p in pairs], 20, 0.05)  # direct paths up (no NAT)
    return pairs


def path_of(td: Path, pair: Pair) -> str:
    """What a's status says about its path to b (it should be direct)."""
    index = pair.index
    out = subprocess.run(["ip", "netns", "exec", pair.a, sys.executable, "-m", "drasyl.agent", "status", "--json",
                          "--api", "", "--run-dir", str(td / f"a{index}" / "run"),
                          "--token", str(td / f"a{index}" / "auth.token")],
                         capture_output=True, text=True, env=python_env(), timeout=30)
    if out.returncode != 0:
        return f"unknown ({out.stderr.strip()[-200:]})"
    peers = [p for p in json.loads(out.stdout)["peers"] if p["ip"] == pair.b_overlay]
    return ", ".join(f"{p['path']} {p.get('rtt_ms')} ms" for p in peers) or "no row"


def concurrent_pings(targets: list[tuple[str, str]], count: int, interval: float) -> list[list[float]]:
    """Ping each (namespace, address) ``count`` times, all at once, starts staggered."""
    procs = []
    for i, (ns, address) in enumerate(targets):
        if i:
            time.sleep(interval / len(targets))  # a stagger, not synchronisation
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i",
                                       str(interval), "-W", "1", address], stdout=subprocess.PIPE, text=True))
    results = []
    for proc, (_, address) in zip(procs, targets):
        out, _ = proc.communicate(timeout=count * interval + 30)
        times = [float(t) for t in _TIME.findall(out)]
        if len(times) < count * 0.9:
            raise SystemExit(f"only {len(times)} of {count} pings to {address} answered:\n{out[-400:]}")
        results.append(times)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME[:VAR=VALUE,...] (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--iperf", type=int, default=0, metavar="S", help="iperf3 seconds per round (0: none)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant or ["this-tree"]]
    rows: dict[str, dict[str, list[float]]] = {name: {"rtt": [], "ul": [], "ping_cpu": [], "mbit": [], "cpu": []}
                                               for name, _ in variants}
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        pairs = start_lab(lab, td, [env for _, env in variants])
        for (name, _), pair in zip(variants, pairs):
            print(f"{name}: a's path to b: {path_of(td, pair)}", flush=True)
        for r in range(args.rounds):
            cpu_before = [cpu_seconds([proc.pid for proc in p.procs]) for p in pairs]
            tunnel = concurrent_pings([(p.a, p.b_overlay) for p in pairs], args.pings, args.interval)
            cpu = [(cpu_seconds([proc.pid for proc in p.procs]) - c) / args.pings * 1e6 for p, c in zip(pairs, cpu_before)]
            underlay = concurrent_pings([(p.a, p.b_ip) for p in pairs], args.pings, args.interval)
            lines = {}
            for (name, _), t, u, c in zip(variants, tunnel, underlay, cpu):
                row = rows[name]
                row["rtt"].append(statistics.median(t))
                row["ul"].append(statistics.median(u))
                row["ping_cpu"].append(c)
                lines[name] = (f"{name} round {r}: tunnel median {statistics.median(t):.3f} ms (mean "
                               f"{statistics.mean(t):.3f}), underlay {statistics.median(u):.3f} ms, agents' CPU "
                               f"{c:.0f} µs per ping")
            order = list(range(len(pairs)))
            for k in order[r % len(order):] + order[:r % len(order)] if args.iperf else ():  # each goes first in turn
                name = variants[k][0]
                mbit, per_gb = iperf(lab, pairs[k], args.iperf)
                rows[name]["mbit"].append(mbit)
                rows[name]["cpu"].append(per_gb)
                lines[name] += f", iperf3 {mbit:.0f} Mbit/s, {per_gb:.2f} CPU s/GB"
            for line in lines.values():
                print(line, flush=True)
    print(f"\n| variant | tunnel RTT (median of {args.rounds} rounds × {args.pings} pings) | underlay | overhead | "
          "agents' CPU per ping | Mbit/s | CPU s/GB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        rtt, ul = statistics.median(row["rtt"]), statistics.median(row["ul"])
        extra = (f"{statistics.median(row['mbit']):.0f} | {statistics.median(row['cpu']):.2f}"
                 if row["mbit"] else "– | –")
        print(f"| {name} | {rtt:.3f} ms | {ul:.3f} ms | {rtt - ul:.3f} ms | "
              f"{statistics.median(row['ping_cpu']):.0f} µs | {extra} |")


if __name__ == "__main__":
    main()
