"""Which peers can take IPv6: learned on the wire, without a byte drasyl-rs would see differently.

Every member of a network has an overlay IPv6 address (:mod:`.netconfig`), but a drasyl-rs
agent carries IPv4 only: an IPv6 packet sent to it would be dropped there with an error logged
per packet. So an IPv6 packet goes to a peer only once the peer is known to be **capable**,
and nothing of IPv6 is ever sent to find that out. Instead each agent sends an
**announcement**: an ordinary IPv4/UDP packet from its overlay IPv4 address to the peer's
(port 22527 to 22527), whose UDP payload starts with the drasyl magic number, then
:data:`TAG` and a flags byte (:data:`ASK`: "answer me"). Both agents drop UDP starting with the
magic before it reaches a TUN (agent.md §4: "drasyl control traffic", a loop guard), so a
drasyl-rs agent discards the announcement silently, and an older drasyl-py agent counts it as
``rx_drasyl_control``; neither passes it to its kernel. This agent takes an announcement off
its receive path instead, after the usual anti-spoofing check of its IPv4 addresses, and
marks the sender capable (if the sender may get IPv6 from us and our TUN carries IPv6); an
announcement with :data:`ASK` is answered (at most one answer per peer and second). Any
IPv6 packet that passes the anti-spoofing check marks its sender capable too.

When: to every peer of the IPv6 tables that is not capable yet, when it enters the tables
and then with back-off (:data:`FIRST_S` doubling up to :data:`MAX_S`), and at once when the
peer's path changes (it came up). Two agents therefore learn each other with the first
announcement that gets through either way; the one that starts later announces to the other.
Until then their IPv6 packets are dropped and counted (``tx_ipv6_not_capable``). Capability
is forgotten when a peer leaves the tables. Pure: the daemon sends and receives.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ..messages import MAGIC_BYTES
from ..tun.packet import PROTO_UDP, UDP_HEADER

PORT = 22527
TAG = b"drasyl-agent ipv6 1"  # version 1 of the announcement
ASK = 0x01  # flags: the sender wants an answer
FIRST_S = 2.0
MAX_S = 300.0
ANSWER_GAP_S = 1.0
_PAYLOAD = MAGIC_BYTES + TAG
_HEADER = struct.Struct("!BBHHHBBHII")  # the IPv4 header without options
_UDP = struct.Struct("!HHHH")


def announcement(src4: int, dst4: int, ask: bool) -> bytes:
    """The IPv4/UDP announcement ``src4`` → ``dst4`` (overlay IPv4 addresses as ints)."""
    payload = _PAYLOAD + bytes([ASK if ask else 0])
    total = 20 + UDP_HEADER + len(payload)
    header = _HEADER.pack(0x45, 0, total, 0, 0x4000, 64, PROTO_UDP, 0, src4, dst4)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + _UDP.pack(PORT, PORT, UDP_HEADER + len(payload), 0) + payload


def announcement_flags(pkt) -> int | None:
    """The flags of an announcement (an IPv4 packet that :func:`is_drasyl_control` matched), or None."""
    start = (pkt[0] & 0x0F) * 4 + UDP_HEADER
    end = start + len(_PAYLOAD)
    if len(pkt) != end + 1 or bytes(pkt[start:end]) != _PAYLOAD:
        return None
    return pkt[end]


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Capabilities:
    """Who takes IPv6, and when to announce to whom (module docstring); times are monotonic seconds."""

    def __init__(self) -> None:
        self.capable: set[bytes] = set()
        self._due: dict[bytes, tuple[float, float]] = {}  # peer → (next announcement, back-off)
        self._answered: dict[bytes, float] = {}
        self.sent = 0  # announcements sent
        self.received = 0  # announcements taken

    def learned(self, pk: bytes) -> bool:
        """``pk`` sent IPv6 or an announcement; True if that is news."""
        if pk in self.capable:
            return False
        self.capable.add(pk)
        self._due.pop(pk, None)
        return True

    def should_answer(self, pk: bytes, now: float) -> bool:
        """An announcement that asks was taken: answer it (at most every :data:`ANSWER_GAP_S`)?"""
        if now - self._answered.get(pk, -ANSWER_GAP_S) < ANSWER_GAP_S:
            return False
        self._answered[pk] = now
        return True

    def keep(self, peers6: Iterable[bytes]) -> None:
        """The IPv6 tables changed: forget peers not in them; new ones are due at once."""
        peers = set(peers6)
        self.capable &= peers
        self._due = {pk: v for pk, v in self._due.items() if pk in peers}
        self._answered = {pk: t for pk, t in self._answered.items() if pk in peers}
        for pk in peers - self.capable - self._due.keys():
            self._due[pk] = (0.0, FIRST_S)

    def again(self, pk: bytes) -> None:
        """The peer's path changed: announce at the next look, back-off from the start."""
        if pk in self._due:
            self._due[pk] = (0.0, FIRST_S)

    def due(self, now: float) -> list[bytes]:
        """Peers to announce to now (each then waits twice as long, up to :data:`MAX_S`)."""
        out = []
        for pk, (when, backoff) in self._due.items():
            if when <= now:
                out.append(pk)
                self._due[pk] = (now + backoff, min(backoff * 2, MAX_S))
        return out
