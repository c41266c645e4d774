"""A path to a peer: one (local socket, remote address) pair with its own RTT window.

Shared by the node's super peer and node peer tables (spec §6.2): HELLOs mark a path
"unanswered since", ACKs clear the mark and add an RTT sample; the median of the last
five samples ranks paths. Pure data, no I/O.

Each HELLO sent is remembered as (wire timestamp, monotonic send time) for the last
:data:`STAMP_WINDOW` HELLOs. An ACK counts only if it echoes one of them: its RTT is then
measured on the monotonic clock (right across wall-clock steps, never negative), and a
replayed or forged ACK cannot keep a dead path alive.
"""

from __future__ import annotations

from .transmit import Address

RTT_WINDOW = 5
STAMP_WINDOW = 3  # HELLOs whose ACK is still accepted: one per interval, so ~15 s late at most


class Path:
    __slots__ = ("local", "remote", "rtts", "median", "unanswered_since", "last_ack", "stamps", "rehello_at",
                 "origin")

    def __init__(self, local: Address | None, remote: Address, origin: str = "punch") -> None:
        self.local = local
        self.remote = remote
        self.origin = origin  # how it was found: punch, lan, mapping or probe (status only)
        self.rtts: list[int] = []
        self.median: int | None = None  # µs; None until the first ACK
        self.unanswered_since = 0  # µs of the oldest unanswered HELLO, 0 = none pending
        self.last_ack = 0
        self.stamps: list[tuple[int, int]] = []  # (wire timestamp, monotonic µs) per HELLO sent
        self.rehello_at = 0  # µs of the last HELLO sent in answer to the peer's (rate limit)

    def hello_sent(self, now: int, stamp: int) -> None:
        if not self.unanswered_since:
            self.unanswered_since = now
        stamps = self.stamps
        stamps.append((stamp, now))
        if len(stamps) > STAMP_WINDOW:
            del stamps[0]

    def sent_at(self, stamp: int) -> int | None:
        """Monotonic µs when the HELLO with wire timestamp ``stamp`` went out on this path."""
        for s, sent in self.stamps:
            if s == stamp:
                return sent
        return None

    def ack_received(self, now: int, sent: int) -> None:
        """An ACK echoing the HELLO sent at monotonic ``sent``."""
        self.unanswered_since = 0
        self.last_ack = now
        rtts = self.rtts
        rtts.append(now - sent)
        if len(rtts) > RTT_WINDOW:
            del rtts[0]
        self.median = sorted(rtts)[len(rtts) // 2]

    def unanswered_for(self, now: int) -> int:
        """µs since the oldest unanswered HELLO (0 if none is pending)."""
        return now - self.unanswered_since if self.unanswered_since else 0

    def __repr__(self) -> str:
        return f"Path({self.local}->{self.remote}, median={self.median})"


#: A global IPv6 path wins over IPv4 unless its RTT is more than this factor higher: IPv6 needs
#: no NAT, so its mapping cannot be lost or rebound under the flow.
IPV6_PREFERENCE = 1.25


def best_path(paths, exclude_unanswered_for: int, now: int, prefer_ipv6: bool = False) -> Path | None:
    """The path with the lowest median RTT among those with samples that are not failing
    (with ``prefer_ipv6``, a global IPv6 path's RTT counts :data:`IPV6_PREFERENCE` times less)."""
    best: Path | None = None
    best_rank = 0.0
    for p in paths:
        if p.median is None or (p.unanswered_since and now - p.unanswered_since >= exclude_unanswered_for):
            continue
        rank = p.median
        if prefer_ipv6 and ":" in p.remote[0] and not p.remote[0].startswith(("fe80", "fc", "fd")):
            rank = rank / IPV6_PREFERENCE
        if best is None or rank < best_rank:
            best, best_rank = p, rank
    return best
