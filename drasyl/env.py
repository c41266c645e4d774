"""Parsing ``DRASYL_*`` environment values strictly, with errors that name the variable.

drasyl-rs silently falls back to the default when a value does not parse; we report the
variable and the bad value instead (a typo in a unit file should not go unnoticed). Values
are parsed as Rust parses them: integers without spaces or underscores, booleans exactly
``true``/``false``. Pure functions of the values given; no other I/O.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Mapping

from .errors import ConfigError

_INTEGER = re.compile(r"[+-]?[0-9]+")  # Rust's integer FromStr: no spaces, no underscores

#: A level above CRITICAL: nothing is logged (``off`` in tracing).
LOG_OFF = logging.CRITICAL + 10
#: Below DEBUG: ``trace`` also lets the libraries' debug records through (where a program
#: tells its own loggers from the libraries'; elsewhere it is DEBUG).
TRACE = logging.DEBUG - 5
_LEVELS = {
    "off": LOG_OFF, "0": LOG_OFF,
    "error": logging.ERROR, "1": logging.ERROR,
    "warn": logging.WARNING, "warning": logging.WARNING, "2": logging.WARNING,
    "info": logging.INFO, "3": logging.INFO,
    "debug": logging.DEBUG, "4": logging.DEBUG,
    "trace": TRACE, "5": TRACE,
}


def invalid(name: str, value: str, why: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is invalid: {why}")


def integer(name: str, value: str, lo: int, hi: int) -> int:
    if not _INTEGER.fullmatch(value):
        raise invalid(name, value, "not an integer")
    number = int(value)
    if not lo <= number <= hi:
        raise invalid(name, value, f"must be between {lo} and {hi}")
    return number


def boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise invalid(name, value, "must be 'true' or 'false'")
    return value == "true"


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """The environment's ``name``, one of ``choices`` (default: the first); ConfigError otherwise."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise invalid(name, value, f"expected {', '.join(choices[:-1])} or {choices[-1]}")
    return value


def env_int(name: str, default: int, lo: int, hi: int) -> int:
    value = os.environ.get(name)
    return default if value is None else integer(name, value, lo, hi)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else boolean(name, value)


def log_level(env: Mapping[str, str], own: str = "DRASYL_LOG_LEVEL", default: int = logging.ERROR) -> int:
    """``own`` (e.g. ``DRASYL_LOG_LEVEL``) if set, else the most verbose level in ``RUST_LOG``.

    ``RUST_LOG`` uses tracing's filter syntax (``warn,drasyl_sp=debug``). We have one log
    stream, so the most verbose directive wins; a bare target (``drasyl_sp``) means every
    level, as in tracing. Unset or empty: ``default`` (drasyl-rs: errors only).
    """
    value = env.get(own, "").strip()
    if value:
        level = _LEVELS.get(value.lower())
        if level is None:
            raise invalid(own, value, "must be one of error, warn, info, debug, trace, off")
        return level
    rust_log = env.get("RUST_LOG", "")
    levels: list[int] = []
    for directive in filter(None, (d.strip() for d in rust_log.split(","))):
        target, equals, value = directive.rpartition("=")
        if equals and not any(c in value for c in "]}"):
            level = _LEVELS.get(value.lower())
            if level is None:
                raise ConfigError(f"RUST_LOG={rust_log!r} is invalid: unknown level {value!r} in {directive!r}")
        else:
            level = _LEVELS.get(directive.lower(), logging.DEBUG)  # bare target: all levels
        levels.append(level)
    return min(levels, default=default)
