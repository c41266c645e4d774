"""drasyl-agent: the TUN overlay that joins this host to drasyl networks (agent.md).

One identity, one node, one TUN device ``drasyl`` for every network the host is a member of.
Network configs are fetched (:mod:`.fetch`), validated (:mod:`.netconfig`) and turned into
the local desired state and the per-packet policy tables (:mod:`.policy`); the daemon
reconciles that state with the host (``drasyl.tun``) and moves IP packets between the TUN
device and the node core. The package must not import the TUN or netlink code at import time,
so that the CLI and the pure modules stay usable without root.
"""

from ..imports import defer_package_init

# The REST API needs aiohttp.web; aiohttp's client (4 MiB of RSS) loads with the first http(s)
# network config (fetch.OnDemandSession), so an agent with file:// configs never carries it.
defer_package_init("aiohttp", ("__version__",))
