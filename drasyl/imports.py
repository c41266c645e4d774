"""Import a third-party package's submodules without running its package ``__init__``.

A package whose ``__init__`` imports all of its parts makes every user pay for all of them:
``import pyroute2`` loads ~160 modules where the agent needs ~100 (5 MiB of RSS), ``import
aiohttp`` loads its HTTP client also where only ``aiohttp.web`` serves the REST API (4 MiB;
bench/agent_rss.py). :func:`defer_package_init` registers the package module with its
``__init__`` not run yet: a submodule asked of it is imported, a listed string constant is
read from the ``__init__`` source, and the first other top-level name runs the real
``__init__`` then, so code elsewhere that uses ``pkg.Anything`` still works: a new release
that needs more of its ``__init__`` loses the saving, never a name.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys


def defer_package_init(name: str, constants: tuple[str, ...] = ()) -> None:
    """Register package ``name`` in :data:`sys.modules` with its ``__init__`` deferred (no-op
    when it is imported already or is not a package); ``constants`` are simple string
    assignments of its ``__init__`` (e.g. ``__version__``) that its submodules import."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.origin is None or spec.submodule_search_locations is None:
        return  # the import that follows reports what is wrong
    package = importlib.util.module_from_spec(spec)
    with open(spec.origin, encoding="utf-8") as source:
        text = source.read()
    for constant in constants:
        match = re.search(rf"^{re.escape(constant)}\s*=\s*(['\"])([^'\"]*)\1\s*$", text, re.M)
        if match is not None:
            setattr(package, constant, match[2])

    def deferred(attr: str) -> object:
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        del package.__getattr__
        spec.loader.exec_module(package)  # the real __init__, once
        return getattr(package, attr)

    package.__getattr__ = deferred  # type: ignore[attr-defined]
    sys.modules[name] = package
