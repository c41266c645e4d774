"""drasyl over TCP: each message is one frame, ``u16 big-endian length ‖ message``.

This is tokio's ``LengthDelimitedCodec`` with a 2-byte length field, as drasyl-rs uses it on
both sides (spec §7). :class:`FramedProtocol` is an asyncio protocol that splits the byte
stream into frames and writes frames; what the frames mean is the sans-I/O core's business.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable, cast

MAX_FRAME = 0xFFFF


def bind_tcp(host: str, port: int, *, reuse_port: bool = False, dual_stack: bool = False,
             backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking TCP socket on (host, port), for ``create_server(sock=...)``.

    As in :func:`~drasyl.net.udp.bind_udp`, IPv6 sockets get ``IPV6_V6ONLY`` unless
    ``dual_stack`` is asked for; ``loop.create_server(host=...)`` would always set it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def frame(data: bytes | bytearray) -> bytes:
    if len(data) > MAX_FRAME:
        raise ValueError("frame longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


class FramedProtocol(asyncio.Protocol):
    """Length-prefixed frames over one TCP connection."""

    def __init__(
        self,
        on_frame: Callable[["FramedProtocol", bytes], None],
        on_close: Callable[["FramedProtocol"], None],
    ) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peername: tuple = ()
        #: loop.time() of the last complete frame received (or of connecting): what keeps a
        #: connection alive. Partial frames and our own writes do not count.
        self.last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        self.peername = transport.get_extra_info("peername") or ()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_activity = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        start = 0
        end = len(buf)
        while end - start >= 2:
            n = (buf[start] << 8) | buf[start + 1]
            if end - start - 2 < n:
                break
            payload = bytes(buf[start + 2 : start + 2 + n])
            start += 2 + n
            self._on_frame(self, payload)
            if self.transport is None or self.transport.is_closing():
                return
        if start:
            del buf[:start]
            self.last_activity = asyncio.get_running_loop().time()

    def send(self, data: bytes | bytearray) -> bool:
        if self.transport is None or self.transport.is_closing() or len(data) > MAX_FRAME:
            return False
        self.transport.write(frame(data))
        return True

    def close(self) -> None:
        """Close after what is queued has been written."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, discarding what is queued (for a peer that may never read it)."""
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._buffer.clear()
        self._on_close(self)
