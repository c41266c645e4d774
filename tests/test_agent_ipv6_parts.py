"""IPv6 in the overlay without namespaces: addresses from network configs, the announcement
packet and the capability schedule, the IPv6 header helpers, hosts lines, the resolver."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from drasyl.agent import ipv6
from drasyl.agent.netconfig import NetworkConfigError, derived_ip6, derived_network6, parse_network_config
from drasyl.agent.resolver import Names
from drasyl.messages import MAGIC_BYTES
from drasyl.tun.hosts import render
from drasyl.tun.packet import is_drasyl_control, is_drasyl_control6, is_ipv4, is_ipv6, src_dst6

PK1, PK2, PK3 = "11" * 32, "22" * 32, "33" * 32


def config(*nodes: str, top: str = "") -> str:
    text = f'{top}network = "10.1.0.0/24"\n'
    for i, extra in enumerate(nodes, 1):
        text += f'[[node]]\npk = "{(PK1, PK2, PK3)[i - 1]}"\nip = "10.1.0.{i}"\nhostname = "n{i}"\n{extra}\n'
    return text


# --- addresses --------------------------------------------------------------------------------


def test_derived_prefix_and_addresses_are_documented_hashes() -> None:
    cfg = parse_network_config(config("", ""), "x")
    digest = hashlib.sha256(b"drasyl network6\n10.1.0.0/24").digest()
    assert cfg.subnet6 == IPv6Network((b"\xfd" + digest[:5] + b"\0" * 10, 64))
    assert cfg.subnet6 == derived_network6(IPv4Network("10.1.0.0/24"))
    iid = hashlib.sha256(b"drasyl ip6\n" + bytes.fromhex(PK1)).digest()[:8]
    assert cfg.nodes[0].ip6 == IPv6Address(cfg.subnet6.network_address.packed[:8] + iid)
    # every member computes the same: the name does not matter, the IPv4 network does
    renamed = parse_network_config('name = "other"\n' + config("", ""), "y")
    assert [n.ip6 for n in renamed.nodes] == [n.ip6 for n in cfg.nodes]
    moved = parse_network_config(config("", "").replace("10.1.0.0/24", "10.2.0.0/24").replace("10.1.", "10.2."), "z")
    assert moved.subnet6 != cfg.subnet6


def test_network6_and_ip6_are_used_and_the_rest_derived() -> None:
    cfg = parse_network_config(config('ip6 = "fd00:1::a"', "", top='network6 = "fd00:1::/64"\n'), "x")
    assert cfg.subnet6 == IPv6Network("fd00:1::/64") and cfg.nodes[0].ip6 == IPv6Address("fd00:1::a")
    assert cfg.nodes[1].ip6 == derived_ip6(cfg.subnet6, bytes.fromhex(PK2)) and cfg.nodes[1].ip6 in cfg.subnet6


@pytest.mark.parametrize("top, nodes, message", [
    ("", ('ip6 = "fd00::1"',), "[[node]] #1: 'ip6' needs 'network6' at the top level"),
    ('network6 = "2001:db8::/64"\n', ("",), "'network6' must be a unique local prefix (inside fc00::/7)"),
    ('network6 = "fd00::/32"\n', ("",), "from /48 to /120"),
    ('network6 = "fd00::1/64"\n', ("",), "has host bits set (did you mean fd00::/64?)"),
    ('network6 = "fd00::"\n', ("",), "'network6' must be an IPv6 network like"),
    ('network6 = "fd00::/64"\n', ('ip6 = "fd01::1"',), "[[node]] #1: IPv6 address fd01::1 is not in network6 fd00::/64"),
    ('network6 = "fd00::/64"\n', ('ip6 = "10.1.0.1"',), "[[node]] #1: 'ip6' is not an IPv6 address"),
    ('network6 = "fd00::/64"\n', ('ip6 = "fd00::"',), "is the network address of fd00::/64"),
    ('network6 = "fd00::/64"\n', ('ip6 = "fd00::5"', 'ip6 = "fd00::5"'),
     "[[node]] #2: duplicate IPv6 address: fd00::5 (also [[node]] #1)"),
])
def test_ipv6_errors_name_the_entry(top, nodes, message) -> None:
    with pytest.raises(NetworkConfigError) as caught:
        parse_network_config(config(*nodes, top=top), "src")
    assert message in str(caught.value) and str(caught.value).startswith("network config src: ")


def test_a_derived_collision_asks_for_ip6() -> None:
    # /120 leaves 8 host bits: find two keys that derive the same address
    net = IPv6Network("fd00::/120")
    seen: dict[IPv6Address, str] = {}
    for i in range(4096):
        pk = hashlib.sha256(str(i).encode()).hexdigest()
        address = derived_ip6(net, bytes.fromhex(pk))
        if address in seen:
            break
        seen[address] = pk
    text = (f'network6 = "fd00::/120"\nnetwork = "10.1.0.0/24"\n[[node]]\npk = "{seen[address]}"\nip = "10.1.0.1"\n'
            f'hostname = "a"\n[[node]]\npk = "{pk}"\nip = "10.1.0.2"\nhostname = "b"\n')
    with pytest.raises(NetworkConfigError, match=r"derived IPv6 address collides: .* set 'ip6' for one of them"):
        parse_network_config(text, "src")


# --- announcements and capability -----------------------------------------------------------------


def test_an_announcement_is_ipv4_udp_that_every_agent_treats_as_drasyl_control() -> None:
    pkt = ipv6.announcement(int(IPv4Address("10.1.0.1")), int(IPv4Address("10.1.0.2")), ask=True)
    assert is_ipv4(pkt) and not is_ipv6(pkt) and pkt[0] == 0x45 and pkt[9] == 17
    assert is_drasyl_control(pkt), "drasyl-rs drops it before its TUN (agent.md §4 RX step 2)"
    assert pkt[12:20] == IPv4Address("10.1.0.1").packed + IPv4Address("10.1.0.2").packed
    total = sum(struct.unpack("!10H", pkt[:20]))
    assert (total & 0xFFFF) + (total >> 16) == 0xFFFF, "the header checksum"
    assert struct.unpack_from("!HHH", pkt, 20) == (22527, 22527, len(pkt) - 20)
    assert pkt[28:32] == MAGIC_BYTES
    assert ipv6.announcement_flags(pkt) == ipv6.ASK
    assert ipv6.announcement_flags(ipv6.announcement(1, 2, ask=False)) == 0
    other = bytearray(pkt)
    other[-2] ^= 1
    assert ipv6.announcement_flags(other) is None
    assert ipv6.announcement_flags(pkt + b"x") is None


def test_capabilities_back_off_and_are_forgotten() -> None:
    caps = ipv6.Capabilities()
    a, b = b"a" * 32, b"b" * 32
    caps.keep([a, b])
    assert sorted(caps.due(100.0)) == [a, b] and caps.due(101.0) == []
    assert sorted(caps.due(102.0)) == [a, b]  # 2 s, then 4 s, 8 s, …
    assert caps.due(105.0) == [] and sorted(caps.due(106.0)) == [a, b]
    caps.again(a)
    assert caps.due(106.5) == [a]
    assert caps.learned(b) and not caps.learned(b)
    times = [t for t in range(107, 2000) if caps.due(float(t))]
    assert b not in caps._due and len(times) < 16, "capable peers get no more announcements; back-off caps"
    assert max(b - a for a, b in zip(times, times[1:])) <= ipv6.MAX_S
    assert caps.should_answer(a, 10.0) and not caps.should_answer(a, 10.5) and caps.should_answer(a, 11.0)
    caps.keep([a])
    assert caps.capable == set()


def test_ipv6_header_helpers() -> None:
    src, dst = IPv6Address("fd00::1"), IPv6Address("fd00::2:3")
    pkt = struct.pack("!IHBB16s16s", 6 << 28, 12, 17, 64, src.packed, dst.packed) + struct.pack("!HHHH", 1, 2, 12, 0)
    assert is_ipv6(pkt) and not is_ipv4(pkt) and not is_ipv6(pkt[:39])
    assert src_dst6(pkt) == (int(src), int(dst))
    assert not is_drasyl_control6(pkt + b"abcd")
    assert is_drasyl_control6(pkt + MAGIC_BYTES)


def test_hosts_lines_carry_both_addresses() -> None:
    text = render("127.0.0.1 localhost\n", [(IPv6Address("fd00::2"), "bob"), (IPv4Address("10.1.0.2"), "bob")])
    assert text.splitlines() == [
        "127.0.0.1 localhost",
        "10.1.0.2        bob bob.drasyl.network   # managed by drasyl",
        "fd00::2         bob bob.drasyl.network   # managed by drasyl",
    ]


# --- the resolver --------------------------------------------------------------------------------


def ask(names: Names, qname: str, qtype: str = "A", source: str = "10.1.0.1") -> DNSRecord:
    return DNSRecord.parse(names.answer(DNSRecord.question(qname, qtype).pack(), source))


@pytest.fixture
def names() -> Names:
    n = Names(port=0)
    entries = [(IPv4Address("10.1.0.2"), "Bob"), (IPv6Address("fd00::2"), "Bob"), (IPv4Address("10.1.0.1"), "alice")]
    asyncio.run(n.apply(entries, [], "drasyl"))
    n._local = frozenset({"10.1.0.1", "fd00::1"})
    return n


def test_resolver_answers_a_and_aaaa_for_both_forms(names) -> None:
    for qname in ("bob", "BOB.drasyl.network", "bob.drasyl.network."):
        reply = ask(names, qname, "AAAA")
        assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
        assert [(QTYPE[r.rtype], str(r.rdata), r.ttl) for r in reply.rr] == [("AAAA", "fd00::2", 60)]
        assert [str(r.rdata) for r in ask(names, qname, "A").rr] == ["10.1.0.2"]
    assert ask(names, "alice", "AAAA").rr == [] and ask(names, "alice", "AAAA").header.rcode == RCODE.NOERROR
    assert ask(names, "bob", "MX").rr == []
    assert ask(names, "bob", source="fd00::1").rr, "IPv6 sources of this host too"
    assert ask(names, "bob", source="127.0.0.1").rr


def test_resolver_refuses_everything_else(names) -> None:
    assert ask(names, "nobody.drasyl.network").header.rcode == RCODE.NXDOMAIN
    assert ask(names, "a.bob.drasyl.network").header.rcode == RCODE.NXDOMAIN
    for qname in ("example.com", "nobody", "bob.example.com"):
        assert ask(names, qname).header.rcode == RCODE.REFUSED, qname
    assert ask(names, "bob", source="10.1.0.9").header.rcode == RCODE.REFUSED, "a peer may not ask"
    assert names.answer(b"\x00garbage", "10.1.0.1") is None
    response = DNSRecord.question("bob", "A").reply().pack()
    assert names.answer(response, "10.1.0.1") is None, "responses are not answered"
    assert names.stats["malformed"] == 2 and names.stats["refused"] >= 4


def test_resolver_rate_limits_per_source(names) -> None:
    query = DNSRecord.question("bob", "A").pack()
    answered = sum(names.answer(query, "10.1.0.1") is not None for _ in range(300))
    assert 100 <= answered < 120 and names.stats["rate_limited"] == 300 - answered
    assert names.answer(query, "127.0.0.1") is not None, "another source has its own budget"


def test_resolver_listens_on_the_given_addresses_only() -> None:
    async def run() -> tuple[bytes, dict]:
        n = Names(port=0)
        problems = await n.apply([(IPv4Address("10.1.0.2"), "bob")], [IPv4Address("127.0.0.1")], "drasyl")
        assert problems == [], problems
        (transport,) = n._servers.values()
        port = transport.get_extra_info("sockname")[1]
        n._local = frozenset({"127.0.0.1"})
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", port))
            await loop.sock_sendall(s, DNSRecord.question("bob.drasyl.network", "A").pack())
            data = await asyncio.wait_for(loop.sock_recv(s, 512), 2)
        status = n.status()
        await n.close()
        assert n._servers == {}
        return data, status
    data, status = asyncio.run(run())
    assert [str(r.rdata) for r in DNSRecord.parse(data).rr] == ["10.1.0.2"]
    assert status["mode"] == "hosts+resolver" and status["resolver"] == ["127.0.0.1:0"]


# --- IPv6 routes (dest6) -------------------------------------------------------------------------

ROUTE6 = f'[[route]]\ndest = "192.168.50.0/24"\ndest6 = "fd50::/64"\ngw = "{PK2}"\n'
ALL = '[[policy]]\nsource_groups = ["ALL"]\ndestination_groups = ["ALL"]\n'


def test_dest6_parses_and_is_checked() -> None:
    cfg = parse_network_config(config("", "", "") + ROUTE6, "x")
    assert cfg.routes[0].dest6 == IPv6Network("fd50::/64")
    for bad, message in ((ROUTE6.replace("fd50::/64", "fd50::1/64"), "is a host address (did you mean fd50::/64?)"),
                         (ROUTE6.replace("fd50::/64", "fd50::"), "'dest6' must be an IPv6 network"),
                         (ROUTE6 + ROUTE6.replace("192.168.50.0/24", "192.168.51.0/24"),
                          "[[route]] #2: duplicate route destination: fd50::/64 (also [[route]] #1)")):
        with pytest.raises(NetworkConfigError) as caught:
            parse_network_config(config("", "", "") + bad, "x")
        assert message in str(caught.value)


def test_dest6_gives_routes_rules_and_gateway_rules() -> None:
    from drasyl.agent.policy import PolicyTables, desired_state
    cfg = parse_network_config(config("", "", "") + ROUTE6 + ALL, "x")
    ip6 = {n.pk.hex(): n.ip6 for n in cfg.nodes}
    me = desired_state(cfg, bytes.fromhex(PK1))
    assert [(str(r.dest), r.gw) for r in me.routes6] == [("fd50::/64", ip6[PK2])] and me.served6 == ()
    tables = PolicyTables({"x": me})
    lan_host = int(IPv6Address("fd50::7"))
    assert tables.egress6(int(ip6[PK1]), lan_host) == bytes.fromhex(PK2)
    assert tables.ingress6_ok(bytes.fromhex(PK2), lan_host, int(ip6[PK1]))
    assert not tables.ingress6_ok(bytes.fromhex(PK3), lan_host, int(ip6[PK1])), "only the gateway speaks for the LAN"
    gw = desired_state(cfg, bytes.fromhex(PK2))
    assert gw.routes6 == () and gw.served6 == (IPv6Network("fd50::/64"),)
    gw_tables = PolicyTables({"x": gw})
    assert gw_tables.egress6(lan_host, int(ip6[PK1])) == bytes.fromhex(PK1)
    assert gw_tables.ingress6_ok(bytes.fromhex(PK3), int(ip6[PK3]), lan_host)


def test_dest6_needs_consent_like_dest() -> None:
    from drasyl.agent.config import Consent
    from drasyl.agent.consent import HostFacts, Request, decide
    from drasyl.agent.policy import desired_state
    cfg = parse_network_config(config("", "", "") + ROUTE6 + ALL, "x")
    mine = Request("k", "k", Consent(), desired_state(cfg, bytes.fromhex(PK1)), cfg)
    assert decide([mine], HostFacts()).states["k"].routes6 == mine.state.routes6
    lan = HostFacts(routes6=(IPv6Network("fd50::/48"),))
    decision = decide([mine], lan)
    assert decision.states["k"].routes6 == () and "set accept_routes = true" in decision.refused["k"][0]
    assert not any(r.dest == IPv6Network("fd50::/64") for r in decision.states["k"].access_rules6)
    accepting = Request("k", "k", Consent(accept_routes=True), mine.state, cfg)
    assert decide([accepting], lan).states["k"].routes6 == mine.state.routes6
    covered = HostFacts(protected6=frozenset({IPv6Address("fd50::10")}))
    assert "must stay on the underlay" in decide([accepting], covered).refused["k"][0]
    gw_state = desired_state(cfg, bytes.fromhex(PK2))
    refused = decide([Request("k", "k", Consent(), gw_state, cfg)], HostFacts())
    assert refused.states["k"].served6 == () and "add it to serve_routes" in refused.refused["k"][0]
    served = decide([Request("k", "k", Consent(serve_routes=(IPv6Network("fd50::/48"),)), gw_state, cfg)], HostFacts())
    assert served.states["k"].served6 == (IPv6Network("fd50::/64"),)
    assert not any("fd50" in line for line in served.refused["k"]), "the IPv4 dest is not served: refused alone"
