"""iperf3 through two agents over IPv4 and over IPv6, alternating, in one lab.

Usage (root; from the repository root)::

    python3 bench/agent_ipv6.py                  # 3 runs × 10 s per family
    python3 bench/agent_ipv6.py --runs 5 --seconds 5

The lab of bench/agent_rss.py (tests/netns.py, randomly named namespaces): our super peer and
agents a and b on one bridged "internet", no NAT, one file:// network config (10.77.0.0/16,
everyone may talk to everyone, no ``network6``: the IPv6 addresses are derived). Once b answers
a ping over both families through the TUN, iperf3 TCP a→b (one stream) runs ``--runs`` times
per family, IPv4 and IPv6 alternating, and the medians are printed as a row of the bench table
(README.md "IPv4 and IPv6 through the agent").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_rss import (OVERLAY, Lab, identities, internet_namespaces, network_config,  # noqa: E402
                       start_agents, start_super_peer, wait_ping)

from drasyl.agent.netconfig import parse_network_config  # noqa: E402


def iperf(lab: Lab, a: str, b: str, address: str, seconds: int) -> tuple[float, int]:
    server = lab.start(b, ["iperf3", "-s", "-1", "--forceflush"], f"iperf3-s-{time.monotonic()}")
    server.wait_for_line(r"Server listening", 10)
    out = subprocess.run(["ip", "netns", "exec", a, "iperf3", "-c", address, "-t", str(seconds), "-J"],
                         capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise SystemExit(f"iperf3 to {address} failed: {out.stdout[-500:]}{out.stderr}")
    end = json.loads(out.stdout)["end"]
    server.wait(10)
    return end["sum_received"]["bits_per_second"] / 1e6, end["sum_sent"].get("retransmits", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    ids = identities()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        sp, a, b = internet_namespaces(lab)
        text = network_config(ids, 0)
        (td / "net.toml").write_text(text)
        b6 = str(next(n.ip6 for n in parse_network_config(text, "bench").nodes if n.pk == ids["id_3"].public_key))
        sp_url = start_super_peer(lab, td, sp, ids["id_1"])
        start_agents(lab, td, sp_url, ids, a, b, {})
        wait_ping(a, OVERLAY["b"], "-4")
        wait_ping(a, b6, "-6")
        results: dict[str, list[tuple[float, int]]] = {"IPv4": [], "IPv6": []}
        for _ in range(args.runs):
            results["IPv4"].append(iperf(lab, a, b, OVERLAY["b"], args.seconds))
            results["IPv6"].append(iperf(lab, a, b, b6, args.seconds))
        print(f"| family | Mbit/s, median of {args.runs} × {args.seconds} s (samples) | retransmits (median) |")
        print("|---|---|---|")
        for family, rows in results.items():
            mbits = [round(m) for m, _ in rows]
            print(f"| {family} | **{statistics.median(mbits):.0f}** ({', '.join(map(str, mbits))}) | "
                  f"{statistics.median(r for _, r in rows):.0f} |")


if __name__ == "__main__":
    main()
