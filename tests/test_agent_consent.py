"""What a network config may change on the host without the local user's consent (drasyl.agent.consent)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from itertools import islice

import pytest

from drasyl.agent.config import Consent
from drasyl.agent.consent import HostFacts, Request, decide
from drasyl.agent.netconfig import parse_network_config
from drasyl.agent.policy import KernelRoute, desired_state

ME, GW, PEER = "11" * 32, "22" * 32, "33" * 32
SUPER_PEER = IPv4Address("198.51.100.10")
#: a host on a LAN 192.168.1.0/24 behind 192.168.1.1, with a VPN route 10.8.0.0/16
FACTS = HostFacts(
    routes=((IPv4Network("0.0.0.0/0"), IPv4Address("192.168.1.1")), (IPv4Network("192.168.1.0/24"), None),
            (IPv4Network("10.8.0.0/16"), IPv4Address("10.8.0.1"))),
    protected=frozenset({SUPER_PEER}),
    names=frozenset({"myhost", "printer"}),
)


def config(subnet: str = "10.1.0.0/24", routes: tuple[tuple[str, str], ...] = (), me: str = "alice",
           gw_name: str = "gw", peer_name: str = "peer") -> str:
    """ME, GW and PEER on the subnet's first three addresses, all allowed to talk."""
    text = f'network = "{subnet}"\n'
    ips = list(islice(IPv4Network(subnet).hosts(), 3))
    for pk, ip, name, group in ((ME, ips[0], me, "a"), (GW, ips[1], gw_name, "a"), (PEER, ips[2], peer_name, "a")):
        text += f'[[node]]\npk = "{pk}"\nip = "{ip}"\nhostname = "{name}"\ngroups = ["{group}"]\n'
    for dest, gw in routes:
        text += f'[[route]]\ndest = "{dest}"\ngw = "{gw}"\n'
    return text + '[[policy]]\nsource_groups = ["a"]\ndestination_groups = ["a"]\n'


def request(text: str, key: str = "https://a.example/a.toml", consent: Consent = Consent(), me: str = ME) -> Request:
    cfg = parse_network_config(text, key)
    state = desired_state(cfg, bytes.fromhex(me))
    assert state is not None
    return Request(key, key, consent, state, cfg)


def only(decision, key="https://a.example/a.toml"):
    return decision.states.get(key), decision.refused.get(key, ())


def test_a_plain_overlay_changes_nothing_and_refuses_nothing():
    state, refused = only(decide([request(config(routes=(("10.99.0.0/24", GW),)))], FACTS))
    assert refused == ()
    assert state.routes == (KernelRoute(IPv4Network("10.99.0.0/24"), IPv4Address("10.1.0.2")),)
    assert [name for _ip, name in state.hostnames] == ["alice", "gw", "peer"]


@pytest.mark.parametrize("dest", ["0.0.0.0/0", "0.0.0.0/1", "128.0.0.0/1", "64.0.0.0/7"])
def test_default_and_split_default_routes_need_exit_node(dest):
    state, refused = only(decide([request(config(routes=((dest, GW),)))], FACTS))
    assert state.routes == ()
    assert refused == (f"route {dest} via 10.1.0.2 refused: a default or split-default route; only accepted with "
                       f"exit_node naming its gateway in config.toml",)
    # and its access rules went with it: the gateway cannot inject packets from those addresses
    assert all(str(r.source) != dest and str(r.dest) != dest for r in state.access_rules)


@pytest.mark.parametrize("exit_node", ["gw", GW])
def test_exit_node_gets_the_default_route_except_the_underlay_addresses(exit_node):
    consent = Consent(exit_node=exit_node)
    state, refused = only(decide([request(config(routes=(("0.0.0.0/0", GW),)), consent=consent)], FACTS))
    assert refused == ()
    kernel = [r.dest for r in state.routes]
    assert all(r.gw == IPv4Address("10.1.0.2") for r in state.routes)
    for address in ("8.8.8.8", "93.184.216.34", "10.200.0.1"):
        assert any(IPv4Address(address) in dest for dest in kernel), address
    for kept in (SUPER_PEER, IPv4Address("192.168.1.1")):
        assert not any(kept in dest for dest in kernel), kept
    assert len(kernel) <= 32 * 3  # three protected addresses: super peer and two next hops


