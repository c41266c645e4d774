"""A network config is untrusted: hostile configs, served over http from a namespace, against real agents.

The lab of ``test_agent_e2e`` (super peer, agents a and b behind a router, net1 between them,
b consents to serve net1's routed subnet) plus an HTTP server in the super peer's namespace
that serves what a hostile network admin writes. Agent a runs with MTU 1200, b with 1345.
Each test says which item of the threat it checks; all run against the kernel (``ip route
get``, ``/proc/sys``, ``getent``, ``ip link del``).
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator

import pytest
import tomlkit
from netns import Lab, require_lab_tools
from test_agent_e2e import OVERLAY, ROUTED, SP_IP, Cluster, _identities, _received, net1, network_config, \
    wait_until

pytestmark = pytest.mark.netns

WWW = f"http://{SP_IP}:8080"
HOSTILE_SUBNET = "10.66.0.0/24"
HOSTILE_IPS = {"a": "10.66.0.1", "b": "10.66.0.2"}


@pytest.fixture(scope="module")
def cluster(ids, tmp_path_factory) -> Iterator[Cluster]:
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("hostile"), _identities(ids))
        try:
            www = c.tmp / "www"
            www.mkdir()
            c.www = www
            server = lab.start(c.sp_ns, [sys.executable, "-u", "-m", "http.server", "8080", "--bind", SP_IP,
                                         "--directory", str(www)], "www")
            server.wait_for_line(r"Serving HTTP", 10)
            a = c.agents["a"]
            doc = tomlkit.parse(a.config.read_text())
            doc["mtu"] = 1200
            a.config.write_text(tomlkit.dumps(doc))
            for agent in c.agents.values():
                agent.start()
            yield c
        finally:
            c.close()


def serve(cluster: Cluster, name: str, text: str) -> str:
    (cluster.www / name).write_text(text)
    return f"{WWW}/{name}"


def hostile(cluster: Cluster, extra: str, **kw) -> str:
    return network_config(cluster.ids, kw.pop("subnet", HOSTILE_SUBNET), kw.pop("ips", HOSTILE_IPS),
                          {"a": "g", "b": "g"}, suffix=kw.pop("suffix", "-h"),
                          extra=extra + '[[policy]]\nsource_groups = ["g"]\ndestination_groups = ["g"]\n', **kw)


def route(dest: str, gw_pk: str) -> str:
    return f'[[route]]\ndest = "{dest}"\ngw = "{gw_pk}"\n'


def network_status(agent, url: str) -> dict:
    return next(n for n in agent.status()["networks"] if n["config_url"] == url)


def wait_state(cluster: Cluster, agent, url: str, state: str) -> dict:
    def check():
        net = network_status(agent, url)
        return net if net["state"] == state else None
    return wait_until(check, 20, f"{agent.name}: {url} {state}", cluster.describe)


def route_dev(agent, address: str) -> str:
    out = agent.exec("ip", "route", "get", address).stdout
    match = re.search(r" dev (\S+)", out)
    return match.group(1) if match else out


def test_routing_takeover_forwarding_and_names_are_refused(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    a.wait_network("net1", "active")
    pk_a, pk_b = cluster.ids["a"].public_key_hex, cluster.ids["b"].public_key_hex
    assert a.exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    text = hostile(cluster, route("0.0.0.0/1", pk_b) + route("128.0.0.0/1", pk_b) + route(f"{SP_IP}/32", pk_b)
                   + route("10.98.0.0/24", pk_b) + route("10.97.0.0/24", pk_a))
    text = text.replace('hostname = "bob-h"', 'hostname = "localhost"')
    url = serve(cluster, "takeover.toml", text)
    added = a.cli("add", url)
    assert "plain http" in added.stderr and "warning" in added.stderr, added.stderr
    b.cli("add", url)
    net = wait_state(cluster, a, url, "active")
    assert net["insecure"] is True
    assert "refused: route 0.0.0.0/1" in a.cli("status").stdout
    refused = "\n".join(net["refused"])
    for what in ("route 0.0.0.0/1", "route 128.0.0.0/1", f"route {SP_IP}/32", "forwarding to 10.97.0.0/24",
                 "name 'localhost'"):
        assert what in refused, f"{what} not refused:\n{refused}"
    assert "route 10.98.0.0/24" not in refused
    # the kernel agrees: the internet and the super peer stay on the underlay, the overlay route is there
    for address in ("8.8.8.8", "93.184.216.34", SP_IP):
        assert route_dev(a, address) != "drasyl", address
    wait_until(lambda: route_dev(a, "10.98.0.5") == "drasyl", 15, "the harmless route is installed", cluster.describe)
    assert a.exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0", "a forwards without consent"
    assert a.resolve("localhost") in ("127.0.0.1", "::1")
    # the network itself works
    ping = a.ping(HOSTILE_IPS["b"])
    assert _received(ping) == 3, ping.stdout + cluster.describe()
    a.cli("remove", url)
    b.cli("remove", url)


def test_a_network_on_the_hosts_lan_is_refused_whole(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    default_before = a.exec("ip", "route", "show", "default").stdout
    text = hostile(cluster, "", subnet="192.0.2.0/24", ips={"a": "192.0.2.77", "b": "192.0.2.78"}, suffix="-lan")
    url = serve(cluster, "lan.toml", text)
    a.cli("add", url)
    net = wait_state(cluster, a, url, "refused")
    assert net["refused"][0].startswith("network 192.0.2.0/24 refused: contains 192.0.2.1"), net  # the next hop
    assert "192.0.2.77" not in a.exec("ip", "addr", "show", "drasyl").stdout
    assert a.exec("ip", "route", "show", "default").stdout == default_before
    assert route_dev(a, SP_IP) != "drasyl"
    a.cli("remove", url)


def test_a_later_network_cannot_take_an_ip_or_name_whatever_its_url(cluster: Cluster) -> None:
    """A network whose URL sorts first claims b's overlay IP and name for another key."""
    a = cluster.agents["a"]
    impostor = "ab" * 32
    text = (f'network = "10.77.0.0/24"\n[[node]]\npk = "{cluster.ids["a"].public_key_hex}"\nip = "10.77.0.50"\n'
            f'hostname = "a-x"\ngroups = ["g"]\n[[node]]\npk = "{impostor}"\nip = "{OVERLAY["b"]}"\n'
            f'hostname = "bob"\ngroups = ["g"]\n[[policy]]\nsource_groups = ["g"]\ndestination_groups = ["g"]\n')
    url = serve(cluster, "aaa.toml", text)
    names = hostile(cluster, "", subnet="10.55.0.0/24", ips={"a": "10.55.0.1", "b": "10.55.0.2"}, suffix="-n")
    names = names.replace('hostname = "bob-n"', 'hostname = "bob"')
    url2 = serve(cluster, "aab.toml", names)
    a.cli("add", url)
    a.cli("add", url2)
    wait_state(cluster, a, url, "refused")
    wait_state(cluster, a, url2, "active")
    conflicts = "\n".join(a.status()["conflicts"])
    assert url in conflicts and "10.77.0.0/24" in conflicts, conflicts
    assert url2 in conflicts and "name 'bob'" in conflicts, conflicts
    assert a.resolve("bob") == OVERLAY["b"]
    ping = a.ping(OVERLAY["b"])
    assert _received(ping) == 3, ping.stdout + cluster.describe()
    a.cli("remove", url)
    a.cli("remove", url2)


