"""pyroute2's ``IPRoute`` and ``NetlinkError`` without pyroute2's package ``__init__``.

That ``__init__`` imports every part of the library, ~160 modules (IPDB, NDB with sqlite3,
nftables, WireGuard, nl80211, plan9, …: 10 MiB of RSS); ``IPRoute`` needs ~100 of them
(5 MiB). See :func:`drasyl.imports.defer_package_init`.
"""

from __future__ import annotations

from ..imports import defer_package_init

defer_package_init("pyroute2")

from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
