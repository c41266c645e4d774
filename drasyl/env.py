"""Reading ``DRASYL_*`` environment variables with clear errors.

drasyl-rs silently falls back to the default when a value does not parse; we report the
variable and the bad value instead (a typo in a unit file should not go unnoticed).
"""

from __future__ import annotations

import os

from .errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")


def env_int(name: str, default: int, lo: int, hi: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        n = int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if not lo <= n <= hi:
        raise ConfigError(f"{name}={n} is out of range ({lo}..{hi})")
    return n
