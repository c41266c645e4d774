"""drasyl-agent end to end: a super peer and two agents with real TUN devices in namespaces.

Lab (one per module; the tests run in file order and build on each other)::

    a  192.0.2.10/24 ── rt ── 203.0.113.10/24  b          agents (python -m drasyl.agent run)
                        │ │
    sp 198.51.100.10/25 ┘ └ 198.51.100.130/25 sp2          super peers (python -m drasyl.superpeer)

``rt`` routes between the four links (no NAT). Each agent has its config.toml, token and
network configs in a temporary directory, an identity from the vectors, its REST API on the
namespace's own 127.0.0.1:22527 and its log on stdout; a also serves Prometheus metrics on
its 127.0.0.1:9899 (``[metrics]``), b does not. Network ``net1`` (10.77.0.0/24) lets
a (``alice``, staff) talk to b (``bob``, servers) and routes 10.99.0.0/24 via b; ``net2``
(10.78.0.0/24) has both as members but no policy between them. ``ip netns exec`` bind-mounts
``/etc/netns/<ns>/hosts`` over ``/etc/hosts``, so the agents write that file, never the
machine's. A failing test prints both agents' ``status --json``, every process's output
(agent logs, the super peers' peer tables) and the hosts files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

import drasyl_rs
import pytest
import tomlkit
from prometheus_client.parser import text_string_to_metric_families
from netns import Lab, Process, lab, python_env, require_lab_tools  # noqa: F401 (lab is a fixture)

from drasyl.identity import Identity

pytestmark = pytest.mark.netns

SP_IP, SP2_IP = "198.51.100.10", "198.51.100.130"
AGENT_IPS = {"a": "192.0.2.10", "b": "203.0.113.10"}
OVERLAY = {"a": "10.77.0.1", "b": "10.77.0.2"}
DENIED = {"a": "10.78.0.1", "b": "10.78.0.2"}
HOSTNAMES = {"a": "alice", "b": "bob"}
ROUTED = "10.99.0.0/24"
API = "127.0.0.1:22527"
METRICS = "127.0.0.1:9899"
SCRAPE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
START_S = 20.0  # Python start-up (2 cores shared with other test runs), TUN, first fetch
SETTLE_S = 15.0
TRANSFER_BYTES = 20 * 1024 * 1024


def sp_url(ip: str, identity: Identity) -> str:
    return f"udp://{ip}:22527?publicKey={identity.public_key_hex}&networkId=1&tcpPort=8443"


def network_config(ids: dict[str, Identity], subnet: str, ips: dict[str, str], groups: dict[str, str],
                   suffix: str = "", extra: str = "", name: str = "") -> str:
    """A network config with agents a and b (hostnames ``alice``/``bob`` + ``suffix``)."""
    nodes = "".join(f'''
[[node]]
pk = "{ids[side].public_key_hex}"
ip = "{ips[side]}"
hostname = "{HOSTNAMES[side]}{suffix}"
groups = ["{groups[side]}"]
''' for side in ("a", "b"))
    top = f'network = "{subnet}"\n' + (f'name = "{name}"\n' if name else "")
    return f"{top}{nodes}\n{extra}"


def net1(ids: dict[str, Identity]) -> str:
    """a (staff) may talk to b (servers), which is the gateway to ROUTED."""
    return network_config(ids, "10.77.0.0/24", OVERLAY, {"a": "staff", "b": "servers"}, name="e2e one", extra=f'''
[[route]]
dest = "{ROUTED}"
gw = "{ids['b'].public_key_hex}"

[[policy]]
source_groups = ["staff"]
destination_groups = ["servers"]
''')


def net2(ids: dict[str, Identity], policy: str = "") -> str:
    """Both are members, no policy lets them talk: every packet between them is denied."""
    return network_config(ids, "10.78.0.0/24", DENIED, {"a": "x", "b": "y"}, suffix="2", extra=policy)


def wait_until(check: Callable[[], Any], timeout: float, what: str, describe: Callable[[], str]) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``describe()`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}\n{describe()}")
        time.sleep(0.2)


class Agent:
    """One ``drasyl-agent run`` in its namespace, with its files."""

    def __init__(self, cluster: Cluster, name: str, identity: Identity) -> None:
        self.cluster = cluster
        self.name = name
        self.ns = cluster.lab.namespace(name)
        self.dir = cluster.tmp / name
        self.dir.mkdir()
        self.config = self.dir / "config.toml"
        self.token = self.dir / "auth.token"
        self.etc = Path("/etc/netns") / self.ns
        self.etc.mkdir(parents=True)
        self.hosts = self.etc / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n")
        self.proc: Process | None = None
        doc = tomlkit.document()
        doc["super_peers"] = [cluster.sp_urls[0]]
        doc["identity"] = {"sk": identity.secret_key.hex(), "pow": identity.proof_of_work}
        doc["network"] = tomlkit.aot()
        net1_entry = {"config_url": cluster.net_url("net1"), "disabled": False}
        if name == "b":  # b is net1's gateway to ROUTED: forwarding needs the local user's consent
            net1_entry["serve_routes"] = [ROUTED]
        doc["network"].append(net1_entry)
        if name == "a":
            doc["metrics"] = {"listen": METRICS}
        self.config.write_text(tomlkit.dumps(doc))
        #: its own run directory (API socket, forwarding state): /run is shared by all namespaces
        self.run_env = {"DRASYL_RUN_DIR": str(self.dir / "run")}

    def start(self, **env: str) -> None:
        assert self.hosts.exists(), "the agent would write the machine's /etc/hosts"
        self.proc = self.cluster.lab.start(self.ns, [
            sys.executable, "-m", "drasyl.agent", "run", "--config", str(self.config), "--token", str(self.token),
            "--api", API, "--log-file", "/dev/stdout", "--log-level", "info",
        ], f"agent-{self.name}", python_env(**self.run_env, **env))
        self.proc.wait_for_line(r"REST API listening", START_S)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "drasyl.agent", *args,
                                 "--token", str(self.token), "--api", API],
                                capture_output=True, text=True, timeout=30, env=python_env(**self.run_env))
        if check and result.returncode != 0:
            raise AssertionError(f"drasyl-agent {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stderr.strip()}\n{self.cluster.describe()}")
        return result

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr.strip()}

    def network(self, status: dict[str, Any], net: str) -> dict[str, Any] | None:
        url = self.cluster.net_url(net)
        return next((n for n in status.get("networks", []) if n["config_url"] == url), None)

    def wait_network(self, net: str, state: str, timeout: float = SETTLE_S) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            network = self.network(status, net)
            return status if network is not None and network["state"] == state else None
        return wait_until(check, timeout, f"{self.name}: network {net} {state}", self.cluster.describe)

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True,
                              timeout=timeout)

    def ping(self, ip: str, count: int = 3) -> subprocess.CompletedProcess:
        return self.exec("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", ip)

    def has_device(self) -> bool:
        return self.exec("ip", "link", "show", "drasyl").returncode == 0

    def our_lines(self) -> list[str]:
        return [line for line in self.hosts.read_text().splitlines() if "# managed by drasyl" in line]

    def resolve(self, name: str) -> str | None:
        """The name's IPv4 address (its IPv6 one: test_agent_ipv6.py)."""
        result = self.exec("getent", "ahostsv4", name)
        return result.stdout.split()[0] if result.returncode == 0 and result.stdout else None


