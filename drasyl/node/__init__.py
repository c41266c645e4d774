"""The drasyl node: sans-I/O core (:mod:`.core`) and the asyncio :class:`Node` (:mod:`.api`).

``python -m drasyl.node`` runs a small interactive node (see :mod:`.__main__`).
"""

from .api import Node
from .core import NodeConfig, NodeCore, PayloadTooLarge
from .events import PeerInfo

__all__ = ["Node", "NodeConfig", "NodeCore", "PayloadTooLarge", "PeerInfo"]
