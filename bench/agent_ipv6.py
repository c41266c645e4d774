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

from agent_rss import A_IP, B_IP, OVERLAY, SP_IP, Lab, identities, network_config, python_env  # noqa: E402

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


def wait_ping(a: str, address: str, family: str) -> None:
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "netns", "exec", a, "ping", family, "-n", "-c", "1", "-W", "1", address],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"a cannot ping {address} through the TUN within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    ids = identities()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        sp, a, b = lab.namespace("sp"), lab.namespace("a"), lab.namespace("b")
        for ns, ip in ((sp, SP_IP), (a, A_IP), (b, B_IP)):
            lab.internet(ns, ip)
        text = network_config(ids, 0)
        (td / "net.toml").write_text(text)
        b6 = str(next(n.ip6 for n in parse_network_config(text, "bench").nodes if n.pk == ids["id_3"].public_key))
        ids["id_1"].save(td / "sp.identity")
        lab.start(sp, [sys.executable, "-m", "drasyl.superpeer"], "sp", python_env(
            DRASYL_IDENTITY_FILE=str(td / "sp.identity"), DRASYL_UDP4_LISTEN=f"{SP_IP}:22527", DRASYL_UDP6_LISTEN="",
            DRASYL_TCP4_LISTEN=f"{SP_IP}:8443", DRASYL_TCP6_LISTEN="", DRASYL_PROMETHEUS_LISTEN=""))
        sp_url = f"udp://{SP_IP}:22527?publicKey={ids['id_1'].public_key_hex}&networkId=1&tcpPort=8443"
        agents = []
        for side, ns, ident in (("a", a, ids["id_2"]), ("b", b, ids["id_3"])):
            (td / side).mkdir()
            lab.etc_file(ns, "hosts", "127.0.0.1 localhost\n")
            (td / side / "config.toml").write_text(
                f'super_peers = ["{sp_url}"]\n\n[identity]\nsk = "{ident.secret_key.hex()}"\n'
                f'pow = {ident.proof_of_work}\n\n[[network]]\nconfig_url = "file://{td}/net.toml"\n')
            agents.append(lab.start(ns, [
                sys.executable, "-m", "drasyl.agent", "run", "--config", str(td / side / "config.toml"),
                "--token", str(td / side / "auth.token"), "--log-level", "info", "--log-file", "/dev/stdout",
            ], f"agent-{side}", python_env(DRASYL_RUN_DIR=str(td / side / "run"))))
        for proc in agents:
            proc.wait_for_line(r"REST API listening", 30)
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