def test_exit_node_must_be_the_routes_gateway():
    state, refused = only(decide([request(config(routes=(("0.0.0.0/1", GW),)),
                                          consent=Consent(exit_node="peer"))], FACTS))
    assert state.routes == () and "split-default" in refused[0]


@pytest.mark.parametrize("dest, covered", [("198.51.100.0/24", "198.51.100.10"), ("192.168.1.1/32", "192.168.1.1")])
def test_a_route_never_covers_a_super_peer_or_the_next_hop_even_with_accept_routes(dest, covered):
    state, refused = only(decide([request(config(routes=((dest, GW),)), consent=Consent(accept_routes=True))],
                                 FACTS))
    assert state.routes == ()
    assert refused == (f"route {dest} via 10.1.0.2 refused: it covers {covered}, which must stay on the underlay "
                       f"(a super peer, config server or next hop)",)


def test_config_server_addresses_are_protected_for_every_network():
    a = request(config(routes=(("203.0.113.0/24", GW),)))
    b = Request("b", "b", Consent(), request(config("10.2.0.0/24")).state, a.config,
                server=frozenset({IPv4Address("203.0.113.5")}))
    state, refused = only(decide([a, b], FACTS))
    assert state.routes == () and "it covers 203.0.113.5" in refused[0]


@pytest.mark.parametrize("dest", ["192.168.1.128/25", "10.8.3.0/24"])
def test_a_route_overlapping_a_host_route_needs_accept_routes(dest):
    state, refused = only(decide([request(config(routes=((dest, GW),)))], FACTS))
    assert state.routes == () and "overlaps the host's route" in refused[0] and "accept_routes = true" in refused[0]
    state, refused = only(decide([request(config(routes=((dest, GW),)), consent=Consent(accept_routes=True))],
                                 HostFacts(routes=FACTS.routes)))
    assert [str(r.dest) for r in state.routes] == [dest] and refused == ()


@pytest.mark.parametrize("subnet, why", [
    ("128.0.0.0/1", "shorter than /8"),
    ("192.168.1.128/25", "overlaps the host's route 192.168.1.0/24"),
    ("192.168.0.0/16", "contains 192.168.1.1"),
    ("10.8.1.0/24", "overlaps the host's route 10.8.0.0/16"),
    ("198.51.100.0/24", "contains 198.51.100.10"),
])
def test_an_overlay_network_that_would_touch_the_host_is_refused_whole(subnet, why):
    decision = decide([request(config(subnet))], FACTS)
    state, refused = only(decision)
    assert state is None
    assert len(refused) == 1 and refused[0].startswith(f"network {subnet} refused: ") and why in refused[0]


def test_the_network_joined_first_wins_an_overlap_whatever_the_urls():
    first = request(config("10.1.0.0/24"), key="https://z.example/first.toml")
    later = request(config("10.1.0.0/16", me="alice2", gw_name="gw2", peer_name="peer2"), key="https://a.example/later.toml")
    decision = decide([first, later], FACTS)
    assert set(decision.states) == {"https://z.example/first.toml"}
    assert decision.conflicts == ("https://a.example/later.toml: network 10.1.0.0/16 refused: overlaps network "
                                  "https://z.example/first.toml (10.1.0.0/24), joined earlier",)


def test_a_later_route_into_an_earlier_network_is_a_conflict_a_wider_one_is_not():
    first = request(config("10.1.0.0/24"), key="first")
    later = request(config("10.2.0.0/24", me="a2", gw_name="gw2", peer_name="peer2",
                           routes=(("10.1.0.0/25", GW), ("10.0.0.0/8", GW))), key="later")
    decision = decide([first, later], HostFacts())
    state, refused = only(decision, "later")
    assert [str(r.dest) for r in state.routes] == ["10.0.0.0/8"]
    assert refused == ("route 10.1.0.0/25 via 10.2.0.2 refused: it lies inside 10.1.0.0/24 of network first, "
                       "joined earlier",)
    assert decision.conflicts == ("later: " + refused[0],)


