"""What the three port-mapping clients share: the error type, the gateway and the LAN as the
kernel sees them, and one UDP request/response exchange with retries.

The gateway comes from ``/proc/net/route`` (the main table's default route), and the LAN
prefixes from the same table (routes without a gateway on the gateway's interface): UPnP
only trusts URLs pointing there. Reading one file keeps this free of netlink and threads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

PROC_ROUTE = Path("/proc/net/route")
RTF_UP, RTF_GATEWAY = 0x1, 0x2
#: Waits between retransmissions: RFC 6886 §3.1 starts at 250 ms and doubles; four tries
#: (3.75 s in all) instead of nine (64 s), so a silent router costs little.
RETRY_WAITS_S = (0.25, 0.5, 1.0, 2.0)
MAX_DATAGRAM = 1100  # PCP's maximum message size (RFC 6887 §7); NAT-PMP answers are smaller

T = TypeVar("T")


class PortMapError(Exception):
    """A router did not answer, answered with an error, or answered something invalid."""


@dataclass(frozen=True)
class Lan:
    """The default gateway, the interface towards it, and the prefixes on that interface."""

    gateway: str
    interface: str
    networks: tuple[ipaddress.IPv4Network, ...]

    def contains(self, host: str) -> bool:
        """Whether ``host`` (an IPv4 literal) is the gateway or on one of the LAN prefixes."""
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return str(ip) == self.gateway or any(ip in net and ip != net.network_address for net in self.networks)


def parse_proc_route(text: str) -> Lan | None:
    """The default route's gateway and its interface's on-link prefixes from ``/proc/net/route``
    text (little-endian hex fields); None without an IPv4 default route."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gw, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        rows.append((fields[0], _le_ip(dest), _le_ip(gw), flags, _le_ip(mask)))
    default = next((r for r in rows if r[1] == "0.0.0.0" and r[4] == "0.0.0.0" and r[3] & RTF_GATEWAY
                    and r[3] & RTF_UP), None)
    if default is None:
        return None
    iface = default[0]
    nets = []
    for name, dest, gw, flags, mask in rows:
        if name == iface and gw == "0.0.0.0" and mask != "0.0.0.0" and flags & RTF_UP:
            try:
                nets.append(ipaddress.IPv4Network(f"{dest}/{mask}"))
            except ValueError:
                continue
    return Lan(default[2], iface, tuple(nets))


def _le_ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("<I", value & 0xFFFFFFFF))


def find_lan(gateway: str | None = None) -> Lan:
    """The LAN from the kernel's routing table; ``gateway`` overrides the default route's."""
    try:
        lan = parse_proc_route(PROC_ROUTE.read_text())
    except OSError as exc:
        raise PortMapError(f"cannot read the routing table: {exc}") from None
    if gateway is not None:
        try:
            ipaddress.IPv4Address(gateway)
        except ValueError:
            raise PortMapError(f"gateway {gateway!r} is not an IPv4 address") from None
        return Lan(gateway, lan.interface if lan else "", lan.networks if lan else ())
    if lan is None:
        raise PortMapError("no IPv4 default gateway")
    return lan


def local_ip_towards(gateway: str) -> str:
    """The source address the kernel picks for the gateway (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((gateway, 9))
        except OSError as exc:
            raise PortMapError(f"no route to gateway {gateway}: {exc}") from None
        return s.getsockname()[0]


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, parse: Callable[[bytes], T | None]) -> None:
        self.parse = parse
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()
        self.rejected: str | None = None

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.result.done() or len(data) > MAX_DATAGRAM:
            return
        try:
            value = self.parse(data)
        except PortMapError as exc:  # keep listening: a late or stray answer may follow
            self.rejected = str(exc)
            return
        if value is not None:
            self.result.set_result(value)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: nobody listens
        if not self.result.done():
            self.result.set_exception(PortMapError(f"refused ({exc.strerror or exc})"))


async def udp_request(gateway: str, port: int, request: bytes, parse: Callable[[bytes], T | None],
                      what: str, waits: Sequence[float] = RETRY_WAITS_S) -> T:
    """Send ``request`` to ``gateway:port`` until ``parse`` accepts an answer (None or
    :class:`PortMapError` from it: ignore that datagram). The socket is connected, so only the
    gateway's answers from that port reach ``parse``."""
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_datagram_endpoint(lambda: _Exchange(parse),
                                                               remote_addr=(gateway, port))
    except OSError as exc:
        raise PortMapError(f"{what}: cannot reach {gateway}:{port}: {exc}") from None
    try:
        for wait in waits:
            transport.sendto(request)
            try:
                return await asyncio.wait_for(asyncio.shield(proto.result), wait)
            except asyncio.TimeoutError:
                continue
            except PortMapError as exc:
                raise PortMapError(f"{what}: {gateway}:{port} {exc}") from None
        detail = f" (last answer rejected: {proto.rejected})" if proto.rejected else ""
        raise PortMapError(f"{what}: no answer from {gateway}:{port} within {sum(waits):g} s{detail}")
    finally:
        transport.close()
