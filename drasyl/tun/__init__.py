"""The agent's side of the host: the TUN device and what the kernel must know about the overlay.

:mod:`.device` opens the TUN and moves packets in batches, :mod:`.packet` reads the few IPv4
header fields the data path needs without building objects, and the host adapters
(:mod:`.addresses`, :mod:`.routes`, :mod:`.forwarding`, :mod:`.hosts`) bring the device's
addresses, the kernel routes, ``ip_forward`` and the ``/etc/hosts`` block to a desired state
given as plain values. Nothing here knows about network configs or policies.
"""

from .device import TunDevice, TunError, cleanup_stale

__all__ = ["TunDevice", "TunError", "cleanup_stale"]
