"""A path to a peer: one (local socket, remote address) pair with its own RTT window.

Shared by the node's super peer and node peer tables (spec §6.2): HELLOs mark a path
"unanswered since", ACKs clear the mark and add an RTT sample; the median of the last
five samples ranks paths. Pure data, no I/O.
"""

from __future__ import annotations

from .transmit import Address

RTT_WINDOW = 5


class Path:
    __slots__ = ("local", "remote", "rtts", "median", "unanswered_since", "last_ack")

    def __init__(self, local: Address | None, remote: Address) -> None:
        self.local = local
        self.remote = remote
        self.rtts: list[int] = []
        self.median: int | None = None  # µs; None until the first ACK
        self.unanswered_since = 0  # µs of the oldest unanswered HELLO, 0 = none pending
        self.last_ack = 0

    def hello_sent(self, now: int) -> None:
        if not self.unanswered_since:
            self.unanswered_since = now

    def ack_received(self, now: int, rtt: int | None) -> None:
        self.unanswered_since = 0
        self.last_ack = now
        if rtt is not None and rtt >= 0:
            rtts = self.rtts
            rtts.append(rtt)
            if len(rtts) > RTT_WINDOW:
                del rtts[0]
            self.median = sorted(rtts)[len(rtts) // 2]

    def unanswered_for(self, now: int) -> int:
        """µs since the oldest unanswered HELLO (0 if none is pending)."""
        return now - self.unanswered_since if self.unanswered_since else 0

    def __repr__(self) -> str:
        return f"Path({self.local}->{self.remote}, median={self.median})"


def best_path(paths, exclude_unanswered_for: int, now: int) -> Path | None:
    """The path with the lowest median RTT among those with samples that are not failing."""
    best: Path | None = None
    for p in paths:
        if p.median is None or (p.unanswered_since and now - p.unanswered_since >= exclude_unanswered_for):
            continue
        if best is None or p.median < best.median:  # type: ignore[operator]
            best = p
    return best
