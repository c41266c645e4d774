"""A minimal ``/metrics`` HTTP/1.1 endpoint inside an asyncio event loop (super peer and agent).

It must not run in a thread (prometheus_client's own server does): the daemons' state is read
without locks, so the endpoint takes a snapshot in the event loop and only formats it in a
worker thread, where the data path keeps the loop. No prometheus_client here: the caller's
``render`` brings it.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
from typing import Awaitable, Callable, Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONNECTION_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
MAX_HEADER_LINES = 100
MAX_LINE = 8192

S = TypeVar("S")


class MetricsEndpoint(Generic[S]):
    """``GET /metrics`` over HTTP/1.1 (``Connection: close``), as drasyl-sp's hyper server.

    ``snapshot()`` runs in the event loop (awaited if it returns an awaitable),
    ``render(snapshot)`` (the text format) in a worker thread. Other paths get 404 ``Not Found``; with a token, a missing or wrong
    ``Authorization: Bearer <token>`` gets 401 ``Unauthorized``. Each connection has 10 s
    to be served, and at most :data:`MAX_CONNECTIONS` are served at once.
    """

    def __init__(self, snapshot: Callable[[], S | Awaitable[S]], render: Callable[[S], bytes], token: str) -> None:
        self._snapshot = snapshot
        self._render = render
        self._expected_authorization = b"Bearer " + token.encode() if token else None
        self._open = 0

    async def serve(self, host: str, port: int) -> asyncio.Server:
        """Listen on ``host:port`` (0: any free port); OSError if that cannot be bound."""
        return await asyncio.start_server(self.handle, host, port, limit=MAX_LINE)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(CONNECTION_TIMEOUT_S):
                writer.write(await self._respond(await _read_request(reader)))
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _respond(self, request: tuple[str, str, bytes] | None) -> bytes:
        if request is None:
            return _response(400, "Bad Request", b"Bad Request")
        method, target, authorization = request
        if target.split("?", 1)[0] != "/metrics":
            return _response(404, "Not Found", b"Not Found")
        expected = self._expected_authorization
        if expected is not None and not hmac.compare_digest(authorization, expected):
            return _response(401, "Unauthorized", b"Unauthorized")
        # snapshot here, in the event loop; format in a thread so packets keep flowing meanwhile
        snapshot = self._snapshot()
        if inspect.isawaitable(snapshot):  # it collects from other processes first
            snapshot = await snapshot
        body = await asyncio.to_thread(self._render, snapshot)
        return _response(200, "OK", body, CONTENT_TYPE, head=method == "HEAD")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """(method, target, Authorization value) of one request, or None if it is malformed."""
    parts = (await reader.readuntil(b"\n")).split()
    authorization = b""
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readuntil(b"\n")
        if line in (b"\r\n", b"\n"):
            break
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"authorization":
            authorization = value.strip()
    else:
        return None
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    return parts[0].decode("latin-1"), parts[1].decode("latin-1"), authorization


def _response(status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head else header + body
