"""The IPv4 and IPv6 addresses on the agent's TUN device, brought to a wanted set (agent.md §4).

One IPv4 address per network (``ip/prefixlen`` of the network's CIDR) and one IPv6 address
(``ip6/prefixlen`` of its IPv6 prefix, added with ``nodad``: nobody else is on the link, and a
tentative address could not be bound by the resolver yet); the kernel adds the connected
subnet routes itself. Link-local IPv6 addresses are the kernel's and never touched.
Addresses not wanted are deleted first, so that an address
whose prefix length changed is replaced instead of colliding. A failure does not stop the
rest: it is returned as a message, and the next reconcile retries it (drasyl-rs panics here
[bug]). Only the one device given is ever touched.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Interface, IPv6Interface, ip_interface

from .netlink import IPRoute, NetlinkError

IFA_F_NODAD = 0x02


class DeviceAddresses:
    """Reconciles the IPv4 and IPv6 addresses of the device with index ``ifindex``."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex

    def current(self) -> set[IPv4Interface | IPv6Interface]:
        with IPRoute() as ipr:
            found = {ip_interface((msg.get("address"), msg["prefixlen"]))
                     for family in (socket.AF_INET, socket.AF_INET6)
                     for msg in ipr.get_addr(family=family, index=self.ifindex)}
        return {a for a in found if not a.ip.is_link_local}

    def reconcile(self, wanted: Iterable[IPv4Interface | IPv6Interface]) -> list[str]:
        """Add what is missing, delete what is extra; the problems (empty when done)."""
        want = set(wanted)
        current = self.current()
        problems: list[str] = []
        with IPRoute() as ipr:
            for op, addresses in (("del", current - want), ("add", want - current)):
                for address in sorted(addresses, key=lambda a: (a.version, a)):
                    extra = {"flags": IFA_F_NODAD} if op == "add" and address.version == 6 else {}
                    try:
                        ipr.addr(op, index=self.ifindex, address=str(address.ip),
                                 prefixlen=address.network.prefixlen, **extra)
                    except NetlinkError as exc:
                        verb = "add" if op == "add" else "delete"
                        problems.append(f"cannot {verb} address {address}: {exc.args[-1]}")
        return problems
