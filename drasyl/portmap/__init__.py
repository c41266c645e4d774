"""Port mapping on the home router (PCP, NAT-PMP, UPnP-IGD) for the node's UDP port, so
peers can reach it directly where they would otherwise go through a relay.

Public API: :class:`PortMapper` (map, renew, delete on stop), :class:`Mapping`,
:func:`probe` (which protocols the gateway answers, for netcheck) and :class:`PortMapError`.
The codecs (``pcp``, ``natpmp``, ``upnp``) are pure functions on bytes; see
``docs/port-mapping.md`` for what is asked of the router.
"""

from .mapper import PROTOCOLS, Mapping, PortMapper, probe
from .net import PortMapError

__all__ = ["PROTOCOLS", "Mapping", "PortMapError", "PortMapper", "probe"]
