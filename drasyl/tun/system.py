"""The whole host side of the agent in one call per housekeeping tick (agent.md §4, §5, §7).

The daemon computes what the host should look like from all networks' local states — the
device's addresses, the kernel routes, the prefixes this node serves as a gateway (only those
the local user consented to), the names — and hands it over as a :class:`HostState` of plain
values. :meth:`Host.apply` brings addresses, routes, forwarding (:mod:`.forwarding`: from the
device to the served prefixes only) and the hosts file there, in that order (a route's gateway
is only reachable once its network's address is on the device), and returns what could not be
done yet as messages; everything is retried on the next apply, so one failure never blocks the
rest (drasyl-rs panics on address errors [bug]).

:meth:`Host.start` removes what a crashed predecessor left: names in the hosts file, its
forwarding table, and restores the ``ip_forward`` it saved (its device, addresses and routes
went with its process). :meth:`Host.close` deletes our routes, addresses, names and forwarding
table and restores ``ip_forward``. The device itself is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

from .addresses import DeviceAddresses
from .device import TunError
from .forwarding import Forwarding
from .hosts import HOSTS, HostsFile
from .routes import KernelRoutes, Route


@dataclass(frozen=True)
class HostState:
    """What the host should look like for all networks together."""

    addresses: frozenset[IPv4Interface | IPv6Interface] = frozenset()
    routes: frozenset[Route] = frozenset()
    served: frozenset[IPv4Network] = frozenset()  # destinations we forward to from the device
    names: frozenset[tuple[IPv4Address | IPv6Address, str]] = frozenset()


class Host:
    """Addresses and routes of the device ``ifindex``, forwarding and the hosts file;
    ``forwarding`` defaults to ``Forwarding()`` (device ``drasyl``, state in /run/drasyl)."""

    def __init__(self, ifindex: int, hosts_path: str = HOSTS, forwarding: Forwarding | None = None) -> None:
        self.addresses = DeviceAddresses(ifindex)
        self.routes = KernelRoutes(ifindex)
        self.hosts = HostsFile(hosts_path)
        self.forwarding = forwarding if forwarding is not None else Forwarding()

    def start(self) -> list[str]:
        """Remove what a crashed agent left: names in the hosts file, its forwarding table and
        ``ip_forward`` value; the problems."""
        return _attempt(self.hosts.clear) + self.forwarding.recover()

    def apply(self, state: HostState) -> list[str]:
        """Bring the host to ``state``; the problems left for the next apply (empty: done)."""
        problems = self.addresses.reconcile(state.addresses)
        problems += self.routes.reconcile(state.routes)
        problems += self.forwarding.apply(state.served)
        problems += _attempt(self.hosts.write, state.names)
        return problems

    def close(self) -> list[str]:
        """Delete our routes, addresses, names and forwarding (``ip_forward`` as before)."""
        problems = self.forwarding.close()
        problems += self.routes.close()
        problems += self.addresses.reconcile(())
        problems += _attempt(self.hosts.clear)
        return problems


def _attempt(step: Callable[..., object], *args: object) -> list[str]:
    try:
        step(*args)
    except (TunError, ValueError) as exc:
        return [str(exc)]
    return []
