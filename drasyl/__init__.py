"""drasyl for Python: a byte-compatible implementation of the drasyl overlay network.

``drasyl.Node`` is the asyncio node API; ``drasyl-sp`` (:mod:`drasyl.superpeer`) the super peer.
"""

from .errors import DrasylError
from .identity import Identity
from .node import Node, NodeConfig, PeerInfo
from .urls import SuperPeerUrl

__all__ = ["DrasylError", "Identity", "Node", "NodeConfig", "PeerInfo", "SuperPeerUrl"]
__version__ = "0.1.0"
