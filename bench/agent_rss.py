"""Where the agent's memory goes: RSS/USS/PSS of a running ``drasyl-agent`` and what each import costs.

Usage (root; from the repository root)::

    python3 bench/agent_rss.py                    # 100 extra peers, traffic, import costs
    python3 bench/agent_rss.py --peers 0 --seconds 5
    python3 bench/agent_rss.py --env MALLOC_ARENA_MAX=1 --no-imports   # compare a variant
    python3 bench/agent_rss.py --source           # no bytecode: every module compiled at start

A lab of our own (tests/netns.py, randomly named namespaces): our super peer and agents a and
b on one bridged "internet" (198.51.100.0/24), identities from the test vectors, one file://
network config (10.77.0.0/16, everyone may talk to everyone) listing a, b and ``--peers``
more nodes with random keys that never come up (each costs a send handle and table entries).
Agent a's memory is read with psutil's ``memory_full_info`` after start (the network applied:
b answers a ping through the TUN), after ``--seconds`` of iperf3 TCP a→b through the TUN, and
after one more housekeeping tick, and which mappings hold it. Then each import of the agent's start-up, in the order
``drasyl.agent.daemon`` pulls them, in a fresh interpreter: RSS after it minus before.

The checkout's bytecode is compiled first (``__pycache__`` directories, removed at the end), as
``pip install`` does: without .pyc files (``PYTHONDONTWRITEBYTECODE``, as on our dev machines) every
drasyl module is compiled at each start, which leaves ~1.5 MiB more in the heap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from nacl.signing import SigningKey

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from netns import Lab, Process, python_env  # noqa: E402

from drasyl.identity import Identity  # noqa: E402

VECTORS = REPO / "tests" / "vectors"  # or $DRASYL_VECTORS, as in tests/conftest.py
SP_IP, A_IP, B_IP = "198.51.100.10", "198.51.100.11", "198.51.100.12"
OVERLAY = {"a": "10.77.0.1", "b": "10.77.0.2"}
MIB = 1 << 20
#: The agent's start-up imports, outermost first: each row is what it adds over the rows above.
#: The last rows load on demand: aiohttp's client with the first http(s) network config,
#: tomlkit when config.toml is edited.
IMPORTS = ("asyncio", "drasyl", "drasyl.agent", "aiohttp.web", "drasyl.tun.netlink", "drasyl.tun", "drasyl.agent.config",
           "drasyl.agent.api", "drasyl.agent.daemon", "drasyl.agent.cli", "aiohttp.client", "tomlkit")
_IMPORT_PROBE = """
import importlib, sys, psutil
p = psutil.Process()
def mem():
    m = p.memory_full_info()
    return m.rss, m.uss
print(*mem())
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, *mem())
"""


def identities() -> dict[str, Identity]:
    path = Path(os.environ.get("DRASYL_VECTORS", VECTORS)) / "derived.json"
    data = json.loads(path.read_text())["identities"]
    return {k: Identity.from_hex(v["secret_key_hex"], v["proof_of_work"]) for k, v in data.items()}


def network_config(ids: dict[str, Identity], extra: int) -> str:
    nodes = [(ids["id_2"].public_key_hex, OVERLAY["a"], "rss-a"), (ids["id_3"].public_key_hex, OVERLAY["b"], "rss-b")]
    for i in range(extra):
        nodes.append((SigningKey.generate().verify_key.encode().hex(), f"10.77.{1 + i // 250}.{1 + i % 250}",
                      f"extra{i}"))
    lines = ['network = "10.77.0.0/16"', 'name = "rss"', ""]
    for pk, ip, name in nodes:
        lines += ["[[node]]", f'pk = "{pk}"', f'ip = "{ip}"', f'hostname = "{name}"', ""]
    lines += ["[[policy]]", 'source_groups = ["ALL"]', 'destination_groups = ["ALL"]']
    return "\n".join(lines) + "\n"


def internet_namespaces(lab: Lab) -> tuple[str, str, str]:
    """Namespaces sp, a and b on the lab's bridge with SP_IP, A_IP and B_IP."""
    sp, a, b = lab.namespace("sp"), lab.namespace("a"), lab.namespace("b")
    for ns, ip in ((sp, SP_IP), (a, A_IP), (b, B_IP)):
        lab.internet(ns, ip)
    return sp, a, b


def start_super_peer(lab: Lab, td: Path, ns: str, identity: Identity, **env: str) -> str:
    """Our super peer in ``ns`` on SP_IP (UDP 22527, TCP 8443) with ``identity``; its URL."""
    identity.save(td / "sp.identity")
    lab.start(ns, [sys.executable, "-m", "drasyl.superpeer"], "sp", python_env(
        DRASYL_IDENTITY_FILE=str(td / "sp.identity"), DRASYL_UDP4_LISTEN=f"{SP_IP}:22527", DRASYL_UDP6_LISTEN="",
        DRASYL_TCP4_LISTEN=f"{SP_IP}:8443", DRASYL_TCP6_LISTEN="", DRASYL_PROMETHEUS_LISTEN="", **env))
    return f"udp://{SP_IP}:22527?publicKey={identity.public_key_hex}&networkId=1&tcpPort=8443"