def test_a_deeply_nested_config_does_not_stop_a_revocation_elsewhere(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    depth = 100_000
    url = serve(cluster, "deep.toml", f'network = "10.44.0.0/24"\nx = {"[" * depth}{"]" * depth}\n')
    refused = a.cli("add", url, check=False)
    assert refused.returncode == 1 and "nested too deeply" in refused.stderr, refused.stderr
    a.cli("add", "--force", url)  # saved anyway: then every refresh meets it
    net = wait_state(cluster, a, url, "error")
    assert "nested too deeply" in net["error"] or "RecursionError" in net["error"], net
    # net1 without its policy: a must stop accepting b's packets
    cluster.write_net("net1", net1(cluster.ids).replace("[[policy]]", "[[ignored]]"))
    try:
        def revoked() -> bool:
            return _received(a.ping(OVERLAY["b"], count=1)) == 0 and "bob" not in "".join(a.our_lines())
        wait_until(revoked, 25, "the revocation in net1 is enforced", cluster.describe)
        before = a.status()["drops"].get("tx_policy_denied", 0)
        a.ping(OVERLAY["b"], count=2)
        assert a.status()["drops"].get("tx_policy_denied", 0) >= before + 2, "a itself must refuse to send"
    finally:
        cluster.write_net("net1", net1(cluster.ids))
        a.cli("remove", url)
    wait_until(lambda: _received(a.ping(OVERLAY["b"], count=1)) == 1, 25, "net1 back", cluster.describe)


def test_packets_over_the_mtu_from_a_peer_are_dropped_and_counted(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    assert _received(b.exec("ping", "-n", "-c", "1", "-W", "2", "-s", "1100", OVERLAY["a"])) == 1
    before = a.status()["drops"].get("rx_oversize", 0)
    big = b.exec("ping", "-n", "-c", "2", "-W", "1", "-s", "1272", "-M", "dont", OVERLAY["a"])  # 1300 > 1200
    assert _received(big) == 0
    assert a.status()["drops"].get("rx_oversize", 0) >= before + 2


def test_a_deleted_tun_device_comes_back_without_spinning(cluster: Cluster) -> None:
    a = cluster.agents["a"]
    mark = a.proc.mark()
    assert a.exec("ip", "link", "del", "drasyl").returncode == 0
    a.proc.wait_for_line(r"TUN device drasyl is back", 15, since=mark)
    assert OVERLAY["a"] in a.exec("ip", "addr", "show", "drasyl").stdout
    wait_until(lambda: _received(a.ping(OVERLAY["b"], count=1)) == 1, 15, "ping after recreate", cluster.describe)
    assert f"via {OVERLAY['b']}" in a.exec("ip", "route", "show", ROUTED).stdout
    assert a.resolve("bob") == OVERLAY["b"]
    assert sum(v for k, v in a.status()["drops"].items() if k.startswith("tun_read_")) < 100


def test_sigterm_restores_ip_forward_and_removes_the_forwarding_table(cluster: Cluster) -> None:
    b = cluster.agents["b"]
    assert b.exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert "drasyl" in b.exec("nft", "list", "tables").stdout
    b.proc.popen.send_signal(signal.SIGTERM)
    assert b.proc.wait(10) == 0, cluster.describe()
    assert b.exec("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    assert "drasyl" not in b.exec("nft", "list", "tables").stdout
    # every refusal was logged once, not at every housekeeping tick
    log = "\n".join(line.text for line in cluster.agents["a"].proc.stdout.lines)
    assert log.count("route 0.0.0.0/1 via 10.66.0.2 refused") == 1, log[-3000:]