class Cluster:
    """The lab: router, super peer(s), two agents; :meth:`describe` for failures."""

    def __init__(self, lab: Lab, tmp: Path, ids: dict[str, Identity], sp_cmd: list[str] | None = None) -> None:
        self.lab = lab
        self.tmp = tmp
        self.ids = ids
        self.agents: dict[str, Agent] = {}
        self.rt = lab.namespace("rt")
        lab.sysctl(self.rt, "net.ipv4.ip_forward", "1")
        self.sp_ns = lab.namespace("sp")
        self.link(self.sp_ns, SP_IP, 25)
        self.sp_urls = [sp_url(SP_IP, ids["sp"])]
        self.write_net("net1", net1(ids))
        self.write_net("net2", net2(ids))
        # b's (wrong) view of net2 lets it send to a: a must refuse what b sends
        self.write_net("net2-b", net2(ids, '[[policy]]\nsource_groups = ["x"]\ndestination_groups = ["y"]\n'))
        for name in ("a", "b"):
            agent = Agent(self, name, ids[name])
            self.link(agent.ns, AGENT_IPS[name], 24)
            self.agents[name] = agent
        self.sp = self.start_super_peer(self.sp_ns, "sp", ids["sp"], sp_cmd)
        # an agent can be up first, and then its first HELLO is lost and the next is 5 s later
        self.sp.wait_for_line(r"^Super peer listening on:$", START_S)

    def link(self, ns: str, ip: str, prefix: int) -> None:
        """A link from the router to ``ns`` (router at the subnet's first address), default via it."""
        gateway = str(next(ip_interface(f"{ip}/{prefix}").network.hosts()))
        self.lab.veth(self.rt, ns, f"{gateway}/{prefix}", f"{ip}/{prefix}")
        self.lab.ip(ns, "route", "add", "default", "via", gateway)

    def start_super_peer(self, ns: str, name: str, identity: Identity, cmd: list[str] | None = None,
                         **env: str) -> Process:
        ip = SP_IP if name == "sp" else SP2_IP
        path = self.tmp / f"{name}.identity"
        identity.save(path)
        argv = cmd or [sys.executable, "-m", "drasyl.superpeer"]
        return self.lab.start(ns, argv, name, python_env(
            DRASYL_IDENTITY_FILE=str(path), DRASYL_UDP4_LISTEN=f"{ip}:22527", DRASYL_UDP6_LISTEN="",
            DRASYL_TCP4_LISTEN=f"{ip}:8443", DRASYL_TCP6_LISTEN="", DRASYL_PEERS_PRINT_INTERVAL="3000",
            RUST_LOG="info", **env))

    def net_url(self, net: str) -> str:
        return f"file://{self.tmp / net}.toml"

    def write_net(self, net: str, text: str) -> None:
        (self.tmp / f"{net}.toml").write_text(text)

    def describe(self) -> str:
        out = []
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.popen.poll() is None:
                out.append(f"--- status of agent {agent.name}:\n{json.dumps(agent.status(), indent=1)}")
            out.append(f"--- hosts of {agent.name}:\n{agent.hosts.read_text() if agent.hosts.exists() else '-'}")
        return "\n".join(out) + "\n" + self.lab.describe()

    def close(self) -> None:
        for agent in self.agents.values():
            shutil.rmtree(agent.etc, ignore_errors=True)


