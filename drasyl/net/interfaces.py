"""Which local IP addresses a node announces and binds, and a super peer prints (spec §6.2.1).

drasyl-rs skips loopback and virtual interfaces (``tun``, ``docker``, ...) and keeps IPv4
private/global and IPv6 global unicast addresses. We keep the same interface filter, but
also accept IPv4 documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24): they are
never on real hosts, and test labs use them as their "internet".
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

SKIPPED_PREFIXES = ("lo", "feth", "utun", "tun", "zt", "drasyl", "docker", "br-")
_IPV4_DOC = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
_IPV6_EXCLUDED = [ipaddress.ip_network(n) for n in ("fc00::/7", "fe80::/10", "ff00::/8", "2001:db8::/32")]


def usable_address(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if addr.version == 4:
        if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified:
            return False
        return addr.is_private or addr.is_global or any(addr in n for n in _IPV4_DOC)
    if addr.is_loopback or addr.is_unspecified or addr.ipv4_mapped is not None:
        return False
    return not any(addr in n for n in _IPV6_EXCLUDED)


def local_addresses(family: int | None = None) -> list[str]:
    """Usable addresses of up interfaces, IPv4 first; ``family`` limits to AF_INET/AF_INET6."""
    stats = psutil.net_if_stats()
    found: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name.startswith(SKIPPED_PREFIXES) or not (stats.get(name) and stats[name].isup):
            continue
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            if family is not None and a.family != family:
                continue
            ip = a.address.split("%", 1)[0]
            if usable_address(ip) and ip not in found:
                found.append(ip)
    return sorted(found, key=lambda ip: ":" in ip)
