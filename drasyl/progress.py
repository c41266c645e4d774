"""The proof-of-work search shown on a console while an identity is generated.

A difficulty-24 search takes 10–30 s of CPU in Python; both daemons (drasyl-sp for its
identity file, drasyl-agent for config.toml) print the same progress line meanwhile, so a
first start does not look hung. Output only; the search is :mod:`drasyl.identity`'s.
"""

from __future__ import annotations

import time
from typing import TextIO

PROGRESS_INTERVAL_S = 1.0


class PowProgress:
    """Shows a running proof-of-work search on a stream, at most once per second."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._end = "\r" if stream.isatty() else "\n"
        self._last = time.monotonic()
        self._shown = False

    def __call__(self, tried: int, expected: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        self._shown = True
        self._stream.write(
            f"Proof of work: {tried:,} of ~{expected:,} expected tries ({100 * tried // expected}%){self._end}"
        )
        self._stream.flush()

    def finish(self) -> None:
        if self._shown and self._end == "\r":
            self._stream.write("\n")
            self._stream.flush()
