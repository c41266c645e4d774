"""Local desired state (agent.md §3 "Semantics") and the per-packet policy tables (§4)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from drasyl.agent.netconfig import NetworkConfigError, parse_network_config
from drasyl.agent.policy import IN, OUT, AccessRule, KernelRoute, LocalState, PolicyTables, allowed, desired_state

from test_agent_netconfig import EXAMPLE, PK1, PK2, PK3, SOURCE, doc, node, route

ALICE, FILESERVER, GW = (bytes.fromhex(pk) for pk in (PK1, PK2, PK3))
LAN = IPv4Network("192.168.50.0/24")


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def ip(text: str) -> int:
    return int(IPv4Address(text))


def rule(direction: str, source: str, dest: str, pk: bytes, allow: bool = True) -> AccessRule:
    return AccessRule(direction, net(source), net(dest), pk, allow)


def hosts(*pairs: tuple[str, str]) -> tuple[tuple[IPv4Address, str], ...]:
    return tuple((IPv4Address(a), name) for a, name in pairs)


@pytest.fixture(scope="module")
def example():
    return parse_network_config(EXAMPLE, SOURCE)


# --- §3 worked example, exactly -----------------------------------------------------------

def test_worked_example_laptop_alice(example):
    assert v4_part(desired_state(example, ALICE)) == LocalState(
        subnet=net("10.1.0.0/24"),
        ip=IPv4Address("10.1.0.1"),
        access_rules=(
            rule(OUT, "10.1.0.1/32", "10.1.0.2/32", FILESERVER),
            rule(OUT, "10.1.0.1/32", "10.1.0.10/32", GW),
            rule(OUT, "10.1.0.1/32", "192.168.50.0/24", GW),
            rule(IN, "10.1.0.2/32", "10.1.0.1/32", FILESERVER),
            rule(IN, "10.1.0.10/32", "10.1.0.1/32", GW),
            rule(IN, "192.168.50.0/24", "10.1.0.1/32", GW),
        ),
        routes=(KernelRoute(LAN, IPv4Address("10.1.0.10")),),
        served=(),
        hostnames=hosts(("10.1.0.1", "laptop-alice"), ("10.1.0.2", "fileserver"), ("10.1.0.10", "office-gw")),
    )


def v4_part(state: LocalState) -> LocalState:
    """The state without its IPv6 part (checked in test_ipv6_mirrors_the_node_rules)."""
    return replace(state, subnet6=None, ip6=None, access_rules6=(), hostnames6=())


def test_ipv6_mirrors_the_node_rules(example):
    """Every node has a derived IPv6 address; the node-to-node rules are mirrored for it, the
    routes are not (IPv4 only), and the names carry both addresses."""
    state = desired_state(example, FILESERVER)
    ip6 = {n.pk: n.ip6 for n in example.nodes}
    assert state.subnet6 == example.subnet6 and state.subnet6.prefixlen == 64
    assert state.subnet6.network_address.packed[0] == 0xFD and state.ip6 == ip6[FILESERVER]
    mine = IPv6Network((ip6[FILESERVER], 128))
    by_pk = {r.pk: r.allow for r in state.access_rules6 if r.direction == OUT and r.source == mine}
    assert by_pk == {ALICE: True, GW: False}
    assert {(h[1]) for h in state.hostnames6} == {"laptop-alice", "fileserver"}
    tables = PolicyTables({"net": state})
    alice6, me6, gw6 = (int(ip6[k]) for k in (ALICE, FILESERVER, GW))
    assert tables.egress6(me6, alice6) == ALICE and tables.egress6(me6, gw6) is None
    assert tables.ingress6_ok(ALICE, alice6, me6)
    assert not tables.ingress6_ok(GW, alice6, me6), "a peer spoofing another member's IPv6 source"
    assert not tables.ingress6_ok(GW, gw6, me6), "no policy between servers and gateways"
    assert tables.peers6 == {ALICE}


def test_worked_example_fileserver(example):
    assert v4_part(desired_state(example, FILESERVER)) == LocalState(
        subnet=net("10.1.0.0/24"),
        ip=IPv4Address("10.1.0.2"),
        access_rules=(
            rule(OUT, "10.1.0.2/32", "10.1.0.1/32", ALICE),
            rule(OUT, "10.1.0.2/32", "10.1.0.10/32", GW, allow=False),  # no policy servers<->gateways
            rule(OUT, "10.1.0.2/32", "192.168.50.0/24", GW, allow=False),  # route is for staff only
            rule(IN, "10.1.0.1/32", "10.1.0.2/32", ALICE),
            rule(IN, "10.1.0.10/32", "10.1.0.2/32", GW, allow=False),
            rule(IN, "192.168.50.0/24", "10.1.0.2/32", GW, allow=False),
        ),
        routes=(),
        served=(),
        hostnames=hosts(("10.1.0.1", "laptop-alice"), ("10.1.0.2", "fileserver")),
    )


def test_worked_example_office_gw(example):
    assert v4_part(desired_state(example, GW)) == LocalState(
        subnet=net("10.1.0.0/24"),
        ip=IPv4Address("10.1.0.10"),
        access_rules=(
            rule(OUT, "10.1.0.10/32", "10.1.0.1/32", ALICE),
            rule(OUT, "10.1.0.10/32", "10.1.0.2/32", FILESERVER, allow=False),
            rule(OUT, "192.168.50.0/24", "10.1.0.1/32", ALICE),
            rule(OUT, "192.168.50.0/24", "10.1.0.2/32", FILESERVER, allow=False),
            rule(IN, "10.1.0.1/32", "10.1.0.10/32", ALICE),
            rule(IN, "10.1.0.1/32", "192.168.50.0/24", ALICE),
            rule(IN, "10.1.0.2/32", "10.1.0.10/32", FILESERVER, allow=False),
            rule(IN, "10.1.0.2/32", "192.168.50.0/24", FILESERVER, allow=False),
        ),
        routes=(),
        served=(LAN,),
        hostnames=hosts(("10.1.0.1", "laptop-alice"), ("10.1.0.10", "office-gw")),
    )


def test_access_rule_shows_its_action(example):
    first = desired_state(example, FILESERVER).access_rules[1]
    assert (first.action, str(first)) == ("DENY", f"OUT 10.1.0.2/32 -> 10.1.0.10/32 via {PK3} DENY")


def test_not_a_member_has_no_state(example):
    assert desired_state(example, b"\x09" * 32) is None


# --- policy semantics ----------------------------------------------------------------------

def three_nodes(policies: str, groups=('["a"]', '["b"]', "[]")) -> str:
    return doc(node(PK1, "10.1.0.1", "n1", f"groups = {groups[0]}"),
               node(PK2, "10.1.0.2", "n2", f"groups = {groups[1]}"),
               node(PK3, "10.1.0.3", "n3", f"groups = {groups[2]}"), policies)


def policy(src: str, dst: str) -> str:
    return f"[[policy]]\nsource_groups = {src}\ndestination_groups = {dst}\n"


def test_policies_are_undirected():
    cfg = parse_network_config(three_nodes(policy('["a"]', '["b"]')), SOURCE)
    assert allowed(cfg, ALICE, FILESERVER) and allowed(cfg, FILESERVER, ALICE)
    assert not allowed(cfg, ALICE, GW) and not allowed(cfg, GW, FILESERVER)


def test_no_policies_deny_everything_but_self():
    cfg = parse_network_config(three_nodes(""), SOURCE)
    assert not allowed(cfg, ALICE, FILESERVER)
    assert allowed(cfg, ALICE, ALICE)
    assert desired_state(cfg, ALICE).hostnames == hosts(("10.1.0.1", "n1"))


def test_all_matches_nodes_without_groups():
    cfg = parse_network_config(three_nodes(policy('["ALL"]', '["a"]')), SOURCE)
    assert allowed(cfg, GW, ALICE) and allowed(cfg, FILESERVER, ALICE)
    assert not allowed(cfg, GW, FILESERVER)


def test_unknown_nodes_are_never_allowed():
    cfg = parse_network_config(three_nodes(policy('["ALL"]', '["ALL"]')), SOURCE)
    assert not allowed(cfg, ALICE, b"\x09" * 32)


def test_route_without_groups_is_for_everyone_even_when_gateway_is_denied():
    text = three_nodes("", groups=("[]", "[]", "[]")) + route(dest="172.16.0.0/12", gw=PK3)
    state = desired_state(parse_network_config(text, SOURCE), ALICE)
    assert KernelRoute(net("172.16.0.0/12"), IPv4Address("10.1.0.3")) in state.routes
    assert rule(OUT, "10.1.0.1/32", "172.16.0.0/12", GW) in state.access_rules
    assert rule(OUT, "10.1.0.1/32", "10.1.0.3/32", GW, allow=False) in state.access_rules


def test_state_is_a_value_independent_of_document_order():
    a = desired_state(parse_network_config(EXAMPLE, SOURCE), ALICE)
    blocks = EXAMPLE.split("[[")
    reordered = blocks[0] + "[[" + "[[".join(reversed(blocks[1:]))
    b = desired_state(parse_network_config(reordered, "elsewhere"), ALICE)
    assert a == b and hash(a) == hash(b)
    renamed = desired_state(parse_network_config(EXAMPLE.replace('"fileserver"', '"nas"'), SOURCE), ALICE)
    assert renamed != a and renamed.access_rules == a.access_rules


def test_duplicate_rule_is_an_error_for_that_network_not_a_crash():
    # a route to fileserver's /32 via office-gw: alice gets OUT 10.1.0.1/32 -> 10.1.0.2/32 twice
    text = EXAMPLE + route(dest="10.1.0.2/32", gw=PK3)
    cfg = parse_network_config(text, SOURCE)
    with pytest.raises(NetworkConfigError) as info:
        desired_state(cfg, ALICE)
    assert str(info.value) == (f"network config {SOURCE}: duplicate route: OUT 10.1.0.1/32 -> 10.1.0.2/32 "
                               f"comes from node 'fileserver' and from route 10.1.0.2/32")
    # the other members are not affected: fileserver itself and the gateway still get a state
    assert desired_state(cfg, FILESERVER).ip == IPv4Address("10.1.0.2")
    assert LAN in desired_state(cfg, GW).served


# --- per-packet tables ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tables(example):
    return {name: PolicyTables({SOURCE: desired_state(example, pk)})
            for name, pk in (("alice", ALICE), ("fileserver", FILESERVER), ("gw", GW))}


def test_egress_sends_allowed_packets_to_the_right_peer(tables):
    alice = tables["alice"]
    assert alice.egress(ip("10.1.0.1"), ip("10.1.0.2")) == FILESERVER
    assert alice.egress(ip("10.1.0.1"), ip("10.1.0.10")) == GW
    assert alice.egress(ip("10.1.0.1"), ip("192.168.50.77")) == GW  # routed subnet
    assert alice.peers == {FILESERVER, GW}
    assert alice.conflicts == ()


def test_egress_drops_what_no_allow_rule_covers(tables):
    alice, fileserver = tables["alice"], tables["fileserver"]
    assert alice.egress(ip("10.1.0.1"), ip("10.1.0.99")) is None  # no such node
    assert alice.egress(ip("10.1.0.1"), ip("8.8.8.8")) is None
    assert alice.egress(ip("10.1.0.5"), ip("10.1.0.2")) is None  # not our source address
    assert fileserver.egress(ip("10.1.0.2"), ip("10.1.0.10")) is None  # DENY is not enforced as allow
    assert fileserver.egress(ip("10.1.0.2"), ip("192.168.50.77")) is None
    assert fileserver.peers == {ALICE}


def test_gateway_forwards_lan_replies_only_to_route_users(tables):
    gw = tables["gw"]
    assert gw.egress(ip("192.168.50.77"), ip("10.1.0.1")) == ALICE
    assert gw.egress(ip("10.1.0.10"), ip("10.1.0.1")) == ALICE
    assert gw.egress(ip("192.168.50.77"), ip("10.1.0.2")) is None
    assert gw.egress(ip("192.168.51.1"), ip("10.1.0.1")) is None  # not the routed LAN


def test_ingress_accepts_only_the_expected_sender(tables):
    alice = tables["alice"]
    assert alice.ingress_ok(FILESERVER, ip("10.1.0.2"), ip("10.1.0.1"))
    assert alice.ingress_ok(GW, ip("192.168.50.77"), ip("10.1.0.1"))
    assert alice.ingress_ok(memoryview(GW), ip("10.1.0.10"), ip("10.1.0.1"))


def test_ingress_anti_spoofing(tables):
    alice, gw = tables["alice"], tables["gw"]
    assert not alice.ingress_ok(GW, ip("10.1.0.2"), ip("10.1.0.1"))  # gw claims fileserver's IP
    assert not alice.ingress_ok(FILESERVER, ip("192.168.50.77"), ip("10.1.0.1"))  # only gw may route LAN
    assert not alice.ingress_ok(FILESERVER, ip("10.1.0.2"), ip("10.1.0.3"))  # not addressed to us
    assert not alice.ingress_ok(FILESERVER, ip("10.1.0.77"), ip("10.1.0.1"))  # unknown source
    assert gw.ingress_ok(ALICE, ip("10.1.0.1"), ip("192.168.50.77"))  # alice into the LAN
    assert not gw.ingress_ok(FILESERVER, ip("10.1.0.2"), ip("192.168.50.77"))  # route is staff only
    assert not gw.ingress_ok(FILESERVER, ip("10.1.0.2"), ip("10.1.0.10"))  # policy denies


def test_host_pairs_answer_as_egress_and_ingress(tables):
    """The native data path's snapshot: every /32 × /32 entry gives the lookup's answer, and the
    routed subnets (which only the lookups answer) are not in it."""
    gw = tables["gw"]
    tx, rx = gw.host_pairs()
    assert tx and rx
    for dst, src, pk in tx:
        assert gw.egress(src, dst) == pk
    for src, dst, pk in rx:
        assert gw.ingress_ok(pk, src, dst)
    assert (ip("10.1.0.1"), ip("192.168.50.77"), ALICE) not in tx  # routed: left to egress()
    assert all(src != ip("10.1.0.1") or dst != ip("192.168.50.77") for src, dst, _ in rx)
    assert PolicyTables().host_pairs() == ([], [])


def test_empty_tables_drop_everything():
    empty = PolicyTables()
    assert empty.egress(ip("10.1.0.1"), ip("10.1.0.2")) is None
    assert not empty.ingress_ok(ALICE, ip("10.1.0.2"), ip("10.1.0.1"))
    assert empty.peers == frozenset()


def state(ip_text: str, subnet: str, *rules: AccessRule) -> LocalState:
    return LocalState(net(subnet), IPv4Address(ip_text), tuple(rules), (), (), ())


G1, G2, G3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_longest_prefix_match_of_destination():
    me = "100.64.0.1/32"
    tables = PolicyTables({"n": state("100.64.0.1", "100.64.0.0/24",
                                      rule(OUT, me, "10.0.0.0/8", G1), rule(OUT, me, "10.20.0.0/16", G2),
                                      rule(OUT, me, "0.0.0.0/0", G3), rule(OUT, me, "10.20.30.40/32", G3))})
    src = ip("100.64.0.1")
    assert tables.egress(src, ip("10.20.1.1")) == G2
    assert tables.egress(src, ip("10.30.1.1")) == G1
    assert tables.egress(src, ip("10.20.30.40")) == G3
    assert tables.egress(src, ip("10.20.30.41")) == G2
    assert tables.egress(src, ip("8.8.8.8")) == G3
    assert tables.egress(src, 0xFFFFFFFF) == G3


def test_longest_prefix_match_of_source_within_the_destination():
    tables = PolicyTables({"n": state("100.64.0.1", "100.64.0.0/24",
                                      rule(OUT, "192.168.0.0/16", "100.64.0.2/32", G1),
                                      rule(OUT, "192.168.50.0/24", "100.64.0.2/32", G2),
                                      rule(IN, "100.64.0.2/32", "192.168.0.0/16", G1),
                                      rule(IN, "100.64.0.2/32", "192.168.50.0/24", G2))})
    assert tables.egress(ip("192.168.50.9"), ip("100.64.0.2")) == G2
    assert tables.egress(ip("192.168.7.9"), ip("100.64.0.2")) == G1
    assert tables.ingress_ok(G2, ip("100.64.0.2"), ip("192.168.50.9"))
    assert tables.ingress_ok(G1, ip("100.64.0.2"), ip("192.168.7.9"))
    assert not tables.ingress_ok(G1, ip("100.64.0.2"), ip("192.168.50.9"))


def test_only_the_longest_destination_entry_is_consulted():
    # as drasyl-rs: the /32 entry has no rule for this source, and the /24 one is not tried
    tables = PolicyTables({"n": state("100.64.0.1", "100.64.0.0/24",
                                      rule(OUT, "100.64.0.1/32", "100.64.0.0/24", G1),
                                      rule(OUT, "192.168.50.0/24", "100.64.0.2/32", G2))})
    assert tables.egress(ip("100.64.0.1"), ip("100.64.0.3")) == G1
    assert tables.egress(ip("100.64.0.1"), ip("100.64.0.2")) is None


# --- several networks ----------------------------------------------------------------------

def test_networks_are_merged():
    a = state("10.1.0.1", "10.1.0.0/24", rule(OUT, "10.1.0.1/32", "10.1.0.2/32", G1),
              rule(IN, "10.1.0.2/32", "10.1.0.1/32", G1))
    b = state("10.2.0.1", "10.2.0.0/24", rule(OUT, "10.2.0.1/32", "10.2.0.2/32", G2),
              rule(IN, "10.2.0.2/32", "10.2.0.1/32", G2))
    tables = PolicyTables({"https://b.example/net.toml": b, "https://a.example/net.toml": a})
    assert tables.egress(ip("10.1.0.1"), ip("10.1.0.2")) == G1
    assert tables.egress(ip("10.2.0.1"), ip("10.2.0.2")) == G2
    assert tables.ingress_ok(G2, ip("10.2.0.2"), ip("10.2.0.1"))
    assert tables.peers == {G1, G2} and tables.conflicts == ()


def test_identical_prefix_from_two_networks_keeps_both_sources():
    # drasyl-rs [bug]: the second network's dest entry replaced the first's
    a = state("10.1.0.1", "10.1.0.0/24", rule(OUT, "10.1.0.1/32", "192.168.50.0/24", G1))
    b = state("10.2.0.1", "10.2.0.0/24", rule(OUT, "10.2.0.1/32", "192.168.50.0/24", G2))
    tables = PolicyTables({"a": a, "b": b})
    assert tables.egress(ip("10.1.0.1"), ip("192.168.50.7")) == G1
    assert tables.egress(ip("10.2.0.1"), ip("192.168.50.7")) == G2
    assert tables.conflicts == ()


def test_conflicting_rule_first_network_given_wins_whatever_its_url():
    """The first network in config.toml order wins; a later admin cannot win by choosing a URL."""
    a = state("10.1.0.1", "10.1.0.0/24", rule(OUT, "10.1.0.1/32", "192.168.50.0/24", G1),
              rule(IN, "192.168.50.0/24", "10.1.0.1/32", G1))
    b = state("10.1.0.1", "10.1.0.0/16", rule(OUT, "10.1.0.1/32", "192.168.50.0/24", G2),
              rule(IN, "192.168.50.0/24", "10.1.0.1/32", G2))
    tables = PolicyTables({"https://z.example/a.toml": a, "https://a.example/b.toml": b})
    assert tables.egress(ip("10.1.0.1"), ip("192.168.50.7")) == G1
    assert tables.ingress_ok(G1, ip("192.168.50.7"), ip("10.1.0.1"))
    assert not tables.ingress_ok(G2, ip("192.168.50.7"), ip("10.1.0.1"))
    assert tables.peers == {G1}
    assert tables.conflicts == (
        "https://a.example/b.toml: this node's IP 10.1.0.1 is also its IP in network https://z.example/a.toml",
        f"https://a.example/b.toml: rule OUT 10.1.0.1/32 -> 192.168.50.0/24 via {G2.hex()} ALLOW conflicts "
        f"with network https://z.example/a.toml (peer {G1.hex()}), which wins",
        f"https://a.example/b.toml: rule IN 192.168.50.0/24 -> 10.1.0.1/32 from {G2.hex()} ALLOW conflicts "
        f"with network https://z.example/a.toml (peer {G1.hex()}), which wins",
    )


def test_same_rule_in_two_networks_is_no_conflict():
    r = rule(OUT, "10.1.0.1/32", "192.168.50.0/24", G1)
    tables = PolicyTables({"a": state("10.1.0.1", "10.1.0.0/24", r), "b": state("10.2.0.1", "10.2.0.0/24", r)})
    assert tables.conflicts == ()
    assert tables.egress(ip("10.1.0.1"), ip("192.168.50.1")) == G1


def test_overlapping_subnets_are_reported():
    tables = PolicyTables({"a": state("10.1.0.1", "10.1.0.0/24"), "b": state("10.1.1.1", "10.1.0.0/16")})
    assert tables.conflicts == ("b: subnet 10.1.0.0/16 overlaps 10.1.0.0/24 of network a; packets go to the "
                                "longest matching prefix of either",)


def test_deny_rules_never_reach_the_tables():
    tables = PolicyTables({"a": state("10.1.0.1", "10.1.0.0/24",
                                      rule(OUT, "10.1.0.1/32", "10.1.0.2/32", G1, allow=False),
                                      rule(IN, "10.1.0.2/32", "10.1.0.1/32", G1, allow=False))})
    assert tables.egress(ip("10.1.0.1"), ip("10.1.0.2")) is None
    assert not tables.ingress_ok(G1, ip("10.1.0.2"), ip("10.1.0.1"))
    assert tables.peers == frozenset()