def _identities(ids: dict[str, Identity]) -> dict[str, Identity]:
    return {"sp": ids["id_1"], "a": ids["id_2"], "b": ids["id_3"]}


@pytest.fixture(scope="module")
def cluster(ids, tmp_path_factory) -> Iterator[Cluster]:
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("agents"), _identities(ids))
        try:
            for agent in c.agents.values():
                agent.start()
            yield c
        finally:
            c.close()


@pytest.fixture(autouse=True)
def show_on_failure(request) -> Iterator[None]:
    """After a failed test, print both agents' status, all logs and the peer tables."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed and "cluster" in request.fixturenames:
        print(request.getfixturevalue("cluster").describe())


def _received(ping: subprocess.CompletedProcess) -> int:
    match = re.search(r"(\d+) received", ping.stdout)
    return int(match.group(1)) if match else 0


# --- the tests, in order --------------------------------------------------------------------


def test_ping_both_ways(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    for agent in (a, b):
        status = agent.wait_network("net1", "active")
        net = agent.network(status, "net1")
        assert net["ip"] == OVERLAY[agent.name] and net["subnet"] == "10.77.0.0/24"
        assert net["name"] == "e2e one"
    for src, dst in ((a, b), (b, a)):
        ping = src.ping(OVERLAY[dst.name])
        assert _received(ping) == 3, f"ping {src.name} → {dst.name}: {ping.stdout}{ping.stderr}\n{cluster.describe()}"
    status = a.status()
    sp = status["super_peers"][0]
    assert sp["transport"] == "udp" and sp["rtt_ms"] is not None and sp["default"], sp
    peer = next(p for p in status["peers"] if p["public_key"] == cluster.ids["b"].public_key_hex)
    assert peer["hostname"] == "bob" and peer["ip"] == OVERLAY["b"], peer
    assert peer["path"] in ("direct", "relayed") and peer["rx_bytes"] >= 3 * 84 and peer["tx_bytes"] >= 3 * 84, peer
    assert peer["last_rx_s"] is not None and peer["last_rx_s"] < 10, peer
    seed = cluster.ids["a"].secret_key.hex()[:64]
    assert seed not in json.dumps(status), "status must not carry the secret key"
    # the route to b's LAN and b's forwarding, as net1 says
    routes = a.exec("ip", "route", "show", ROUTED).stdout
    assert f"via {OVERLAY['b']}" in routes and "metric 4900" in routes, routes
    assert {"dest": ROUTED, "gateway": OVERLAY["b"], "network": "e2e one", "state": "Applied"} in status["routes"]
    assert b.exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"


def test_direct_path(cluster: Cluster) -> None:
    """No NAT between the agents: after traffic, the path becomes direct."""
    a = cluster.agents["a"]
    b_pk = cluster.ids["b"].public_key_hex

    def direct() -> bool:
        a.ping(OVERLAY["b"], count=1)
        return any(p["public_key"] == b_pk and p["path"] == "direct" for p in a.status().get("peers", []))
    wait_until(direct, 10, "a reaches b directly", cluster.describe)


def test_metrics_agree_with_status(cluster: Cluster) -> None:
    """a's metrics show what its status shows (counters read before and after the status);
    b, without [metrics], listens on no metrics port."""
    a, b = cluster.agents["a"], cluster.agents["b"]

    def scrape() -> dict[str, float]:
        result = a.exec(sys.executable, "-c", SCRAPE, f"http://{METRICS}/metrics")
        assert result.returncode == 0, f"{result.stderr}\n{cluster.describe()}"
        return {key(s.name, **s.labels): s.value for f in text_string_to_metric_families(result.stdout)
                for s in f.samples}

    before, status, after = scrape(), a.status(), scrape()
    b_pk, sp_pk = cluster.ids["b"].public_key_hex, status["super_peers"][0]["public_key"]
    peer = next(p for p in status["peers"] if p["public_key"] == b_pk)
    for direction in ("rx", "tx"):
        name = key("drasyl_agent_peer_bytes_total", peer=b_pk, direction=direction)
        assert before[name] <= peer[f"{direction}_bytes"] <= after[name], (before[name], peer, after[name])
    for path in ("direct", "relayed", "tcp"):
        assert after[key("drasyl_agent_peer_path", peer=b_pk, path=path)] == (path == peer["path"]), path
    assert key("drasyl_agent_peer_rtt_seconds", peer=b_pk) in after
    assert after[key("drasyl_agent_super_peer_transport", super_peer=sp_pk, transport="udp")] == 1
    assert after[key("drasyl_agent_super_peer_default", super_peer=sp_pk)] == 1
    net1 = a.network(status, "net1")["config_url"]
    assert after[key("drasyl_agent_network_state", network=net1, state="active")] == 1
    for reason, count in status["drops"].items():
        name = key("drasyl_agent_dropped_packets_total", reason=reason)
        assert before[name] <= count <= after[name], (reason, before[name], count, after[name])
    refused = b.exec(sys.executable, "-c", SCRAPE, f"http://{METRICS}/metrics")
    assert refused.returncode != 0 and "Connection refused" in refused.stderr, refused


def key(metric: str, /, **labels: str) -> str:
    """One sample's name and labels as one string."""
    return metric + repr(sorted(labels.items()))


