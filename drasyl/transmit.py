"""What a sans-I/O core hands its I/O adapter: datagrams/frames to send, and how.

A transmit is a plain tuple ``(data, proto, local, remote)`` (no object per packet):

- ``proto`` :data:`UDP`: send ``data`` from the UDP socket bound to ``local`` to ``remote``;
- ``proto`` :data:`TCP`: write ``data`` as one length-prefixed frame on the TCP connection
  identified by ``remote`` (a super peer uses the client's address, a node the super peer's
  public key); ``local`` is ``None``.
"""

from __future__ import annotations

from typing import Any

UDP = 0
TCP = 1

#: A socket address as Python's socket module returns it.
Address = tuple[Any, ...]
Transmit = tuple[bytes | bytearray, int, Address | None, Any]


def proto_name(proto: int) -> str:
    return "tcp" if proto == TCP else "udp"
