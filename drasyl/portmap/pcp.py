"""PCP (RFC 6887): MAP requests for one UDP port, and ANNOUNCE to read the server's epoch.

Encoded with ``struct``: the Python PCP packages found are either unmaintained or
synchronous, and a codec of two fixed layouts is shorter than an adapter around one. Pure
functions build and parse; the coroutines do one exchange each over :func:`.net.udp_request`.
Only IPv4 is mapped (the node's UDP port behind an IPv4 NAT); addresses travel as
IPv4-mapped IPv6 (``::ffff:a.b.c.d``) as §5 requires.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .net import RETRY_WAITS_S, PortMapError, udp_request

PORT = 5351
VERSION = 2
OP_ANNOUNCE = 0
OP_MAP = 1
RESPONSE_BIT = 0x80
UDP = 17
HEADER_LEN = 24
MAP_LEN = 36
NONCE_LEN = 12
RESULTS = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}
_HEADER = struct.Struct("!BBBBII12x")  # response: version, R|opcode, reserved, result, lifetime, epoch
_MAP = struct.Struct("!12sB3xHH16s")  # nonce, protocol, reserved, internal port, external port, external IP


@dataclass(frozen=True)
class Response:
    """A parsed answer; the MAP fields are empty for ANNOUNCE and for errors."""

    opcode: int
    result: int
    lifetime_s: int  # of the mapping, or how long an error holds
    epoch: int
    nonce: bytes = b""
    internal_port: int = 0
    external_port: int = 0
    external_ip: str | None = None

    @property
    def error(self) -> str | None:
        if self.result == 0:
            return None
        return f"result {self.result} ({RESULTS.get(self.result, 'unknown')})"


def new_nonce() -> bytes:
    """A random mapping nonce: renewals and the delete must repeat it (§11.1)."""
    return os.urandom(NONCE_LEN)


def _mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(ip)}").packed


def _header(opcode: int, lifetime_s: int, client_ip: str) -> bytes:
    if not 0 <= lifetime_s <= 0xFFFFFFFF:
        raise ValueError(f"lifetime {lifetime_s} out of range")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime_s) + _mapped(client_ip)


def announce_request(client_ip: str) -> bytes:
    return _header(OP_ANNOUNCE, 0, client_ip)


def map_request(nonce: bytes, client_ip: str, internal_port: int, external_port: int, lifetime_s: int) -> bytes:
    """MAP for UDP ``internal_port``, suggesting ``external_port`` on any external address
    (``::ffff:0.0.0.0``); lifetime 0 deletes the mapping with this nonce."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("PCP nonce must be 12 bytes")
    if not 1 <= internal_port <= 0xFFFF or not 0 <= external_port <= 0xFFFF:
        raise ValueError(f"port out of range: {internal_port}, {external_port}")
    return _header(OP_MAP, lifetime_s, client_ip) + _MAP.pack(nonce, UDP, internal_port, external_port,
                                                              _mapped("0.0.0.0"))


def parse_response(data: bytes, opcode: int, nonce: bytes | None = None) -> Response | None:
    """Parse the answer to a request with ``opcode``: :class:`PortMapError` if malformed,
    None if it answers a MAP with another nonce (not ours: ignore it, §11.3).

    A result code other than 0 is returned, not raised (the answer is well-formed). Options
    after the opcode data are allowed but not interpreted (§7.3); the length must be a
    multiple of 4 and at most 1100 bytes (§7)."""
    if len(data) < HEADER_LEN:
        raise PortMapError(f"PCP answer too short ({len(data)} bytes)")
    if len(data) > 1100 or len(data) % 4:
        raise PortMapError(f"PCP answer has an invalid length ({len(data)} bytes)")
    version, r_op, _, result, lifetime, epoch = _HEADER.unpack_from(data)
    if version != VERSION:
        raise PortMapError(f"PCP answer has version {version} (a NAT-PMP-only router answers 0)")
    if r_op != RESPONSE_BIT | opcode:
        raise PortMapError(f"PCP answer has R/opcode 0x{r_op:02x}, expected 0x{RESPONSE_BIT | opcode:02x}")
    if opcode == OP_ANNOUNCE:
        return Response(opcode, result, lifetime, epoch)
    if len(data) < HEADER_LEN + MAP_LEN:
        if result != 0:  # errors may come without the opcode data (§7.2: copied if present)
            return Response(opcode, result, lifetime, epoch)
        raise PortMapError(f"PCP MAP answer too short ({len(data)} bytes)")
    got_nonce, protocol, internal, external, ext_ip = _MAP.unpack_from(data, HEADER_LEN)
    if nonce is not None and got_nonce != nonce:
        return None
    if result != 0:
        return Response(opcode, result, lifetime, epoch, got_nonce)
    if protocol != UDP:
        raise PortMapError(f"PCP MAP answer for protocol {protocol}, expected UDP")
    ip6 = ipaddress.IPv6Address(ext_ip)
    ip = ip6.ipv4_mapped
    if ip is None or ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise PortMapError(f"PCP MAP answer has an unusable external address {ip6}")
    return Response(opcode, result, lifetime, epoch, got_nonce, internal, external, str(ip))


async def announce(gateway: str, client_ip: str) -> Response:
    """ANNOUNCE (§14.1): whether a PCP server answers, and its epoch."""
    response = await udp_request(gateway, PORT, announce_request(client_ip),
                                 lambda d: parse_response(d, OP_ANNOUNCE), "PCP")
    if response.error:
        raise PortMapError(f"PCP: {gateway} answered ANNOUNCE with {response.error}")
    return response


async def map_udp(gateway: str, client_ip: str, nonce: bytes, internal_port: int, external_port: int,
                  lifetime_s: int, waits: Sequence[float] = RETRY_WAITS_S) -> Response:
    """MAP (lifetime > 0) or delete (lifetime 0) UDP ``internal_port``; raises on errors."""
    def parse(data: bytes) -> Response | None:
        response = parse_response(data, OP_MAP, nonce)
        if response is not None and response.result == 0 and response.internal_port != internal_port:
            raise PortMapError(f"PCP answer for internal port {response.internal_port}, asked {internal_port}")
        return response

    request = map_request(nonce, client_ip, internal_port, external_port, lifetime_s)
    response = await udp_request(gateway, PORT, request, parse, "PCP", waits)
    if response.error:
        raise PortMapError(f"PCP: {gateway} refused to map UDP port {internal_port}: {response.error}")
    if lifetime_s and (response.external_port == 0 or response.lifetime_s == 0):
        raise PortMapError(f"PCP: {gateway} answered a mapping without port or lifetime")
    return response
