"""pyroute2's ``IPRoute`` and ``NetlinkError`` without running pyroute2's package ``__init__``.

``import pyroute2`` (also ``from pyroute2.x import y``: a submodule's parents are imported
first) runs an ``__init__`` that imports every part of the library, ~160 modules (IPDB, NDB
with sqlite3, nftables, WireGuard, nl80211, plan9, …): 12 MiB of the agent's RSS. The
agent uses ``IPRoute`` and ``NetlinkError``, whose modules need ~100 of them (5.5 MiB,
bench/agent_rss.py). So the package module is registered without its ``__init__`` having
run; a submodule asked of it is imported, and the first other top-level name runs the real
``__init__`` then, so ``from pyroute2 import Conntrack`` elsewhere in the process still works.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys


def _package_without_init(name: str) -> None:
    """Register package ``name`` in :data:`sys.modules` with its ``__init__`` deferred."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a package: the import below reports it
    package = importlib.util.module_from_spec(spec)

    def deferred(attr: str) -> object:
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        del package.__getattr__
        spec.loader.exec_module(package)  # the real __init__, once, on the first other name
        return getattr(package, attr)

    package.__getattr__ = deferred  # type: ignore[method-assign]
    sys.modules[name] = package


_package_without_init("pyroute2")

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
