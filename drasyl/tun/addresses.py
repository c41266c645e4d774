"""The IPv4 addresses on the agent's TUN device, brought to a wanted set (agent.md §4).

One address per network (``ip/prefixlen`` of the network's CIDR); the kernel adds the
connected subnet route itself. Addresses not wanted are deleted first, so that an address
whose prefix length changed is replaced instead of colliding. A failure does not stop the
rest: it is returned as a message, and the next reconcile retries it (drasyl-rs panics here
[bug]). Only the one device given is ever touched.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Interface

from .netlink import IPRoute, NetlinkError


class DeviceAddresses:
    """Reconciles the IPv4 addresses of the device with index ``ifindex``."""

    def __init__(self, ifindex: int) -> None:
        self.ifindex = ifindex

    def current(self) -> set[IPv4Interface]:
        with IPRoute() as ipr:
            return {IPv4Interface((msg.get("address"), msg["prefixlen"]))
                    for msg in ipr.get_addr(family=socket.AF_INET, index=self.ifindex)}

    def reconcile(self, wanted: Iterable[IPv4Interface]) -> list[str]:
        """Add what is missing, delete what is extra; the problems (empty when done)."""
        want = set(wanted)
        current = self.current()
        problems: list[str] = []
        with IPRoute() as ipr:
            for op, addresses in (("del", current - want), ("add", want - current)):
                for address in sorted(addresses):
                    try:
                        ipr.addr(op, index=self.ifindex, address=str(address.ip),
                                 prefixlen=address.network.prefixlen)
                    except NetlinkError as exc:
                        verb = "add" if op == "add" else "delete"
                        problems.append(f"cannot {verb} address {address}: {exc.args[-1]}")
        return problems
