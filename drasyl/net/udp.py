"""A bound, non-blocking UDP socket that the event loop drains in batches.

asyncio's ``DatagramProtocol`` costs a callback and a transport hop per packet. Here one
reader callback receives every datagram that is ready (up to ``batch`` per wake-up) and hands
the whole list to the owner, who feeds its sans-I/O core and then sends what the core
produced. Sending is a direct ``sendto``; when the kernel buffer is full the datagram is
dropped and counted (UDP semantics; retransmission is the application's business).

:func:`send_transmits` sends a core's outbox. Runs of datagrams of one size from one socket
to one destination (a burst of full-size APPs) go out as one UDP GSO ``sendmsg``
(``UDP_SEGMENT``): the kernel cuts them into the same datagrams, one syscall instead of up to
64. Where GSO is unavailable a socket falls back to one ``sendto`` per datagram. The other
datagrams (a super peer's ACKs and relayed APPs, to many destinations) are collected and sent
with ``sendmmsg``, and the reader drains the socket with one ``recvmmsg``
(:mod:`drasyl.net.mmsg`); where those are unavailable, one ``recvfrom``/``sendto`` per datagram.
A datagram longer than :data:`RECV_SIZE` is dropped and counted in ``recv_truncated``.

A failed GSO send is retried as plain sends. Only when those get through where GSO did not
is GSO to blame (an old kernel, a device without UDP segmentation); after
:data:`GSO_STRIKES` such failures in a row the socket stops trying GSO. Errors that plain sends
share (an unreachable network, a source address the route cannot use) say nothing about GSO.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Callable

from ..transmit import UDP, Address, Transmit
from . import mmsg

RECV_SIZE = mmsg.SLOT  # > drasyl's 1472-byte MTU; longer datagrams are dropped and counted
SOCKET_BUFFER = 4 * 1024 * 1024

UDP_SEGMENT = 103  # linux/udp.h: GSO segment size for one sendmsg
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels
GSO_MAX_BYTES = 65000  # a GSO sendmsg is one (up to 64 KiB) UDP datagram before segmentation
GSO_STRIKES = 3  # GSO-only failures in a row before a socket gives GSO up

BatchHandler = Callable[["UdpSocket", list[tuple[bytes, Address]]], None]
#: A socket's reader in place of its own (the agent's C data path): called with the socket when
#: it is readable, it receives the datagrams itself and passes those it leaves, in order, to
#: :meth:`UdpSocket.deliver`.
Intercept = Callable[["UdpSocket"], object]


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
        self.fd = sock.fileno()
        self.local: Address = sock.getsockname()[:2]  # (host, port) for IPv4 and IPv6 alike
        self.send_drops = 0
        self.recv_truncated = 0  # datagrams longer than RECV_SIZE, dropped
        self.batcher = mmsg.Batcher(sock, batch) if mmsg.available() else None
        self.gso = hasattr(socket, "SOL_UDP")  # cleared after GSO_STRIKES GSO-only failures
        self._gso_strikes = 0
        self._on_batch = on_batch
        self.batch = batch  # datagrams per wake-up at most
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def set_intercept(self, intercept: Intercept | None) -> None:
        """Let ``intercept(self)`` read the socket instead of :meth:`_readable` (None: back to
        it). The loop calls it directly: no Python frame per wake-up when it is C."""
        if self.sock.fileno() < 0:
            return
        self._loop.remove_reader(self.fd)
        if intercept is None:
            self._loop.add_reader(self.fd, self._readable)
        else:
            self._loop.add_reader(self.fd, intercept, self)

    def deliver(self, packets: list[tuple[bytes, Address]]) -> None:
        """Datagrams an intercept received and left: to the owner's batch handler."""
        self._on_batch(self, packets)

    def _readable(self) -> None:
        if self.batcher is not None:
            packets, truncated = self.batcher.receive()
            self.recv_truncated += truncated
        else:
            packets = self._receive_plain()
        if packets:
            self._on_batch(self, packets)

    def _receive_plain(self) -> list[tuple[bytes, Address]]:
        recvfrom = self.sock.recvfrom
        packets: list[tuple[bytes, Address]] = []
        append = packets.append
        try:
            for _ in range(self.batch):
                packet = recvfrom(RECV_SIZE + 1)
                if len(packet[0]) > RECV_SIZE:
                    self.recv_truncated += 1
                else:
                    append(packet)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            # ICMP errors (e.g. port unreachable) surface here on Linux; the datagram that
            # caused them is already gone, and nothing is lost by continuing.
            pass
        return packets

    def send(self, data: bytes | bytearray, addr: Address) -> bool:
        try:
            self.sock.sendto(data, addr)
            return True
        except OSError:  # full buffer, unreachable network, address family mismatch
            self.send_drops += 1
            return False

    def send_batch(self, batch: list[tuple[bytes | bytearray, Address]]) -> None:
        """Datagrams to any destinations, in order: ``sendmmsg`` where available.

        A lone datagram (the idle path: a ping, a keystroke) goes out with ``sendto``, which
        costs ~4 µs less than filling a ``mmsghdr`` for one."""
        if self.batcher is None or len(batch) == 1:
            for data, addr in batch:
                self.send(data, addr)
        else:
            self.send_drops += self.batcher.send(batch, self.send)

    def send_segments(self, datagrams: list[bytes | bytearray], size: int, addr: Address) -> None:
        """Datagrams of equal ``size`` (the last may be shorter) with one GSO sendmsg."""
        if not self.gso:
            for data in datagrams:
                self.send(data, addr)
            return
        try:
            self.sock.sendmsg([b"".join(datagrams)], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))],
                              0, addr)
            self._gso_strikes = 0
            return
        except BlockingIOError:
            self.send_drops += len(datagrams)
            return
        except OSError:
            pass
        sent = 0
        for data in datagrams:
            sent += self.send(data, addr)
        if sent:  # plain sends work where GSO failed: GSO is to blame
            self._gso_strikes += 1
            if self._gso_strikes >= GSO_STRIKES:
                self.gso = False

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


