"""IPv6 in the overlay and the embedded resolver, end to end: the lab of ``test_agent_e2e``.

Agents a (``alice``) and b (``bob``) in net1 (10.77.0.0/24, no ``network6``: their IPv6
addresses are derived), first with direct UDP between them blocked on the router (relayed
through the super peer), then unblocked (direct). Then a spoofed IPv6 source, the resolver
(``dig``), and SIGTERM. The last test puts drasyl-rs' example node into a network with agent a:
IPv4 still reaches it and no IPv6 packet ever does.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import drasyl_rs
import pytest
from netns import Lab, require_lab_tools
import tomlkit
from test_agent_e2e import (AGENT_IPS, OVERLAY, RECEIVER, ROUTED, SENDER, Cluster, _identities, _received, net1, network_config,
                            sp_url, wait_until)

pytestmark = pytest.mark.netns

BLOCK = f"""
table inet block_direct {{
    chain forward {{
        type filter hook forward priority 0;
        ip saddr {AGENT_IPS['a']} ip daddr {AGENT_IPS['b']} udp sport != 22527 udp dport != 22527 drop
        ip saddr {AGENT_IPS['b']} ip daddr {AGENT_IPS['a']} udp sport != 22527 udp dport != 22527 drop
        ip saddr {AGENT_IPS['a']} ip daddr {AGENT_IPS['b']} meta l4proto udp drop
        ip saddr {AGENT_IPS['b']} ip daddr {AGENT_IPS['a']} meta l4proto udp drop
    }}
}}
"""
TRANSFER_BYTES = 5 * 1024 * 1024
LAN6, LAN6_GW, LAN6_HOST = "fd99::/64", "fd99::1", "fd99::2"  # a LAN behind b, net1's route dest6


@pytest.fixture(scope="module")
def cluster(ids, tmp_path_factory) -> Iterator[Cluster]:
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("ipv6"), _identities(ids))
        try:
            lab.nft(c.rt, BLOCK)  # relayed first
            # net1's route to b's LAN gets an IPv6 prefix too, and b consents to serve it
            c.write_net("net1", net1(c.ids).replace(f'dest = "{ROUTED}"', f'dest = "{ROUTED}"\ndest6 = "{LAN6}"'))
            b = c.agents["b"]
            doc = tomlkit.parse(b.config.read_text())
            doc["network"][0]["serve_routes"].append(LAN6)
            b.config.write_text(tomlkit.dumps(doc))
            lan = lab.namespace("lan")
            _, lan_if = lab.veth(b.ns, lan)
            lab.ip(b.ns, "addr", "add", f"{LAN6_GW}/64", "dev", _, "nodad")
            lab.ip(lan, "addr", "add", f"{LAN6_HOST}/64", "dev", lan_if, "nodad")
            lab.ip(lan, "-6", "route", "add", "default", "via", LAN6_GW)
            c.lan = lan
            for agent in c.agents.values():
                agent.start()
            yield c
        finally:
            c.close()


def ip6(cluster: Cluster, name: str) -> str:
    agent = cluster.agents[name]
    status = agent.wait_network("net1", "active")
    address = agent.network(status, "net1")["ip6"]
    assert address and address.startswith("fd"), agent.network(status, "net1")
    return address


def peer_row(agent, pk: str) -> dict:
    return next((p for p in agent.status().get("peers", []) if p["public_key"] == pk), {})


def ping6(agent, address: str, count: int = 3, **kw) -> subprocess.CompletedProcess:
    args = [arg for k, v in kw.items() for arg in (f"-{k}", v)]
    return agent.exec("ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-W", "2", *args, address)


def transfer6(cluster: Cluster, src, dst, address: str) -> float:
    receiver = cluster.lab.start(dst.ns, [sys.executable, "-c", RECEIVER, address], f"receiver6-{time.monotonic()}")
    receiver.wait_for_line(r"^listening$", 10)
    started = time.monotonic()
    sent = src.exec(sys.executable, "-c", SENDER, address, str(TRANSFER_BYTES), timeout=90)
    elapsed = time.monotonic() - started
    assert sent.returncode == 0, f"{sent.stderr}\n{cluster.describe()}"
    got = receiver.wait_for_line(r"^received (\d+) ([0-9a-f]{64})$", 30).match
    assert int(got.group(1)) == TRANSFER_BYTES and got.group(2) == sent.stdout.split()[-1]
    return elapsed


def test_ipv6_relayed(cluster: Cluster) -> None:
    """Derived ULA addresses on both TUNs; each learns that the other takes IPv6 (announcements
    through the super peer); ping -6 and a TCP transfer over IPv6, relayed."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    a6, b6 = ip6(cluster, "a"), ip6(cluster, "b")
    assert a6.rsplit(":", 4)[0] == b6.rsplit(":", 4)[0], "one /64 per network"
    assert f"{a6}/64" in a.exec("ip", "-6", "addr", "show", "drasyl").stdout
    assert a.status()["ipv6"]["device"] is True
    b_pk, a_pk = cluster.ids["b"].public_key_hex, cluster.ids["a"].public_key_hex
    wait_until(lambda: peer_row(a, b_pk).get("ipv6") == "yes" and peer_row(b, a_pk).get("ipv6") == "yes", 15,
               "a and b learn that the other takes IPv6", cluster.describe)
    assert peer_row(a, b_pk)["ip6"] == b6
    for src, dst in ((a, b6), (b, a6)):
        ping = ping6(src, dst)
        assert _received(ping) == 3, f"ping -6 {src.name} → {dst}: {ping.stdout}{ping.stderr}\n{cluster.describe()}"
    assert peer_row(a, b_pk)["path"] == "relayed", peer_row(a, b_pk)
    elapsed = transfer6(cluster, a, b, b6)
    print(f"{TRANSFER_BYTES >> 20} MB a → b over IPv6, relayed, in {elapsed:.2f} s")
    assert peer_row(a, b_pk)["path"] == "relayed"


