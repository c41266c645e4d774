"""The agent's side of the host: the TUN device and what the kernel must know about the overlay.

:mod:`.device` opens the TUN and moves packets in batches, :mod:`.packet` reads the few IPv4
and IPv6 header fields the data path needs without building objects. The host adapters bring the
device's addresses (:mod:`.addresses`), the kernel routes (:mod:`.routes`), forwarding to
the prefixes this node serves as a gateway (:mod:`.forwarding`: ``ip_forward`` and an nftables
table) and the hosts-file names (:mod:`.hosts`) to a desired state given as plain
values; :mod:`.system` applies all of them per housekeeping tick and removes them on exit.
Nothing here knows about network configs or policies.

Start: ``TunDevice(name, mtu)`` (deletes a leftover device nobody holds), ``Host(device.index,
hosts_path, Forwarding(device.name)).start()`` (deletes the names and forwarding a crash left).
Each tick: ``host.apply(HostState(...))``.
Exit: ``host.close()``, then ``device.close()``.
"""

from .device import TunDevice, TunError, cleanup_stale
from .forwarding import Forwarding
from .system import Host, HostState

__all__ = ["Forwarding", "Host", "HostState", "TunDevice", "TunError", "cleanup_stale"]
