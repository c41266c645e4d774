"""Which asyncio event loop the daemons run on: uvloop where it is installed, else asyncio's own.

A packet that arrives at an idle agent wakes the event loop once per hop. asyncio's selector
loop spends that wake-up in Python (``_run_once``, ``selectors``, handle dispatch), which on this
project's 2-vCPU VMs cost ~15 % of a ping's round trip through two agents; uvloop does the
same in C (bench/README.md "Tunnel latency"). Nothing in drasyl depends on a loop's specifics,
so uvloop is a drop-in: it is a dependency on Linux x86_64/aarch64 (wheels, no compiler), and
``DRASYL_EVENT_LOOP=asyncio`` chooses the standard loop (to rule uvloop out when debugging).
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

from .env import env_choice, invalid

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def choice() -> str:
    """``DRASYL_EVENT_LOOP`` (auto, uvloop or asyncio; default auto): ConfigError otherwise."""
    return env_choice("DRASYL_EVENT_LOOP", CHOICES)


def _uvloop(required: bool) -> Any:
    try:
        import uvloop
    except ImportError:
        if required:
            raise invalid("DRASYL_EVENT_LOOP", "uvloop", "uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop (see the module docstring)."""
    try:
        wanted = choice()
        uvloop = None if wanted == "asyncio" else _uvloop(wanted == "uvloop")
    except BaseException:
        main.close()  # never awaited: no "coroutine was never awaited" warning on a bad value
        raise
    if uvloop is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def name() -> str:
    """The running loop's kind, for logs and status: ``uvloop`` or ``asyncio``."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
