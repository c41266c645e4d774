"""The optional C accelerators: which are loaded, and what they need from Python.

``pip install .`` compiles the hot paths where a C compiler is found, and skips them otherwise
(setup.py): a super peer's HELLO→ACK and relay loop (:mod:`drasyl.superpeer._fast`) and the
agent's TUN ⇄ UDP path for established peers (:mod:`drasyl.agent._fast`). What they share in
C is ``drasyl/native.h``. The pure Python code stays the reference and is what runs without
them; both give the same bytes, counters and state, and the tests run against each.

``DRASYL_NATIVE`` chooses: ``auto`` (default) uses an accelerator that was built, ``off``
never does (to rule it out when debugging), ``on`` requires it and fails at start-up when it
was not built (for deployments that count on it; CI's tests fail without the build).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .env import env_choice, invalid

CHOICES = ("auto", "on", "off")


def choice() -> str:
    """``DRASYL_NATIVE`` (auto, on or off; default auto): ConfigError otherwise."""
    return env_choice("DRASYL_NATIVE", CHOICES)


def load(module: str) -> ModuleType | None:
    """The accelerator ``module`` (e.g. ``drasyl.superpeer._fast``), or None for pure Python.

    ConfigError for a bad ``DRASYL_NATIVE``, or for ``on`` when ``module`` was not built.
    """
    wanted = choice()
    if wanted == "off":
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        if wanted == "on":
            raise invalid("DRASYL_NATIVE", "on", f"{module} was not built (no C compiler at install?)") from None
        return None


def aegis_functions() -> tuple[int, int]:
    """Addresses of libaegis' ``aegis256x2_encrypt_detached`` and ``..._decrypt_detached``.

    The ``aeg`` package links libaegis into its cffi module, which exports no C symbols, so an
    accelerator gets the two functions as addresses from cffi instead of linking them itself:
    the same code that :mod:`drasyl.crypto` calls, no second copy of libaegis to keep in step.
    """
    from aeg._loader import ffi, lib

    return tuple(int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))  # type: ignore[return-value]
                 for name in ("aegis256x2_encrypt_detached", "aegis256x2_decrypt_detached"))