def test_names_resolve(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    for agent in (a, b):
        for name, ip in (("bob", OVERLAY["b"]), ("alice", OVERLAY["a"])):
            assert agent.resolve(name) == ip, f"{agent.name}: {name}\n{cluster.describe()}"
            assert agent.resolve(f"{name}.drasyl.network") == ip
    assert len(a.our_lines()) == 4, a.our_lines()  # IPv4 and IPv6 per name
    assert "drasyl" not in Path("/etc/hosts").read_text(), "the machine's /etc/hosts was touched"


def test_tcp_transfer_20mb(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    for agent in (a, b):  # also when this test runs alone (-k): the overlay must be up first
        agent.wait_network("net1", "active")
    wait_until(lambda: _received(a.ping(OVERLAY["b"], count=1)) == 1, SETTLE_S, "a reaches b", cluster.describe)
    receiver = cluster.lab.start(b.ns, [sys.executable, "-c", RECEIVER, OVERLAY["b"]], "receiver")
    receiver.wait_for_line(r"^listening$", 10)
    started = time.monotonic()
    sent = a.exec(sys.executable, "-c", SENDER, OVERLAY["b"], str(TRANSFER_BYTES), timeout=60)
    elapsed = time.monotonic() - started
    assert sent.returncode == 0, f"{sent.stderr}\n{cluster.describe()}"
    got = receiver.wait_for_line(r"^received (\d+) ([0-9a-f]{64})$", 30).match
    assert int(got.group(1)) == TRANSFER_BYTES
    assert got.group(2) == sent.stdout.split()[-1], "the bytes arrived changed"
    print(f"20 MB a → b in {elapsed:.2f} s ({TRANSFER_BYTES * 8 / elapsed / 1e6:.0f} Mbit/s)")


def test_add_denied_network_disable_remove(cluster: Cluster) -> None:
    """``add`` joins net2 at once; its policy lets nothing through, neither out of a's TUN
    nor (b's view of net2 allows it) into it, and both are counted; ``disable`` and
    ``remove`` take the address away at once."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    nets = {"a": "net2", "b": "net2-b"}
    for agent in (a, b):
        url = cluster.net_url(nets[agent.name])
        added = agent.cli("add", url)
        assert f"Network '{url}' added; this node is a member as {DENIED[agent.name]}" in added.stdout
        status = agent.wait_network(nets[agent.name], "active", timeout=5)  # no 10 s tick in between
        assert agent.network(status, nets[agent.name])["ip"] == DENIED[agent.name]
    url = cluster.net_url("net2")
    again = a.cli("add", url, check=False)
    assert again.returncode == 1 and "Network already exists" in again.stderr
    before = a.status()["drops"]
    assert _received(a.ping(DENIED["b"])) == 0
    assert _received(b.ping(DENIED["a"])) == 0
    after = a.status()["drops"]
    assert after.get("tx_policy_denied", 0) >= before.get("tx_policy_denied", 0) + 3, after
    assert after.get("rx_policy_denied", 0) >= before.get("rx_policy_denied", 0) + 3, after
    assert _received(a.ping(OVERLAY["b"], count=1)) == 1, "net1 must be unaffected"
    assert a.resolve("bob2") is None, "a name of a peer no policy allows must not resolve"
    assert b.resolve("alice2") == DENIED["a"]

    a.cli("disable", url)
    assert DENIED["a"] not in a.exec("ip", "-4", "addr", "show", "drasyl").stdout
    assert a.network(a.status(), "net2")["state"] == "disabled"
    assert "disabled = true" in a.config.read_text()
    a.cli("enable", url)
    a.wait_network("net2", "active", timeout=5)
    for agent in (a, b):
        agent.cli("remove", cluster.net_url(nets[agent.name]))
        assert DENIED[agent.name] not in agent.exec("ip", "-4", "addr", "show", "drasyl").stdout
        assert agent.network(agent.status(), nets[agent.name]) is None
        assert "net2" not in agent.config.read_text()
    missing = a.cli("remove", url, check=False)
    assert missing.returncode == 1 and "Network not found" in missing.stderr


def test_broken_network_config_keeps_last_good_state(cluster: Cluster) -> None:
    """Fail-static: a network config that stops validating leaves the network as it was."""
    a = cluster.agents["a"]
    path = cluster.tmp / "net1.toml"
    good = path.read_text()
    path.write_text(good.replace('ip = "10.77.0.2"', 'ip = "10.99.0.2"'))  # outside the subnet
    try:
        mark = a.proc.mark()
        os.kill(a.proc.pid, signal.SIGHUP)  # a reload also fetches every network at once
        line = a.proc.wait_for_line(r"keeping the last good state", 10, since=mark)
        assert "10.99.0.2" in line.text
        net = a.network(a.status(), "net1")
        assert net["state"] == "active" and net["ip"] == OVERLAY["a"] and "10.99.0.2" in net["error"], net
        assert _received(a.ping(OVERLAY["b"], count=1)) == 1
    finally:
        path.write_text(good)
    mark = a.proc.mark()
    os.kill(a.proc.pid, signal.SIGHUP)
    a.proc.wait_for_line(r"Reload: nothing changed", 10, since=mark)
    wait_until(lambda: a.network(a.status(), "net1")["error"] is None, 5, "the error clears", cluster.describe)


def test_prefix_change_keeps_routes_rules_and_names(cluster: Cluster) -> None:
    """drasyl-rs [bug]: after an address change it compared against the torn-down state and
    lost the network's routes, rules and names. Here they stay."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    path = cluster.tmp / "net1.toml"
    good = path.read_text()

    def reload_with(text: str, prefix: str) -> None:
        path.write_text(text)
        for agent in (a, b):
            os.kill(agent.proc.pid, signal.SIGHUP)
        for agent in (a, b):
            wait_until(lambda: f"{OVERLAY[agent.name]}/{prefix} " in agent.exec("ip", "-4", "addr", "show",
                                                                                 "drasyl").stdout,
                       10, f"{agent.name} has {OVERLAY[agent.name]}/{prefix}", cluster.describe)

    try:
        reload_with(good.replace("10.77.0.0/24", "10.77.0.0/25"), "25")
        routes = a.exec("ip", "route", "show", ROUTED).stdout
        assert f"via {OVERLAY['b']}" in routes, f"route lost after the prefix change: {routes!r}"
        assert len(a.our_lines()) == 4, a.our_lines()  # IPv4 and IPv6 per name
        assert _received(a.ping(OVERLAY["b"])) == 3, cluster.describe()
    finally:
        reload_with(good, "24")


def test_sighup_switches_super_peers(cluster: Cluster) -> None:
    """A second super peer replaces the first by SIGHUP; the TUN and a running ping stay."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    sp2_ns = cluster.lab.namespace("sp2")
    cluster.link(sp2_ns, SP2_IP, 25)
    sp2_id = Identity.generate(0)  # super peers' keys need no proof of work; ours checks nodes at 24
    sp2 = cluster.start_super_peer(sp2_ns, "sp2", sp2_id, DRASYL_MIN_POW_DIFFICULTY="0")
    sp2.wait_for_line(r"^Super peer listening on:$", START_S)
    index_before = a.exec("cat", "/sys/class/net/drasyl/ifindex").stdout
    flow = cluster.lab.start(a.ns, ["ping", "-n", "-c", "30", "-i", "0.2", "-W", "2", OVERLAY["b"]], "ping")
    flow.wait_for_line(r"bytes from", 5)
    for agent in (a, b):
        doc = tomlkit.parse(agent.config.read_text())
        doc["super_peers"] = [sp_url(SP2_IP, sp2_id)]
        agent.config.write_text(tomlkit.dumps(doc))
        mark = agent.proc.mark()
        os.kill(agent.proc.pid, signal.SIGHUP)
        agent.proc.wait_for_line(r"Reload: super peers now", 10, since=mark)

    def on_sp2(agent: Agent) -> Callable[[], bool]:
        def check() -> bool:
            sps = agent.status().get("super_peers", [])
            return (len(sps) == 1 and sps[0]["public_key"] == sp2_id.public_key_hex
                    and sps[0]["transport"] == "udp")
        return check
    for agent in (a, b):
        wait_until(on_sp2(agent), 10, f"{agent.name} registered at sp2", cluster.describe)
    cluster.sp.stop()
    assert flow.wait(15) == 0, cluster.describe()
    received = int(flow.wait_for_line(r"(\d+) received", 5).match.group(1))
    assert received >= 27, f"{received}/30 pings across the reload\n{cluster.describe()}"
    assert a.exec("cat", "/sys/class/net/drasyl/ifindex").stdout == index_before, "the TUN was recreated"
    assert _received(b.ping(OVERLAY["a"])) == 3


def test_broken_config_on_sighup_keeps_running(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    good = a.config.read_text()
    a.config.write_text(good + "\nmtu = [\n")
    try:
        mark = a.proc.mark()
        os.kill(a.proc.pid, signal.SIGHUP)
        line = a.proc.wait_for_line(r"Reload failed, keeping the running configuration", 10, since=mark)
        assert "config.toml" in line.text
    finally:
        a.config.write_text(good)
    assert _received(a.ping(OVERLAY["b"], count=1)) == 1


def test_kill_9_then_restart_cleans_up_and_tcp_only(cluster: Cluster) -> None:
    """After kill -9 a restart cleans up what is left; restarted with DRASYL_ENFORCE_TCP=true
    b reaches its super peer over TCP and a over the overlay as before."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    b.proc.popen.kill()
    b.proc.wait(10)
    assert b.our_lines(), "precondition: a killed agent leaves its hosts lines"
    b.start(DRASYL_ENFORCE_TCP="true")
    status = b.wait_network("net1", "active")
    lines = b.our_lines()
    assert len(lines) == len(set(lines)) == 4, lines
    wait_until(lambda: b.status()["super_peers"][0]["transport"] == "tcp", 10, "b on TCP", cluster.describe)
    # a still holds the short id of b's previous run: its packets reach b again once b's new
    # HELLO arrives, at the latest after a's next HELLO (5 s interval) to b's known path
    wait_until(lambda: _received(a.ping(OVERLAY["b"], count=1)) == 1, 8, "a reaches the restarted b",
               cluster.describe)
    assert _received(b.ping(OVERLAY["a"])) == 3, cluster.describe()
    assert status["super_peers"][0]["transport"] in (None, "tcp"), "UDP must not be used"
    b.proc.popen.send_signal(signal.SIGTERM)
    assert b.proc.wait(10) == 0
    assert not b.has_device() and b.our_lines() == []


def test_sigterm_removes_everything(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    assert a.has_device() and a.our_lines()
    a.proc.popen.send_signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0, cluster.describe()
    assert not a.has_device(), "TUN device left"
    assert "4900" not in a.exec("ip", "route", "show").stdout, "route left"
    assert a.our_lines() == [], "hosts lines left"
    assert "localhost" in a.hosts.read_text(), "other hosts lines must stay"


# --- with the drasyl-rs super peer --------------------------------------------------------------


@pytest.mark.interop
def test_ping_through_drasyl_rs_super_peer(ids, tmp_path) -> None:
    binary = str(drasyl_rs.binary_dir() / "drasyl-sp")
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path, _identities(ids), sp_cmd=[binary])
        try:
            for agent in c.agents.values():
                agent.start()
            a, b = c.agents["a"], c.agents["b"]
            for agent in (a, b):
                agent.wait_network("net1", "active")
            for src, dst in ((a, b), (b, a)):
                ping = src.ping(OVERLAY[dst.name])
                assert _received(ping) == 3, f"{ping.stdout}{ping.stderr}\n{c.describe()}"
            sp = a.status()["super_peers"][0]
            assert sp["transport"] == "udp" and sp["rtt_ms"] is not None, sp
        finally:
            c.close()


RECEIVER = """
import hashlib, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.create_server((sys.argv[1], 5001), family=family)
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    total += len(chunk)
print(f"received {total} {digest.hexdigest()}", flush=True)
"""

SENDER = """
import hashlib, random, socket, sys
data = random.Random(7).randbytes(int(sys.argv[2]))
with socket.create_connection((sys.argv[1], 5001), timeout=30) as conn:
    conn.sendall(data)
print(hashlib.sha256(data).hexdigest())
"""


# --- start-up mistakes ---------------------------------------------------------------------------


def test_start_mistakes_are_one_line_and_leave_nothing(lab: Lab, ids, tmp_path) -> None:
    """A bad variable: one line on stderr, exit 1, no device left. (An API port in use is no
    longer fatal: the agent serves its Unix socket; test_agent_api_netns.py checks that.)"""
    ns = lab.namespace("solo")
    lab.veth(ns, lab.namespace("peer"), "192.0.2.20/24", "192.0.2.21/24")
    config = tmp_path / "config.toml"
    identity = ids["id_2"]
    config.write_text(f'super_peers = ["{sp_url(SP_IP, ids["id_1"])}"]\n\n[identity]\n'
                      f'sk = "{identity.secret_key.hex()}"\npow = {identity.proof_of_work}\n')
    (Path("/etc/netns") / ns).mkdir(parents=True)
    try:
        (Path("/etc/netns") / ns / "hosts").write_text("127.0.0.1 localhost\n")
        for env, expected in ((dict(DRASYL_UDP_PORT="abc"), "DRASYL_UDP_PORT='abc' is invalid: not an integer"),):
            result = subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "drasyl.agent", "run", "--config", str(config),
                 "--token", str(tmp_path / "auth.token"), "--api", API, "--log-level", "off"],
                capture_output=True, text=True, timeout=30, env=python_env(DRASYL_RUN_DIR=str(tmp_path / "run"), **env))
            assert result.returncode == 1, result.stderr
            assert result.stderr.startswith("drasyl-agent run: ") and expected in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
            assert subprocess.run(["ip", "-n", ns, "link", "show", "drasyl"], capture_output=True).returncode != 0
    finally:
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