def test_ipv6_direct(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    cluster.lab.exec(cluster.rt, "nft", "delete", "table", "inet", "block_direct")
    b6 = ip6(cluster, "b")
    b_pk = cluster.ids["b"].public_key_hex

    def direct() -> bool:
        ping6(a, b6, count=1)
        return peer_row(a, b_pk).get("path") == "direct"
    wait_until(direct, 20, "a reaches b directly", cluster.describe)
    assert _received(ping6(a, b6)) == 3
    elapsed = transfer6(cluster, a, b, b6)
    print(f"{TRANSFER_BYTES >> 20} MB a → b over IPv6, direct, in {elapsed:.2f} s")
    assert _received(a.ping(OVERLAY["b"])) == 3, "IPv4 next to it"
    pong = a.cli("ping", "-c", "2", "-i", "0.2", b6).stdout
    assert f"pong from bob ({b6}) via direct" in pong, pong
    check = a.cli("netcheck").stdout
    assert f"IPv6 in the overlay: on, {ip6(cluster, 'a')}; 1 of 1 peers take IPv6" in check, check


def test_an_ipv6_route_through_a_gateway(cluster: Cluster) -> None:
    """net1's route has ``dest6``: a gets the kernel route via b's overlay IPv6 address, b
    (which consents in serve_routes) forwards into its LAN and back; ip6 forwarding on b is
    restored at b's exit (test_sigterm_leaves_nothing)."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    b6 = ip6(cluster, "b")
    routes = a.exec("ip", "-6", "route", "show", LAN6).stdout
    assert f"via {b6}" in routes and "metric 4900" in routes, routes
    status = a.status()
    assert {"dest": LAN6, "gateway": b6, "network": "e2e one", "state": "Applied"} in status["routes"]
    assert b.exec("cat", "/proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "1"
    ping = ping6(a, LAN6_HOST)
    assert _received(ping) == 3, f"{ping.stdout}{ping.stderr}\n{cluster.describe()}"
    assert "ip6 daddr @served6 accept" in b.exec("nft", "list", "table", "inet", "drasyl_agent").stdout


def test_a_spoofed_ipv6_source_is_dropped_and_counted(cluster: Cluster) -> None:
    """b's (wrong) view of a network gives b the IPv6 address that a's view gives to a third
    member c: what b sends from it reaches a with a source that is not b's, and a drops it."""
    a, b = cluster.agents["a"], cluster.agents["b"]
    c_pk = "c" * 64
    ips = {"a": "10.80.0.1", "b": "10.80.0.2"}
    policy = '[[policy]]\nsource_groups = ["ALL"]\ndestination_groups = ["ALL"]\n'
    views = {"a": {"a": "fd80::1", "b": "fd80::2", "c": "fd80::3"}, "b": {"a": "fd80::1", "b": "fd80::3", "c": "fd80::2"}}
    for name, view in views.items():
        text = network_config(cluster.ids, "10.80.0.0/24", ips, {"a": "g", "b": "g"}, suffix="3", extra=f'''
[[node]]
pk = "{c_pk}"
ip = "10.80.0.3"
hostname = "carol3"
ip6 = "{view['c']}"

{policy}''')
        text = 'network6 = "fd80::/64"\n' + text.replace('hostname = "alice3"', f'hostname = "alice3"\nip6 = "{view["a"]}"')
        text = text.replace('hostname = "bob3"', f'hostname = "bob3"\nip6 = "{view["b"]}"')
        cluster.write_net(f"net3-{name}", text)
    for agent in (a, b):
        agent.cli("add", cluster.net_url(f"net3-{agent.name}"))
        agent.wait_network(f"net3-{agent.name}", "active", timeout=5)
    assert "fd80::3/64" in b.exec("ip", "-6", "addr", "show", "drasyl").stdout
    before = a.status()["drops"].get("rx_policy_denied", 0)
    spoofed = ping6(b, "fd80::1", I="fd80::3")
    assert _received(spoofed) == 0, spoofed.stdout
    after = a.status()["drops"].get("rx_policy_denied", 0)
    assert after >= before + 3, (before, after, b.status()["drops"], spoofed.stdout + spoofed.stderr)
    for agent in (a, b):
        agent.cli("remove", cluster.net_url(f"net3-{agent.name}"))


def test_names_hosts_lines_and_resolver(cluster: Cluster) -> None:
    a, b = cluster.agents["a"], cluster.agents["b"]
    a6, b6 = ip6(cluster, "a"), ip6(cluster, "b")
    lines = a.our_lines()
    assert len(lines) == 4 and any(line.startswith(b6 + " ") and " bob bob.drasyl.network " in line
                                   for line in lines), lines
    assert a.resolve("bob") in (OVERLAY["b"], b6)
    v6 = a.exec("getent", "ahostsv6", "bob.drasyl.network").stdout
    assert b6 in v6, v6

    def dig(agent, server: str, *query: str) -> str:
        result = agent.exec("dig", f"@{server}", "+time=2", "+tries=1", *query)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    for server in (OVERLAY["a"], a6):
        out = dig(a, server, "bob.drasyl.network", "AAAA")
        assert "status: NOERROR" in out and re.search(rf"bob\.drasyl\.network\.\s+60\s+IN\s+AAAA\s+{b6}", out), out
        assert re.search(r"IN\s+A\s+10\.77\.0\.2", dig(a, server, "BOB", "A"))
        assert "status: REFUSED" in dig(a, server, "example.com")
        assert "status: NXDOMAIN" in dig(a, server, "nobody.drasyl.network")
    assert "status: REFUSED" in dig(b, OVERLAY["a"], "bob.drasyl.network", "AAAA"), "only this host may ask"
    names = a.status()["names"]
    assert names["mode"] == "hosts+resolver" and names["resolver"] == [f"{OVERLAY['a']}:53", f"[{a6}]:53"], names
    assert names["resolved"] == "not running", names
    assert names["queries"]["refused"] >= 3 and names["queries"]["answered"] >= 4, names
    text = a.cli("status").stdout
    assert a6 in text and b6 in text and "hosts+resolver" in text, text


def test_sigterm_leaves_nothing(cluster: Cluster) -> None:
    for agent in cluster.agents.values():
        agent.proc.popen.send_signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 0, cluster.describe()
        assert not agent.has_device() and agent.our_lines() == []
        sockets = agent.exec("ss", "-lnup").stdout
        assert ":53 " not in sockets, sockets
        assert "4900" not in agent.exec("ip", "-6", "route", "show").stdout
        assert agent.exec("cat", "/proc/sys/net/ipv6/conf/all/forwarding").stdout.strip() == "0"
        assert "drasyl" not in agent.exec("nft", "list", "tables").stdout


# --- a drasyl-rs node in the network ----------------------------------------------------------


@pytest.mark.interop
def test_drasyl_rs_member_gets_ipv4_and_never_ipv6(ids, tmp_path) -> None:
    """drasyl-rs' example node as member ``rs`` (b's identity) of net1 next to agent a: a's IPv4
    packets reach it; it never announces, so a never sends it IPv6 (counted instead); the only
    packets it receives are IPv4 (first byte 0x45, 'E')."""
    binary_dir = drasyl_rs.binary_dir()
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path, _identities(ids))
        try:
            a = c.agents["a"]
            a.start()
            rs_id = c.ids["b"]
            id_file = tmp_path / "rs.identity"
            rs_id.save(id_file)
            rs = drasyl_rs.start_node(lab, c.agents["b"].ns, binary_dir, str(id_file), sp_url("198.51.100.10", c.ids["sp"]),
                                      AGENT_IPS["b"], "rs-node")
            status = a.wait_network("net1", "active")
            peer = next(p for p in status["peers"] if p["public_key"] == rs_id.public_key_hex)
            rs6 = peer["ip6"]
            time.sleep(3)  # announcements to it go out (and are dropped there)
            a.ping(OVERLAY["b"], count=3)
            rs.wait_for_line(r"\(84 bytes\)$", 15)  # a ping (its binary text spans lines)
            before = a.status()["drops"].get("tx_ipv6_not_capable", 0)
            assert _received(ping6(a, rs6)) == 0
            status = a.status()
            assert status["drops"].get("tx_ipv6_not_capable", 0) >= before + 3, status["drops"]
            assert next(p for p in status["peers"] if p["public_key"] == rs_id.public_key_hex)["ipv6"] == "not yet"
            time.sleep(1)
            a_pk = c.ids["a"].public_key_hex
            firsts = [line.text[len(a_pk) + 2:] for line in rs.stdout.lines if line.text.startswith(a_pk + ": ")]
            assert len(firsts) >= 4, "the pings and at least one announcement"
            assert all(text.startswith("E") for text in firsts), f"not IPv4: {firsts}"
            assert any("drasyl-agent ipv6" in line.text for line in rs.stdout.lines), "announcements arrive"
        finally:
            c.close()
