"""Parsing a network config's TOML in a short-lived child process.

A network config is untrusted, up to 4 MiB, and TOML parsing is the costly part of taking it
in (a 10 000-node config: ~0.35 s of CPU). In a thread of the agent that CPU time is held
against the data path through the GIL: each time the TUN/UDP loop returns from a syscall it
waits up to the switch interval for the parser (bench/config_stall.py measured a 1 s stall
under iperf3). A child process parses on the other core without the GIL, cannot take the
agent down (a parser bug, exhausted memory: its address space is capped at
:data:`CHILD_MEMORY`), and is killed after :data:`PARSE_TIMEOUT_S`. It runs ``python -I -S``
with only ``tomllib``: nothing of the environment or of site-packages is loaded, and it
starts in ~20 ms. It only runs when a config's text changed. The document comes back pickled
(the child is this code, run as the same user; the config's text only reaches it as data).
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from typing import Any

from .netconfig import NetworkConfigError, check_size, toml_error

PARSE_TIMEOUT_S = 30.0
CHILD_MEMORY = 1 << 30

_CHILD = f"""
import pickle, resource, sys, tomllib
resource.setrlimit(resource.RLIMIT_AS, ({CHILD_MEMORY}, {CHILD_MEMORY}))
try:
    out = tomllib.loads(sys.stdin.buffer.read().decode("utf-8"))
except Exception as exc:  # TOMLDecodeError, RecursionError, MemoryError: the parent says what it means
    out = exc
sys.stdout.buffer.write(pickle.dumps(out))
"""


async def parse_toml(text: str, source: str) -> bytes:
    """The TOML document of ``text``, pickled (:func:`document` reads it); :class:`NetworkConfigError`
    when the child fails or takes too long."""
    check_size(text, source)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _CHILD, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(PARSE_TIMEOUT_S):
            out, err = await child.communicate(text.encode("utf-8"))
    except TimeoutError:
        raise NetworkConfigError(source, f"parsing took longer than {PARSE_TIMEOUT_S:g} s") from None
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if child.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {child.returncode}"]
        raise NetworkConfigError(source, f"the TOML parser failed: {last[0][:200]}")
    return out


def document(pickled: bytes, source: str) -> dict[str, Any]:
    """Unpickle what :func:`parse_toml` returned (in the work thread: ~15 ms for 4 MiB)."""
    out = pickle.loads(pickled)
    if isinstance(out, BaseException):
        raise toml_error(out, source)
    return out
