"""The drasyl super peer: sans-I/O core (:mod:`.core`) and the ``drasyl-sp`` daemon."""

from .core import SuperPeerConfig, SuperPeerCore

__all__ = ["SuperPeerConfig", "SuperPeerCore"]
