"""Kernel routes to the subnets behind gateway nodes (agent.md §4, client side).

Each wanted route is ``dest via <gateway's overlay IP>`` with metric 4900 in the main table;
the kernel finds the TUN device through the connected overlay subnet. :class:`RouteStates` is
the pure state machine: given what is wanted and which of our routes the kernel has, it says
what to add and what to delete, and records the outcome per route — ``APPLIED``, ``PENDING``
(adding failed, e.g. the gateway is not reachable yet because its network's address is not on
the device) or ``REMOVING`` (deleting failed). Pending and removing routes are retried on the
next reconcile, as in drasyl-rs. :class:`KernelRoutes` is the thin pyroute2 adapter around it.
IPv6 routes (a route's ``dest6`` via the gateway's overlay IPv6 address) are handled the same way.

Differences from drasyl-rs: a route counts as ours only with metric 4900 through our device
(drasyl-rs takes any route with the same destination and gateway for its own, and later fails
to delete it); a route of ours that someone deleted is added again. Leftovers after a crash
need no cleanup: the kernel deletes every route through the TUN together with the device.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import NamedTuple

from .netlink import IPRoute, NetlinkError

METRIC = 4900
MAIN_TABLE = 254


class Route(NamedTuple):
    dest: IPv4Network | IPv6Network  # both of one family
    gateway: IPv4Address | IPv6Address

    def __str__(self) -> str:
        return f"{self.dest} via {self.gateway}"


class RouteState(enum.Enum):
    """Values as drasyl-rs' status JSON shows them."""

    PENDING = "Pending"
    APPLIED = "Applied"
    REMOVING = "Removing"


class RouteStates:
    """Which routes we manage and in which state; no I/O."""

    def __init__(self) -> None:
        self.states: dict[Route, RouteState] = {}

    def plan(self, wanted: set[Route], present: set[Route]) -> tuple[list[Route], list[Route]]:
        """Routes to add and routes to delete, given the wanted set and our routes in the
        kernel. Wanted routes already present are marked applied; unwanted ones that are
        gone are forgotten."""
        to_add = []
        for route in sorted(wanted, key=_order):
            if route in present:
                self.states[route] = RouteState.APPLIED
            else:
                to_add.append(route)
        to_delete = []
        for route in sorted(self.states.keys() - wanted, key=_order):
            if route in present:
                to_delete.append(route)
            else:
                del self.states[route]
        return to_add, to_delete

    def added(self, route: Route, ok: bool) -> None:
        self.states[route] = RouteState.APPLIED if ok else RouteState.PENDING

    def deleted(self, route: Route, ok: bool) -> None:
        if ok:
            del self.states[route]
        else:
            self.states[route] = RouteState.REMOVING


class KernelRoutes:
    """Our routes through the device ``ifindex``, reconciled with pyroute2."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex
        self._routes = RouteStates()

    @property
    def states(self) -> dict[Route, RouteState]:
        """Every route we manage and its state (for status; do not modify)."""
        return self._routes.states

    def present(self, ipr: IPRoute) -> set[Route]:
        """Routes in the main table with our metric, a gateway, and our device."""
        found = set()
        for family, default in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for msg in ipr.get_routes(family=family, table=MAIN_TABLE):
                gateway = msg.get("gateway")
                if gateway and msg.get("priority") == METRIC and msg.get("oif") == self.ifindex:
                    found.add(Route(ip_network((msg.get("dst") or default, msg["dst_len"])), ip_address(gateway)))
        return found

    def reconcile(self, wanted: Iterable[Route]) -> list[str]:
        """Add missing routes, delete unwanted ones; the problems (retried next time)."""
        problems: list[str] = []
        with IPRoute() as ipr:
            to_add, to_delete = self._routes.plan(set(wanted), self.present(ipr))
            for route in to_delete:
                self._routes.deleted(route, _route(ipr, "del", route, problems))
            for route in to_add:
                self._routes.added(route, _route(ipr, "add", route, problems))
        return problems

    def close(self) -> list[str]:
        """Delete every route we manage (at shutdown)."""
        return self.reconcile(())


RTN_UNICAST = 1


def _order(route: Route) -> tuple:
    """IPv4 routes before IPv6 ones (addresses of two families do not compare)."""
    return route.dest.version, route.dest, route.gateway


def underlay_routes(ifindex: int) -> tuple[tuple[IPv4Network, IPv4Address | None], ...]:
    """The host's own IPv4 routes (main table, unicast, through any device but ``ifindex``):
    (destination, gateway or None), for what a network config must not override."""
    found = []
    with IPRoute() as ipr:
        for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if msg["type"] != RTN_UNICAST or msg.get("oif") == ifindex:
                continue
            gateway = msg.get("gateway")
            found.append((IPv4Network((msg.get("dst") or "0.0.0.0", msg["dst_len"])),
                          IPv4Address(gateway) if gateway else None))
    return tuple(sorted(found, key=lambda r: (r[0], r[1] or IPv4Address(0))))


def underlay_routes6(ifindex: int) -> tuple[IPv6Network, ...]:
    """The destinations of the host's own IPv6 routes (main table, unicast, not through
    ``ifindex``), without the default route and link-local ones: what an overlay IPv6
    prefix must not overlap."""
    found = set()
    with IPRoute() as ipr:
        for msg in ipr.get_routes(family=socket.AF_INET6, table=MAIN_TABLE):
            if msg["type"] != RTN_UNICAST or msg.get("oif") == ifindex or not msg["dst_len"]:
                continue
            dest = IPv6Network((msg.get("dst") or "::", msg["dst_len"]))
            if not dest.is_link_local:
                found.add(dest)
    return tuple(sorted(found))


def _route(ipr: IPRoute, op: str, route: Route, problems: list[str]) -> bool:
    try:
        family = socket.AF_INET if route.dest.version == 4 else socket.AF_INET6
        ipr.route(op, dst=str(route.dest.network_address), dst_len=route.dest.prefixlen, family=family,
                  gateway=str(route.gateway), priority=METRIC, table=MAIN_TABLE)
        return True
    except NetlinkError as exc:
        verb = "add" if op == "add" else "delete"
        problems.append(f"cannot {verb} route {route}: {exc.args[-1]}")
        return False
