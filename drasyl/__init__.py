"""drasyl for Python: a byte-compatible implementation of the drasyl overlay network.

``drasyl.Node`` is the asyncio node API; ``drasyl-sp`` (:mod:`drasyl.superpeer`) the super peer.
The node API is imported on first use, so a super peer process does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import DrasylError
from .identity import Identity
from .urls import SuperPeerUrl

if TYPE_CHECKING:
    from .node import Node, NodeConfig, PeerInfo

__all__ = ["DrasylError", "Identity", "Node", "NodeConfig", "PeerInfo", "SuperPeerUrl"]
__version__ = "0.1.0"
_NODE_API = ("Node", "NodeConfig", "PeerInfo")


def __getattr__(name: str) -> Any:
    if name in _NODE_API:
        from . import node

        return getattr(node, name)
    raise AttributeError(f"module 'drasyl' has no attribute {name!r}")
