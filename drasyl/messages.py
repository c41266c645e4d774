"""The drasyl wire codec: long and short headers, HELLO/ACK/UNITE/APP bodies, endpoints.

Pure functions over bytes (spec §4). Every malformed input raises
:class:`~drasyl.errors.MalformedMessage` (disarming failures its subclass
:class:`~drasyl.errors.DisarmError`); nothing here raises anything else for bad bytes.
No sockets, clocks or state.

Endpoint lists are kept as raw bytes (``18 × n``) in message objects: a super peer stores
and forwards them without ever decoding them, which keeps its HELLO path cheap.
Decode them with :func:`decode_endpoints` when they are needed as addresses.
"""

from __future__ import annotations

import socket
import struct
from enum import IntEnum
from typing import NamedTuple

from .crypto import ARM_OVERHEAD, arm_into, disarm_after_header
from .errors import MalformedMessage

MAGIC = 0x1E3F5001  # 22527², bytes 1e 3f 50 01
MAGIC_BYTES = MAGIC.to_bytes(4, "big")
LONG_HEADER_LEN = 79
SHORT_ID_LEN = 4
NO_SHORT_ID = b"\x00\x00\x00\x00"
FLAG_ARMED = 0x10
HOP_COUNT_OFFSET = 4
AD_START = 5  # associated data of a long header: bytes 5..79
MAX_HOP_COUNT = 7
MTU = 1472  # largest datagram drasyl-rs reads or sends
ENDPOINT_LEN = 18
HELLO_MAX_ENDPOINTS = 15
UNITE_MAX_ENDPOINTS = 16
HELLO_SUPER_PEER_MIN = 16
HELLO_SUPER_PEER_MAX = HELLO_SUPER_PEER_MIN + ENDPOINT_LEN * HELLO_MAX_ENDPOINTS  # 286
UNITE_MIN = 32
UNITE_MAX = UNITE_MIN + ENDPOINT_LEN * UNITE_MAX_ENDPOINTS  # 320
#: Largest APP payloads that fit into one MTU-sized armed datagram.
MAX_ARMED_LONG_APP = MTU - LONG_HEADER_LEN - ARM_OVERHEAD  # 1345
MAX_ARMED_SHORT_APP = MTU - SHORT_ID_LEN - ARM_OVERHEAD  # 1420


class MessageType(IntEnum):
    ACK = 0
    APP = 1
    HELLO = 2
    UNITE = 3


ACK, APP, HELLO, UNITE = MessageType.ACK, MessageType.APP, MessageType.HELLO, MessageType.UNITE

_HEADER = struct.Struct(">IBBi32s32siB")
_U64 = struct.Struct(">Q")
_HELLO_SP = struct.Struct(">QQ")
_HELLO_NODE = struct.Struct(">Q4s")
_U16 = struct.Struct(">H")
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
#: Builds a NamedTuple from a tuple of its fields in C; ``cls(...)`` goes through a generated
#: Python ``__new__`` that costs more than the parsing (used on the per-packet paths).
_tuple_new = tuple.__new__

#: A UDP address as Python's socket module uses it: (host text, port).
Endpoint = tuple[str, int]


class LongHeader(NamedTuple):
    hop_count: int
    armed: bool
    network_id: int
    recipient: bytes
    sender: bytes
    proof_of_work: int
    message_type: int


def parse_long_header(data: bytes) -> LongHeader:
    """Parse the 79-byte long header (spec §4.2)."""
    if len(data) < LONG_HEADER_LEN:
        raise MalformedMessage(f"{len(data)} bytes is shorter than a long header")
    magic, hop, flags, network_id, recipient, sender, pow_, mtype = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessage("bad magic number")
    if mtype > 3:
        raise MalformedMessage(f"unknown message type {mtype}")
    return _tuple_new(LongHeader, (hop, (flags & FLAG_ARMED) != 0, network_id, recipient, sender, pow_, mtype))


def encode_long_header(
    message_type: int,
    network_id: int,
    recipient: bytes,
    sender: bytes,
    proof_of_work: int,
    armed: bool,
    hop_count: int = 0,
) -> bytes:
    flags = FLAG_ARMED if armed else 0
    return _HEADER.pack(MAGIC, hop_count, flags, network_id, recipient, sender, proof_of_work, message_type)


def encode_message(
    message_type: int,
    network_id: int,
    recipient: bytes,
    sender: bytes,
    proof_of_work: int,
    body: bytes,
    tx_key: bytes | None,
    random: bytes | None = None,
) -> bytes | bytearray:
    """A complete long-header message; armed with ``tx_key`` unless it is ``None``."""
    if tx_key is None:
        return encode_long_header(message_type, network_id, recipient, sender, proof_of_work, False) + body
    out = bytearray(LONG_HEADER_LEN + ARM_OVERHEAD + len(body))
    _HEADER.pack_into(out, 0, MAGIC, 0, FLAG_ARMED, network_id, recipient, sender, proof_of_work, message_type)
    arm_into(out, LONG_HEADER_LEN, body, tx_key, AD_START, random)
    return out


def open_body(data: bytes, header: LongHeader, rx_key: bytes | None) -> bytes:
    """The plaintext body of a long-header message (disarmed with ``rx_key`` if armed)."""
    if not header.armed:
        return data[LONG_HEADER_LEN:]
    if rx_key is None:
        raise MalformedMessage("armed message but no session key")
    return disarm_after_header(data, AD_START, LONG_HEADER_LEN, rx_key)


