"""NAT-PMP (RFC 6886): the external address (opcode 0) and UDP mappings (opcode 1).

The codec is a few ``struct`` calls: the maintained Python NAT-PMP packages are blocking,
unmaintained, or bring no validation of the router's answers, so none fits an asyncio
daemon that must treat every answer as untrusted. Pure functions build and parse; the
two coroutines at the end do one exchange each over :func:`.net.udp_request`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .net import RETRY_WAITS_S, PortMapError, udp_request

PORT = 5351
VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
RESULTS = {
    0: "success",
    1: "unsupported version",
    2: "not authorized/refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}


@dataclass(frozen=True)
class Response:
    """A parsed answer; ``external_ip`` for opcode 0, the port fields for opcode 1."""

    opcode: int
    result: int
    epoch: int  # seconds since the router's port-mapping table was (re)initialised
    external_ip: str | None = None
    internal_port: int = 0
    external_port: int = 0
    lifetime_s: int = 0

    @property
    def error(self) -> str | None:
        """None on success, else the result code's meaning."""
        if self.result == 0:
            return None
        return f"result {self.result} ({RESULTS.get(self.result, 'unknown')})"


def external_address_request() -> bytes:
    return struct.pack("!BB", VERSION, OP_EXTERNAL_ADDRESS)


def map_request(internal_port: int, external_port: int, lifetime_s: int) -> bytes:
    """Map (or, with lifetime 0 and external port 0, delete) a UDP port."""
    _check_port(internal_port, "internal port", zero=False)
    _check_port(external_port, "external port")
    if not 0 <= lifetime_s <= 0xFFFFFFFF:
        raise ValueError(f"lifetime {lifetime_s} out of range")
    return struct.pack("!BBHHHI", VERSION, OP_MAP_UDP, 0, internal_port, external_port, lifetime_s)


def parse_response(data: bytes, opcode: int) -> Response:
    """Parse the answer to a request with ``opcode``; :class:`PortMapError` if malformed.

    A result code other than 0 is returned, not raised (the answer is well-formed); an
    answer to another opcode is malformed here (``udp_request`` then keeps waiting)."""
    if len(data) < 8:
        raise PortMapError(f"NAT-PMP answer too short ({len(data)} bytes)")
    version, op, result, epoch = struct.unpack_from("!BBHI", data)
    if version != VERSION:
        raise PortMapError(f"NAT-PMP answer has version {version}")
    if op != 128 + opcode:
        raise PortMapError(f"NAT-PMP answer has opcode {op}, expected {128 + opcode}")
    if result != 0:
        return Response(opcode, result, epoch)
    if opcode == OP_EXTERNAL_ADDRESS:
        if len(data) != 12:
            raise PortMapError(f"NAT-PMP address answer has {len(data)} bytes, expected 12")
        ip = ipaddress.IPv4Address(data[8:12])
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise PortMapError(f"NAT-PMP answer names an unusable external address {ip}")
        return Response(opcode, result, epoch, external_ip=str(ip))
    if len(data) != 16:
        raise PortMapError(f"NAT-PMP mapping answer has {len(data)} bytes, expected 16")
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    return Response(opcode, result, epoch, internal_port=internal, external_port=external, lifetime_s=lifetime)


def _check_port(port: int, what: str, zero: bool = True) -> None:
    if not (0 if zero else 1) <= port <= 0xFFFF:
        raise ValueError(f"{what} {port} out of range")


async def external_address(gateway: str) -> Response:
    """The router's external IPv4 address (and epoch); raises on errors."""
    response = await udp_request(gateway, PORT, external_address_request(),
                                 lambda d: parse_response(d, OP_EXTERNAL_ADDRESS), "NAT-PMP")
    if response.error:
        raise PortMapError(f"NAT-PMP: {gateway} refused the external address request: {response.error}")
    return response


async def map_udp(gateway: str, internal_port: int, external_port: int, lifetime_s: int,
                  waits: Sequence[float] = RETRY_WAITS_S) -> Response:
    """Map (lifetime > 0) or delete (lifetime 0) a UDP port; raises on errors and on an answer
    for another internal port."""
    def parse(data: bytes) -> Response:
        response = parse_response(data, OP_MAP_UDP)
        if response.result == 0 and response.internal_port != internal_port:
            raise PortMapError(f"NAT-PMP answer for internal port {response.internal_port}, asked {internal_port}")
        return response

    response = await udp_request(gateway, PORT, map_request(internal_port, external_port, lifetime_s), parse,
                                 "NAT-PMP", waits)
    if response.error:
        raise PortMapError(f"NAT-PMP: {gateway} refused to map UDP port {internal_port}: {response.error}")
    if lifetime_s and (response.external_port == 0 or response.lifetime_s == 0):
        raise PortMapError(f"NAT-PMP: {gateway} answered a mapping without port or lifetime")
    return response
