"""The channel between super peer workers: one Unix stream socket pair per pair of workers.

The parent creates every pair before it forks the workers (:mod:`.workers`), so only the
workers hold them: nothing on disk or in the abstract namespace another process could connect
to. That is why the channel is trusted and messages are pickles (Python objects, no parser of
our own).

Stream, not datagram, sockets: a Unix datagram socket refuses a send when the receiver has
``net.unix.max_dgram_qlen`` (512) datagrams queued, and a burst of registrations or a peer
table's counters would hit that or the datagram size limit; a stream keeps order and asyncio
buffers what the kernel does not take yet, up to :data:`MAX_BACKLOG` bytes per link (a worker
that stopped reading must not grow the others without bound; what does not fit is dropped and
counted, and a lost registration comes again with the next refresh). Each message is a 4-byte
length and a pickle.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any, Callable

_LENGTH = struct.Struct(">I")
#: Bytes queued for one link beyond which messages to it are dropped.
MAX_BACKLOG = 64 * 1024 * 1024

OnMessage = Callable[[int, Any], None]


class _Link(asyncio.Protocol):
    """One worker's end of the stream to ``peer``: cuts it into messages."""

    def __init__(self, peer: int, on_message: OnMessage) -> None:
        self.peer = peer
        self._on_message = on_message
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if end - start - 4 < size:
                break
            message = pickle.loads(buffer[start + 4 : start + 4 + size])
            start += 4 + size
            self._on_message(self.peer, message)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None  # the worker died or stops; the parent notices and stops the rest


class Mesh:
    """Worker ``index``'s links to every other worker (``sockets``: peer index -> socket)."""

    def __init__(self, index: int, sockets: dict[int, socket.socket], on_message: OnMessage) -> None:
        self.index = index
        self._sockets = sockets
        self._on_message = on_message
        self._links: dict[int, _Link] = {}
        #: Messages dropped because their link's backlog was full.
        self.dropped = 0

    @property
    def peers(self) -> list[int]:
        return list(self._sockets)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for peer, sock in self._sockets.items():
            _, link = await loop.create_unix_connection(lambda peer=peer: _Link(peer, self._on_message), sock=sock)
            self._links[peer] = link

    def send(self, peer: int, message: Any) -> None:
        self._write(self._links[peer], _encode(message))

    def broadcast(self, message: Any) -> None:
        data = _encode(message)
        for link in self._links.values():
            self._write(link, data)

    def close(self) -> None:
        for link in self._links.values():
            if link.transport is not None:
                link.transport.close()
        self._links.clear()

    def _write(self, link: _Link, data: bytes) -> None:
        transport = link.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            self.dropped += 1
        else:
            transport.write(data)


def _encode(message: Any) -> bytes:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data
