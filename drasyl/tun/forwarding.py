"""``net.ipv4.ip_forward`` for gateway nodes (agent.md §4).

A node that is the gateway of a route must forward between the overlay and its LAN. The
sysctl is only ever switched on, never back: other software on the host may rely on it, and
we cannot know who else switched it on. No NAT and no firewall rules are added.
"""

from __future__ import annotations

from .device import TunError

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


def enable_ip_forward(path: str = IP_FORWARD) -> bool:
    """Make sure IPv4 forwarding is on (in this process's network namespace); True if this
    call switched it on. Raises :class:`TunError` when the sysctl cannot be read or written."""
    try:
        with open(path, "r+") as sysctl:
            if sysctl.read().strip() == "1":
                return False
            sysctl.seek(0)
            sysctl.write("1\n")
    except OSError as exc:
        raise TunError(f"cannot enable IPv4 forwarding ({path}): {exc.strerror}") from None
    return True
