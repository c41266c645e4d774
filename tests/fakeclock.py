"""Time for the sans-I/O core tests: µs since the epoch, as the protocol counts."""

T0 = 1_700_000_000_000_000  # a fixed "now"; never 0 (0 means "unset" in places)
MS = 1_000
S = 1_000_000
