"""The two clocks of a drasyl daemon, read only by I/O adapters, never by the sans-I/O cores.

- **Monotonic µs** (:func:`monotonic_us`) drive everything that is scheduled or expires:
  housekeeping ticks, peer expiry, path timeouts, RTTs, TCP idle and registration deadlines.
  It never steps, so a laptop whose wall clock jumps (NTP sync after boot, suspend, manual
  change) neither stalls its timers nor fires a burst of them.
- **Wall µs since the Unix epoch** appear only on the wire: HELLO timestamps and the age
  checks of received HELLOs/ACKs (spec §4.4, §6.1.6, §6.2.5).

Cores take ``now`` as monotonic µs and hold ``wall_offset`` (wall − monotonic, µs), which the
adapter refreshes with :func:`wall_offset_us` whenever it feeds them a batch or a tick; the
core's wall time is ``now + wall_offset``. Tests set both by hand (a fake clock), so every
clock step is a plain unit test.
"""

from __future__ import annotations

import time


def monotonic_us() -> int:
    """µs on the monotonic clock: for timers, expiry and RTTs."""
    return time.monotonic_ns() // 1000


def wall_us() -> int:
    """µs since the Unix epoch: for timestamps on the wire only."""
    return time.time_ns() // 1000


def wall_offset_us() -> int:
    """wall − monotonic in µs: what a core adds to its monotonic ``now`` for wire timestamps."""
    return time.time_ns() // 1000 - time.monotonic_ns() // 1000
