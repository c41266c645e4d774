"""The kernel-route state machine of agent.md §4, without a kernel: applied, pending, removing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from drasyl.tun.routes import Route, RouteState, RouteStates

LAN = Route(IPv4Network("192.168.50.0/24"), IPv4Address("10.1.0.10"))
OTHER = Route(IPv4Network("203.0.113.0/24"), IPv4Address("10.1.0.11"))


def test_missing_routes_are_added_and_present_ones_count_as_applied():
    routes = RouteStates()
    assert routes.plan({LAN, OTHER}, present={OTHER}) == ([LAN], [])
    assert routes.states[OTHER] is RouteState.APPLIED
    routes.added(LAN, ok=True)
    assert routes.states[LAN] is RouteState.APPLIED
    assert routes.plan({LAN, OTHER}, present={LAN, OTHER}) == ([], [])


def test_a_failed_add_is_pending_and_retried_until_it_works():
    routes = RouteStates()
    to_add, _ = routes.plan({LAN}, present=set())
    routes.added(to_add[0], ok=False)  # gateway not reachable yet
    assert routes.states[LAN] is RouteState.PENDING
    assert routes.plan({LAN}, present=set()) == ([LAN], [])
    routes.added(LAN, ok=True)
    assert routes.states == {LAN: RouteState.APPLIED}


def test_unwanted_routes_are_deleted_and_a_failed_delete_is_retried():
    routes = RouteStates()
    routes.plan({LAN}, present={LAN})
    assert routes.plan(set(), present={LAN}) == ([], [LAN])
    routes.deleted(LAN, ok=False)
    assert routes.states[LAN] is RouteState.REMOVING
    assert routes.plan(set(), present={LAN}) == ([], [LAN])
    routes.deleted(LAN, ok=True)
    assert routes.states == {}


def test_unwanted_routes_already_gone_are_forgotten_without_a_delete():
    routes = RouteStates()
    routes.plan({LAN}, present=set())
    routes.added(LAN, ok=False)
    assert routes.plan(set(), present=set()) == ([], [])
    assert routes.states == {}


def test_a_route_someone_deleted_is_added_again():
    routes = RouteStates()
    routes.plan({LAN}, present={LAN})
    assert routes.plan({LAN}, present=set()) == ([LAN], [])


def test_routes_not_managed_by_us_are_never_deleted():
    routes = RouteStates()
    assert routes.plan(set(), present={OTHER}) == ([], [])