def send_transmits(
    out: list[Transmit],
    sockets: dict[Address, UdpSocket],
    send_tcp: Callable[[bytes | bytearray, Any], Any],
) -> int:
    """Send a core's outbox: UDP via the socket bound to ``local``, TCP via ``send_tcp``.

    Consecutive equal-size datagrams for one (socket, destination) are sent as GSO batches,
    the others collected per socket for :meth:`UdpSocket.send_batch` (order kept: a batch is
    sent before the next GSO run or another socket's datagram).
    Returns the number of UDP datagrams whose socket no longer exists.
    """
    gone = 0
    batch: list[tuple[bytes | bytearray, Address]] = []
    batch_sock: UdpSocket | None = None
    i = 0
    n = len(out)
    while i < n:
        data, proto, local, remote = out[i]
        if proto != UDP:
            send_tcp(data, remote)
            i += 1
            continue
        sock = sockets.get(local)
        size = len(data)
        j = i + 1
        limit = i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        while j < n and j < limit:
            nxt = out[j]
            if nxt[1] != UDP or nxt[2] != local or nxt[3] != remote or len(nxt[0]) != size:
                break
            j += 1
        if j < n and j < limit and len(out[j][0]) < size and out[j][1] == UDP \
                and out[j][2] == local and out[j][3] == remote:
            j += 1  # GSO allows a shorter last segment
        if sock is None:
            gone += j - i
        elif j - i == 1:
            if sock is not batch_sock:
                if batch:
                    batch_sock.send_batch(batch)  # type: ignore[union-attr]
                    batch = []
                batch_sock = sock
            batch.append((data, remote))
        else:
            if batch:
                batch_sock.send_batch(batch)  # type: ignore[union-attr]
                batch = []
            sock.send_segments([t[0] for t in out[i:j]], size, remote)
        i = j
    if batch:
        batch_sock.send_batch(batch)  # type: ignore[union-attr]
    return gone
