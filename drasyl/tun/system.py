"""The whole host side of the agent in one call per housekeeping tick (agent.md §4, §5, §7).

The daemon computes what the host should look like from all networks' local states — the
device's addresses, the kernel routes, whether this node is a gateway, the names — and hands
it over as a :class:`HostState` of plain values. :meth:`Host.apply` brings addresses, routes,
``ip_forward`` and the hosts file there, in that order (a route's gateway is only reachable
once its network's address is on the device), and returns what could not be done yet as
messages; everything is retried on the next apply, so one failure never blocks the rest
(drasyl-rs panics on address errors [bug]).

:meth:`Host.start` removes what a crashed predecessor left: names in the hosts file (its
device, addresses and routes went with its process). :meth:`Host.close` deletes our routes,
addresses and names; ``ip_forward`` stays on (§4). The device itself is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from .addresses import DeviceAddresses
from .device import TunError
from .forwarding import IP_FORWARD, enable_ip_forward
from .hosts import HOSTS, HostsFile
from .routes import KernelRoutes, Route


@dataclass(frozen=True)
class HostState:
    """What the host should look like for all networks together."""

    addresses: frozenset[IPv4Interface] = frozenset()
    routes: frozenset[Route] = frozenset()
    forwarding: bool = False
    names: frozenset[tuple[IPv4Address, str]] = frozenset()


class Host:
    """Addresses and routes of the device ``ifindex``, ``ip_forward`` and the hosts file."""

    def __init__(self, ifindex: int, hosts_path: str = HOSTS, ip_forward_path: str = IP_FORWARD) -> None:
        self.addresses = DeviceAddresses(ifindex)
        self.routes = KernelRoutes(ifindex)
        self.hosts = HostsFile(hosts_path)
        self._ip_forward_path = ip_forward_path

    def start(self) -> None:
        """Remove the names a crashed agent left in the hosts file; raises :class:`TunError`."""
        self.hosts.clear()

    def apply(self, state: HostState) -> list[str]:
        """Bring the host to ``state``; the problems left for the next apply (empty: done)."""
        problems = self.addresses.reconcile(state.addresses)
        problems += self.routes.reconcile(state.routes)
        if state.forwarding:
            problems += _attempt(enable_ip_forward, self._ip_forward_path)
        problems += _attempt(self.hosts.write, state.names)
        return problems

    def close(self) -> list[str]:
        """Delete our routes, addresses and names (``ip_forward`` stays as it is)."""
        problems = self.routes.close()
        problems += self.addresses.reconcile(())
        problems += _attempt(self.hosts.clear)
        return problems


def _attempt(step: Callable[..., object], *args: object) -> list[str]:
    try:
        step(*args)
    except (TunError, ValueError) as exc:
        return [str(exc)]
    return []
