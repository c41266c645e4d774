"""The part of STUN (RFC 5389) that mapping discovery needs: Binding request and success response.

drasyl super peers never tell a node the address they observe (spec §6.1, step 9), so a
node cannot learn its public mapping from drasyl traffic. Our super peer therefore answers
STUN Binding requests on its UDP sockets, and ``drasyl-agent netcheck`` asks them. A STUN
message never looks like drasyl: it starts with type ``00 01`` and has the magic cookie
``21 12 a4 42`` at offset 4, while every long-header drasyl datagram starts with the magic
``1e 3f 50 01`` (spec §4.2); short headers only go between nodes, never to a super peer.

Only what is needed: parse a Binding request (the transaction id), build a success response
with one XOR-MAPPED-ADDRESS (IPv4 or IPv6, no MESSAGE-INTEGRITY or FINGERPRINT: nothing is
authenticated, the answer only reports an address), build a request and parse a response.
Pure functions on bytes; no sockets.
"""

from __future__ import annotations

import ipaddress
import os
import struct

HEADER_LEN = 20
MAGIC_COOKIE = b"\x21\x12\xa4\x42"
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
#: The largest request answered: RFC 5389 §7.1's 548-byte limit for IPv4 paths without a
#: known MTU; nothing legitimate is longer.
MAX_REQUEST_LEN = 548
#: A response may be at most this much longer than its request (no amplification beyond it).
MAX_GROWTH = 12
#: Our requests carry SOFTWARE, which makes them 48 bytes long: long enough for an IPv6
#: answer (44 bytes; a bare 20-byte request only allows 32, an IPv4 answer) within :data:`MAX_GROWTH`.
CLIENT_SOFTWARE = b"drasyl-agent netcheck"


def is_stun(data: bytes | bytearray) -> bool:
    """Cheap test on the first bytes: could this be a STUN message?"""
    return len(data) >= HEADER_LEN and data[0] < 0x40 and data[4:8] == MAGIC_COOKIE


def is_binding_request(data: bytes | bytearray) -> bool:
    """Type Binding request and the cookie: never true for a drasyl datagram (magic ``1e 3f``)."""
    return data[:2] == b"\x00\x01" and data[4:8] == MAGIC_COOKIE


def parse_binding_request(data: bytes | bytearray) -> bytes | None:
    """The transaction id of a well-formed Binding request, else None.

    Well-formed: the length field matches, is a multiple of 4, and the attributes tile the
    body exactly (their contents are not interpreted).
    """
    if not is_stun(data) or len(data) > MAX_REQUEST_LEN:
        return None
    kind, length = struct.unpack_from("!HH", data)
    if kind != BINDING_REQUEST or length != len(data) - HEADER_LEN or length % 4:
        return None
    if _attributes(data) is None:
        return None
    return bytes(data[8:20])


def binding_response(transaction_id: bytes, mapped: tuple) -> bytes:
    """A success response telling the requester ``mapped`` = (ip, port, ...) as XOR-MAPPED-ADDRESS."""
    ip = ipaddress.ip_address(mapped[0].split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 client: answer in its own family
    key = MAGIC_COOKIE + transaction_id
    address = _xor(ip.packed, key)
    family = 0x01 if ip.version == 4 else 0x02
    value = struct.pack("!BBH", 0, family, mapped[1] ^ 0x2112) + address
    attribute = struct.pack("!HH", XOR_MAPPED_ADDRESS, len(value)) + value
    return struct.pack("!HH", BINDING_SUCCESS, len(attribute)) + MAGIC_COOKIE + transaction_id + attribute


def binding_request(transaction_id: bytes | None = None) -> tuple[bytes, bytes]:
    """A Binding request with SOFTWARE (see :data:`CLIENT_SOFTWARE`) and its transaction id."""
    tid = transaction_id if transaction_id is not None else os.urandom(12)
    padded = CLIENT_SOFTWARE + b"\0" * (-len(CLIENT_SOFTWARE) % 4)
    attribute = struct.pack("!HH", SOFTWARE, len(CLIENT_SOFTWARE)) + padded
    return struct.pack("!HH", BINDING_REQUEST, len(attribute)) + MAGIC_COOKIE + tid + attribute, tid


def parse_binding_response(data: bytes | bytearray, transaction_id: bytes) -> tuple[str, int] | None:
    """The (ip, port) of the XOR-MAPPED-ADDRESS in a success response to ``transaction_id``."""
    if not is_stun(data) or bytes(data[8:20]) != transaction_id:
        return None
    kind, length = struct.unpack_from("!HH", data)
    if kind != BINDING_SUCCESS or length != len(data) - HEADER_LEN:
        return None
    for attr, value in _attributes(data) or ():
        if attr != XOR_MAPPED_ADDRESS or len(value) < 4:
            continue
        family, xport = struct.unpack_from("!xBH", value)
        size = {0x01: 4, 0x02: 16}.get(family)
        if size is None or len(value) != 4 + size:
            return None
        packed = _xor(value[4:], MAGIC_COOKIE + transaction_id)
        return str(ipaddress.ip_address(packed)), xport ^ 0x2112
    return None


def _attributes(data: bytes | bytearray) -> list[tuple[int, bytes]] | None:
    """(type, value) of every attribute, or None when they do not tile the body."""
    out, offset, end = [], HEADER_LEN, len(data)
    while offset < end:
        if end - offset < 4:
            return None
        attr, length = struct.unpack_from("!HH", data, offset)
        start = offset + 4
        offset = start + length + (-length % 4)
        if offset > end:
            return None
        out.append((attr, bytes(data[start : start + length])))
    return out


def _xor(data: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, key))