@pytest.mark.parametrize("name, why", [("localhost", "a reserved name"), ("wpad", "a reserved name"),
                                       ("myhost", "the host already has this name"),
                                       ("printer", "the host already has this name")])
def test_reserved_and_existing_names_are_refused_the_node_stays(name, why):
    state, refused = only(decide([request(config(gw_name=name))], FACTS))
    assert [n for _ip, n in state.hostnames] == ["alice", "peer"]
    assert refused == (f"name {name!r} (10.1.0.2) refused: {why}" + ("" if why == "a reserved name" else
                       " (its own hostname or a line in the hosts file)"),)
    assert any(r.pk == bytes.fromhex(GW) and r.allow for r in state.access_rules)  # still reachable by IP


def test_a_name_claimed_by_an_earlier_network_stays_with_it():
    first = request(config("10.1.0.0/24", gw_name="fileserver"), key="first")
    later = request(config("10.2.0.0/24", me="a2", gw_name="fileserver", peer_name="peer2"), key="later")
    decision = decide([first, later], HostFacts())
    assert ("10.1.0.2", "fileserver") in [(str(ip), n) for ip, n in decision.states["first"].hostnames]
    assert "fileserver" not in [n for _ip, n in decision.states["later"].hostnames]
    assert decision.conflicts == ("later: name 'fileserver' (10.2.0.2) refused: network first, joined earlier, "
                                  "has this name",)


def test_forwarding_only_to_what_serve_routes_allows():
    text = config(routes=(("10.99.0.0/24", ME), ("10.98.0.0/24", ME)))
    state, refused = only(decide([request(text)], FACTS))
    assert state.served == ()
    assert len(refused) == 2 and all("add it to serve_routes" in line for line in refused)
    assert not any(str(r.source) in ("10.99.0.0/24", "10.98.0.0/24") for r in state.access_rules)
    consent = Consent(serve_routes=(IPv4Network("10.99.0.0/16"),))
    state, refused = only(decide([request(text, consent=consent)], FACTS))
    assert [str(d) for d in state.served] == ["10.99.0.0/24"]
    assert refused == ("forwarding to 10.98.0.0/24 refused: this node is its gateway in the network config; "
                       "add it to serve_routes of this network in config.toml to forward",)


def test_ipv6_part_refused_alone_when_it_overlaps_the_host_or_an_earlier_network():
    """A network's IPv6 prefix that overlaps a route of the host (a ULA LAN) or an earlier
    network's prefix is refused; the network stays up over IPv4, its names IPv4 only."""
    from dataclasses import replace as _replace
    from ipaddress import IPv6Network

    first = request(config())
    second = request(config("10.2.0.0/24", me="alice2", gw_name="gw2", peer_name="peer2"), key="https://b.example/b.toml")
    assert first.state.subnet6 != second.state.subnet6  # derived from different IPv4 networks
    second = _replace(second, state=_replace(second.state, subnet6=first.state.subnet6))
    decision = decide([first, second], FACTS)
    state, refused = only(decision, "https://b.example/b.toml")
    assert state is not None and state.ip6 is None and state.access_rules6 == () and state.hostnames6 == ()
    assert state.ip == second.state.ip and state.access_rules == second.state.access_rules
    assert refused == (f"IPv6 network {first.state.subnet6} refused (IPv4 only): overlaps network "
                       f"https://a.example/a.toml ({first.state.subnet6}), joined earlier",)
    assert any("IPv6 network" in c for c in decision.conflicts)
    lan6 = HostFacts(FACTS.routes, FACTS.protected, FACTS.names, routes6=(IPv6Network("fd00::/8"),))
    state, refused = only(decide([first], lan6))
    assert state.ip6 is None and "overlaps the host's route fd00::/8" in refused[0]
    state, refused = only(decide([first], FACTS))
    assert state.ip6 == first.state.ip6 and state.hostnames6 == first.state.hostnames6 and refused == ()


def test_ipv6_names_follow_their_ipv4_name():
    state, refused = only(decide([request(config(peer_name="printer"))], FACTS))
    assert "printer" not in {name for _ip, name in state.hostnames6}
    assert {name for _ip, name in state.hostnames6} == {name for _ip, name in state.hostnames}