def encode_short(
    short_id: bytes, payload: bytes, tx_key: bytes | None, random: bytes | None = None
) -> bytes | bytearray:
    """A short-header APP (spec §4.3): short id ‖ payload, armed with AD = short id."""
    if tx_key is None:
        return short_id + payload
    out = bytearray(SHORT_ID_LEN + ARM_OVERHEAD + len(payload))
    out[:SHORT_ID_LEN] = short_id
    arm_into(out, SHORT_ID_LEN, payload, tx_key, 0, random)
    return out


def open_short(data: bytes, rx_key: bytes | None) -> bytes:
    if rx_key is None:
        return data[SHORT_ID_LEN:]
    return disarm_after_header(data, 0, SHORT_ID_LEN, rx_key)


# --- endpoints ---------------------------------------------------------------------------


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """18 bytes: port(2) ‖ IPv6 address; IPv4 as ``::ffff:a.b.c.d``."""
    host, port = endpoint[0], endpoint[1]
    try:
        if ":" in host:
            raw = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        else:
            raw = _V4_MAPPED + socket.inet_pton(socket.AF_INET, host)
        return _U16.pack(port) + raw
    except (OSError, struct.error):
        raise MalformedMessage(f"not an IP endpoint: {endpoint!r}") from None


def encode_endpoints(endpoints: list[Endpoint] | tuple[Endpoint, ...]) -> bytes:
    return b"".join(encode_endpoint(e) for e in endpoints)


def decode_endpoints(raw: bytes) -> list[Endpoint]:
    """Endpoints from ``18 × n`` bytes; IPv4-mapped addresses become IPv4 again."""
    if len(raw) % ENDPOINT_LEN:
        raise MalformedMessage("endpoint list is not a multiple of 18 bytes")
    out: list[Endpoint] = []
    for i in range(0, len(raw), ENDPOINT_LEN):
        port = _U16.unpack_from(raw, i)[0]
        addr = raw[i + 2 : i + ENDPOINT_LEN]
        if addr[:12] == _V4_MAPPED:
            out.append((socket.inet_ntop(socket.AF_INET, addr[12:]), port))
        else:
            out.append((socket.inet_ntop(socket.AF_INET6, addr), port))
    return out


def _without_port_zero(raw: bytes) -> bytes:
    """Drop endpoints whose port is 0 (drasyl-rs skips them when reading a list)."""
    if 0 not in raw[::ENDPOINT_LEN] or 0 not in raw[1::ENDPOINT_LEN]:
        return raw  # the common case, told by two slices instead of a loop per endpoint
    starts = range(0, len(raw), ENDPOINT_LEN)
    if all(raw[i] or raw[i + 1] for i in starts):
        return raw
    return b"".join(raw[i : i + ENDPOINT_LEN] for i in starts if raw[i] or raw[i + 1])


# --- bodies ------------------------------------------------------------------------------


class HelloSuperPeer(NamedTuple):
    """HELLO from a node to a super peer: time (µs), child_time (≠ 0), raw endpoints."""

    time: int
    child_time: int = 1
    endpoints: bytes = b""

    def encode(self) -> bytes:
        return _HELLO_SP.pack(self.time, self.child_time) + self.endpoints

    @classmethod
    def parse(cls, body: bytes) -> HelloSuperPeer:
        n = len(body)
        if n < HELLO_SUPER_PEER_MIN:
            raise MalformedMessage("HELLO body shorter than 16 bytes")
        if n > HELLO_SUPER_PEER_MAX:  # cut, not rejected: Java senders may send more
            body = body[:HELLO_SUPER_PEER_MAX]
            n = HELLO_SUPER_PEER_MAX
        if (n - HELLO_SUPER_PEER_MIN) % ENDPOINT_LEN:
            raise MalformedMessage("HELLO endpoints are not a multiple of 18 bytes")
        time, child_time = _HELLO_SP.unpack_from(body)
        if child_time == 0:
            raise MalformedMessage("HELLO child_time is 0")
        return _tuple_new(cls, (time, child_time, _without_port_zero(bytes(body[HELLO_SUPER_PEER_MIN:]))))


class HelloNodePeer(NamedTuple):
    """HELLO between nodes: time (µs) and the sender's rx short id for the recipient."""

    time: int
    short_id: bytes = NO_SHORT_ID

    def encode(self) -> bytes:
        return _HELLO_NODE.pack(self.time, self.short_id)

    @classmethod
    def parse(cls, body: bytes) -> HelloNodePeer:
        if len(body) < 12:
            raise MalformedMessage("node HELLO body shorter than 12 bytes")
        return cls(*_HELLO_NODE.unpack_from(body))


class Ack(NamedTuple):
    """ACK: the answered HELLO's time, echoed unchanged."""

    time: int

    def encode(self) -> bytes:
        return _U64.pack(self.time)

    @classmethod
    def parse(cls, body: bytes) -> Ack:
        if len(body) < 8:
            raise MalformedMessage("ACK body shorter than 8 bytes")
        return cls(_U64.unpack_from(body)[0])


class Unite(NamedTuple):
    """UNITE: the other peer's public key and where it may be reachable (raw endpoints)."""

    address: bytes
    endpoints: bytes = b""

    def encode(self) -> bytes:
        return self.address + self.endpoints

    @classmethod
    def parse(cls, body: bytes) -> Unite:
        n = len(body)
        if n < UNITE_MIN:
            raise MalformedMessage("UNITE body shorter than 32 bytes")
        if n > UNITE_MAX:
            body = body[:UNITE_MAX]
            n = UNITE_MAX
        if (n - UNITE_MIN) % ENDPOINT_LEN:
            raise MalformedMessage("UNITE endpoints are not a multiple of 18 bytes")
        return cls(bytes(body[:32]), _without_port_zero(bytes(body[UNITE_MIN:])))