def write_agent_config(path: Path, sp_url: str, identity: Identity, net_toml: Path) -> None:
    """An agent's config.toml (mode 0600: it holds the secret key) for one file:// network."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(f'super_peers = ["{sp_url}"]\n\n[identity]\nsk = "{identity.secret_key.hex()}"\n'
                    f'pow = {identity.proof_of_work}\n\n[[network]]\nconfig_url = "file://{net_toml}"\n')


def start_agents(lab: Lab, td: Path, sp_url: str, ids: dict[str, Identity], a: str, b: str,
                 env: dict[str, str]) -> dict[str, Process]:
    """Agents a (id_2) and b (id_3) in their namespaces on ``td/net.toml``, up with their APIs."""
    agents = {}
    for side, ns, ident in (("a", a, ids["id_2"]), ("b", b, ids["id_3"])):
        lab.etc_file(ns, "hosts", "127.0.0.1 localhost\n")
        write_agent_config(td / side / "config.toml", sp_url, ident, td / "net.toml")
        agents[side] = lab.start(ns, [
            sys.executable, "-m", "drasyl.agent", "run", "--config", str(td / side / "config.toml"),
            "--token", str(td / side / "auth.token"), "--log-level", "info", "--log-file", "/dev/stdout",
        ], f"agent-{side}", python_env(DRASYL_RUN_DIR=str(td / side / "run"), **env))
    for proc in agents.values():
        proc.wait_for_line(r"REST API listening", 30)
    return agents


def wait_ping(ns: str, address: str, family: str) -> None:
    """Until ``ns`` gets an echo reply from ``address`` (``family``: -4 or -6), at most 30 s."""
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "netns", "exec", ns, "ping", family, "-n", "-c", "1", "-W", "1", address],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{ns} cannot ping {address} through the TUN within 30 s")


def memory(pid: int) -> str:
    m = psutil.Process(pid).memory_full_info()
    threads = psutil.Process(pid).num_threads()
    return f"RSS {m.rss / MIB:5.1f}  USS {m.uss / MIB:5.1f}  PSS {m.pss / MIB:5.1f} MiB  ({threads} threads)"


def mappings(pid: int) -> str:
    """RSS by kind of mapping: anonymous memory (the heaps: Python objects, malloc) and each
    group of files (the interpreter, extension modules and the C libraries they link)."""
    groups: dict[str, int] = {}
    for m in psutil.Process(pid).memory_maps(grouped=True):
        path = m.path
        if not path.startswith("/"):
            kind = "anonymous"
        elif "/site-packages/" in path:
            kind = path.split("/site-packages/")[1].split("/")[0].split(".")[0].lstrip("_")
        elif "libpython" in path or path.endswith(("/python3", "/python3.11")):
            kind = "python"
        elif "/lib-dynload/" in path:
            kind = "stdlib .so"
        elif "libssl" in path or "libcrypto" in path:
            kind = "openssl"
        else:
            kind = "other .so"
        groups[kind] = groups.get(kind, 0) + m.rss
    top = sorted(groups.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{kind} {rss / MIB:.1f}" for kind, rss in top if rss >= MIB // 10)


def run_lab(extra: int, seconds: int, env: dict[str, str]) -> None:
    ids = identities()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        td = Path(tmp)
        sp, a, b = internet_namespaces(lab)
        (td / "net.toml").write_text(network_config(ids, extra))
        sp_url = start_super_peer(lab, td, sp, ids["id_1"])
        agents = start_agents(lab, td, sp_url, ids, a, b, env)
        wait_ping(a, OVERLAY["b"], "-4")
        pid = agents["a"].pid
        bytecode = "bytecode" if (REPO / "drasyl" / "__pycache__").exists() else "no bytecode"
        print(f"agent a, {extra} extra peers, {bytecode}, env {env or '-'}")
        print(f"  after start (b answers a ping)    {memory(pid)}")
        server = lab.start(b, ["iperf3", "-s", "-1", "--forceflush"], "iperf3-s")
        server.wait_for_line(r"Server listening", 10)
        out = subprocess.run(["ip", "netns", "exec", a, "iperf3", "-c", OVERLAY["b"], "-t", str(seconds), "-J"],
                             capture_output=True, text=True, timeout=seconds + 30)
        mbits = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6 if out.returncode == 0 else 0
        print(f"  after {seconds} s iperf3 a→b ({mbits:.0f} Mbit/s)  {memory(pid)}")
        time.sleep(11)  # one more housekeeping tick (10 s): the steady state
        print(f"  one housekeeping tick later       {memory(pid)}")
        print(f"  by mapping: {mappings(pid)}")


def import_costs(env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *IMPORTS], capture_output=True, text=True,
                         check=True, env=python_env(**env)).stdout.split("\n")
    rss0, uss0 = map(int, out[0].split())
    print(f"imports in a fresh interpreter (MiB): interpreter and psutil RSS {rss0 / MIB:.1f} USS {uss0 / MIB:.1f}")
    for line in filter(None, out[1:]):
        name, rss, uss = line.split()
        print(f"  {name:22s} +RSS {(int(rss) - rss0) / MIB:5.1f}  +USS {(int(uss) - uss0) / MIB:5.1f}"
              f"   = {int(rss) / MIB:5.1f} / {int(uss) / MIB:5.1f}")
        rss0, uss0 = int(rss), int(uss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=100, help="extra peers in the network config (default 100)")
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 duration (default 10)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="for the agents")
    parser.add_argument("--no-imports", action="store_true", help="skip the per-import costs")
    parser.add_argument("--source", action="store_true", help="no bytecode for drasyl (compiled at start)")
    parser.add_argument("--no-lab", action="store_true", help="only the per-import costs")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    if args.source:
        measure(args, env)
        return
    compiled = [REPO / "drasyl"] + [p.parent for p in (REPO / "drasyl").rglob("*.py")]
    made = {d / "__pycache__" for d in compiled if not (d / "__pycache__").exists()}
    try:  # bytecode next to the sources, as after pip install (PYTHONDONTWRITEBYTECODE: none there)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "drasyl")], check=True)
        measure(args, env)
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


def measure(args: argparse.Namespace, env: dict[str, str]) -> None:
    if not args.no_lab:
        run_lab(args.peers, args.seconds, env)
    if not args.no_imports:
        import_costs(env)


if __name__ == "__main__":
    main()
