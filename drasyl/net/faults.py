"""Rate-limited reporting of unexpected exceptions in an I/O adapter's input handling.

A bug that fires on every packet must neither stop a daemon nor flood its log: each
occurrence is counted, and the traceback is logged at most once per interval with the
number of occurrences since the last report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

log = logging.getLogger("drasyl")

FAULT_LOG_INTERVAL_S = 10.0


class FaultLog:
    """Logs unexpected exceptions at most once per interval, saying how many occurred."""

    def __init__(self, counter: Counter[str], interval_s: float = FAULT_LOG_INTERVAL_S) -> None:
        self._counter = counter
        self._interval_s = interval_s
        self._last = -interval_s
        self._unreported = 0

    def report(self, during: str, exc: BaseException | None = None) -> None:
        """Call from an ``except`` block, or with ``exc``: the traceback of that exception is logged."""
        self._counter["internal_error"] += 1
        self._unreported += 1
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        self._last = now
        count, self._unreported = self._unreported, 0
        log.error("Unexpected error while %s (%d since the last report); continuing", during, count,
                  exc_info=exc or True)
