"""A bound, non-blocking UDP socket that the event loop drains in batches.

asyncio's ``DatagramProtocol`` costs a callback and a transport hop per packet. Here one
reader callback receives every datagram that is ready (up to ``batch`` per wake-up) and hands
the whole list to the owner, who feeds its sans-I/O core and then sends what the core
produced. Sending is a direct ``sendto``; when the kernel buffer is full the datagram is
dropped and counted (UDP semantics; retransmission is the application's business).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from ..transmit import Address

RECV_SIZE = 2048  # > drasyl's 1472-byte MTU, so oversize datagrams are seen, not cut
SOCKET_BUFFER = 4 * 1024 * 1024

BatchHandler = Callable[["UdpSocket", list[tuple[bytes, Address]]], None]


def bind_udp(host: str, port: int, *, reuse_port: bool = False, dual_stack: bool = False) -> socket.socket:
    """A non-blocking UDP socket on (host, port).

    IPv6 sockets get ``IPV6_V6ONLY`` unless ``dual_stack`` is asked for, so an IPv4 and an
    IPv6 wildcard socket on the same port can coexist (drasyl-rs' defaults collide there).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        sock.bind((host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UdpSocket:
    """One bound UDP socket; ``local`` (its bound address) names it in transmits."""

    def __init__(self, sock: socket.socket, on_batch: BatchHandler, batch: int = 512) -> None:
        self.sock = sock
        self.local: Address = sock.getsockname()
        self.send_drops = 0
        self._on_batch = on_batch
        self._batch = batch
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self.sendto = sock.sendto  # bound method, for callers that want no indirection

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        packets: list[tuple[bytes, Address]] = []
        append = packets.append
        try:
            for _ in range(self._batch):
                append(recvfrom(RECV_SIZE))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # ICMP errors (e.g. port unreachable) surface here on Linux; the datagram that
            # caused them is already gone, and nothing is lost by continuing.
            pass
        if packets:
            self._on_batch(self, packets)

    def send(self, data: bytes | bytearray, addr: Address) -> bool:
        try:
            self.sock.sendto(data, addr)
            return True
        except OSError:  # full buffer, unreachable network, address family mismatch
            self.send_drops += 1
            return False

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
