"""The ``drasyl-sp`` daemon's I/O: sockets and timers around the sans-I/O :class:`SuperPeerCore`.

:class:`SuperPeerServer` binds the configured UDP4/UDP6/TCP4/TCP6 listeners and the
Prometheus endpoint, feeds every datagram and TCP frame to the core, sends what the core
put in its outbox, and runs one housekeeping timer. Protocol rules live in the core,
configuration parsing in :mod:`.config`, console output in :mod:`.cli`. With
``DRASYL_WORKERS`` > 1 each worker process runs a subclass (:mod:`.worker`) that binds with
``SO_REUSEPORT`` and shares its registrations; one worker pays nothing for that.

Socket choices (deliberate differences from drasyl-rs):

- with both an IPv4 and an IPv6 listener of a transport, the IPv6 socket is
  ``IPV6_V6ONLY``, so drasyl-rs' defaults (``0.0.0.0`` and ``[::]`` on the same port) bind on
  Linux instead of failing with EADDRINUSE;
- with the IPv4 listener of a transport disabled, the IPv6 socket is dual-stack and serves
  IPv4 nodes too (the Docker image's and the self-hosting guide's setup);
- more than ``max_peers`` simultaneous TCP connections are refused at accept (drasyl-rs
  keeps reading them), and so are more than :func:`connections_per_source` from one IPv4
  address or IPv6 /64;
- a TCP connection keeps its slot only by sending complete, valid frames: it must register
  with a valid HELLO within :data:`REGISTER_TIMEOUT_S` of being accepted, and is closed
  when no complete frame arrived for ``hello_timeout`` (drasyl-rs counts any read or write);
- a TCP client that does not read gets at most :data:`TCP_BACKLOG_LIMIT` bytes queued, and
  all clients together at most :data:`TCP_TOTAL_BACKLOG_LIMIT` (plus one frame per
  connection); what does not fit is dropped and counted.

Clocks: the core is fed monotonic µs, with its ``wall_offset`` refreshed per batch and tick
(:mod:`drasyl.clock`); housekeeping, idle close and metrics ticks are scheduled on the event
loop's monotonic clock, so a wall clock step neither stops nor bursts them.

With the C accelerator built (:mod:`drasyl.native`, ``DRASYL_NATIVE``) and armed messages, each
UDP socket is drained by :class:`drasyl.superpeer._fast.Fast`: it answers HELLOs of current
registrations and relays APPs between them in C, changing the core's state as the core would,
and hands every other datagram to the core here, in order. TCP stays in Python.

Nothing a peer sends may stop the process: an unexpected exception while handling input is
counted, logged at most once per 10 s, and the loop goes on. Nothing here logs per packet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..clock import monotonic_us, wall_offset_us
from ..errors import DrasylError
from .. import native
from ..identity import Identity
from ..messages import HELLO, LONG_HEADER_LEN
from ..net.faults import FaultLog
from ..net.tcp import FramedProtocol, bind_tcp
from ..net.udp import UdpSocket, bind_udp, send_transmits
from ..transmit import TCP, UDP, Address
from .config import DaemonConfig, ListenAddress
from .core import Peer, SuperPeerCore

if TYPE_CHECKING:  # imported when the endpoint is bound: prometheus_client costs ~4 MB of RSS
    from .metrics import SuperPeerMetrics

log = logging.getLogger(__name__)

#: The C accelerator of the UDP hot path (see the module docstring).
FAST_PATH = "drasyl.superpeer._fast"
#: Bytes queued for one TCP client beyond which we drop instead of buffering more.
TCP_BACKLOG_LIMIT = 128 * 1024
#: Bytes queued for all TCP clients together beyond which we drop: without it, ``max_peers``
#: clients that do not read could pin ``max_peers`` × 128 KiB (1 GiB by default).
TCP_TOTAL_BACKLOG_LIMIT = 32 * 1024 * 1024
#: Seconds a new TCP connection has to register with a valid HELLO (a node sends one at
#: once after connecting) before its slot is given back.
REGISTER_TIMEOUT_S = 5.0
_MESSAGE_TYPE_OFFSET = LONG_HEADER_LEN - 1


def connections_per_source(max_peers: int) -> int:
    """TCP connections one IPv4 address or IPv6 /64 may hold: 1/64 of ``max_peers``, at least 8.

    Enough for a NAT with many nodes behind it, too few for one host to take every slot.
    """
    return max(8, max_peers // 64)


def source_of(peername: Address) -> str:
    """What :func:`connections_per_source` counts: the IPv4 address, or the IPv6 /64."""
    host = peername[0] if peername else ""
    if host.startswith("::ffff:"):
        return host[7:]
    if ":" in host:
        return str(ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False))
    return host


class BindError(DrasylError):
    """A listener could not be set up; the message names it, its address and the OS reason."""


@dataclass(frozen=True)
class Listener:
    name: str  # UDP4, UDP6, TCP4, TCP6 or Prometheus
    address: ListenAddress  # as bound: port 0 is replaced by the port the OS chose
    dual_stack: bool = False


class TcpClient(FramedProtocol):
    """A node's TCP connection: reports when it opens and when its write buffer drains."""

    def __init__(
        self,
        on_open: Callable[[TcpClient], None],
        on_frame: Callable[[TcpClient, bytes], None],
        on_close: Callable[[TcpClient], None],
        on_drained: Callable[[TcpClient], None],
    ) -> None:
        super().__init__(on_frame, on_close)  # type: ignore[arg-type]
        self._on_open = on_open
        self._on_drained = on_drained
        self.source = ""  # counted against connections_per_source once accepted
        self.registered = False  # a HELLO arrived over it and was accepted
        self.queued = 0  # bytes in the transport's write buffer when last seen
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # pause_writing() at the first queued byte (a no-op), resume_writing() once empty again
        self.transport.set_write_buffer_limits(high=0)  # type: ignore[union-attr]
        self._on_open(self)

    def resume_writing(self) -> None:
        self._on_drained(self)


class SuperPeerServer:
    """One super peer: its core, its sockets, its TCP clients and its housekeeping timer."""

    core_class: type[SuperPeerCore] = SuperPeerCore
    #: Bind with ``SO_REUSEPORT``: a worker shares its ports with the others (:mod:`.workers`).
    reuse_port = False

    def __init__(self, identity: Identity, config: DaemonConfig) -> None:
        self.config = config
        self.core = self.core_class(identity, config.core_config(), monotonic_us())
        self.core.wall_offset = wall_offset_us()
        #: Drops the I/O layer decides (the core counts protocol drops in ``core.drops``).
        self.drops: Counter[str] = Counter()
        self.listeners: list[Listener] = []
        self.metrics: SuperPeerMetrics | None = None  # only with a Prometheus listener
        self._faults = FaultLog(self.drops)
        self._udp: dict[Address, UdpSocket] = {}
        #: the C accelerator's loop per UDP socket, when it runs (see the module docstring)
        self.fast: dict[Address, Any] = {}
        self._fast_module = native.load(FAST_PATH) if config.arm_messages else None
        self._connections: dict[Address, TcpClient] = {}
        self._per_source: dict[str, int] = {}
        self._per_source_limit = connections_per_source(config.max_peers)
        self._backlog = 0  # bytes queued for all TCP clients, as last seen per client
        self._servers: list[asyncio.Server] = []
        self._timer: asyncio.TimerHandle | None = None

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every configured listener and start housekeeping; BindError if one fails."""
        cfg = self.config
        try:
            for name, listen, dual_stack in (
                ("UDP4", cfg.udp4_listen, False),
                ("UDP6", cfg.udp6_listen, cfg.udp4_listen is None),
            ):
                if listen is not None:
                    self._bind_udp(name, listen, dual_stack)
            for name, listen, dual_stack in (
                ("TCP4", cfg.tcp4_listen, False),
                ("TCP6", cfg.tcp6_listen, cfg.tcp4_listen is None),
            ):
                if listen is not None:
                    await self._bind_tcp(name, listen, dual_stack)
            if cfg.prometheus_listen is not None:
                await self._bind_prometheus(cfg.prometheus_listen)
        except BindError:
            await self.close()
            raise
        self._timer = asyncio.get_running_loop().call_soon(self._housekeeping)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for sock in self._udp.values():
            sock.close()
        self._udp.clear()
        for client in list(self._connections.values()):
            client.close()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def io_drops(self) -> Counter[str]:
        drops = Counter(self.drops)
        drops["udp_send_failed"] += sum(sock.send_drops for sock in self._udp.values())
        drops["udp_oversize"] += sum(sock.recv_truncated for sock in self._udp.values())
        for fast in self.fast.values():
            counters = fast.counters()
            drops["udp_send_failed"] += counters["send_drops"]
            drops["udp_oversize"] += counters["truncated"]
        return drops

    # --- binding ---------------------------------------------------------------------------

    def _bind_udp(self, name: str, listen: ListenAddress, dual_stack: bool) -> None:
        with _binding(name, listen):
            sock = UdpSocket(bind_udp(listen.host, listen.port, reuse_port=self.reuse_port, dual_stack=dual_stack),
                             self._on_datagrams)
        self._udp[sock.local] = sock
        if self._fast_module is not None and sock.batcher is not None:
            self._drain_in_c(sock)
        self.listeners.append(Listener(name, ListenAddress(listen.host, sock.local[1]), dual_stack))

    def _drain_in_c(self, sock: UdpSocket) -> None:
        """Hand ``sock`` to the C accelerator: it is the socket's reader from now on."""
        core = self.core
        cfg = core.config
        encrypt, decrypt = native.aegis_functions()
        local = sock.local

        def handoff(data: bytes, remote: Address, now: int, wall_offset: int) -> None:
            """A datagram the C code leaves to the core (the rest of its batch waits)."""
            self._receive_udp(local, ((data, remote),), now, wall_offset)

        def fault(exc: BaseException) -> None:
            self._faults.report("processing a UDP datagram in C", exc)

        fast = self._fast_module.Fast(  # type: ignore[union-attr]  # checked by the caller
            fd=sock.fd, core=core, peer_type=Peer, local=local,
            cache=sock.batcher.addresses,  # type: ignore[union-attr]
            public_key=core.public_key, network_id=cfg.network_id, timeout_us=_c_int(cfg.hello_timeout_ms * 1000),
            max_age_us=_c_int(cfg.hello_max_age_ms * 1000), unite_us=cfg.send_unites_ms * 1000,
            ack_header=core.ack_header(), encrypt=encrypt, decrypt=decrypt, capacity=sock.batch,
            handoff=handoff, fault=fault)
        self.fast[local] = fast
        sock.set_intercept(fast.readable)

    async def _bind_tcp(self, name: str, listen: ListenAddress, dual_stack: bool) -> None:
        loop = asyncio.get_running_loop()
        with _binding(name, listen):
            sock = bind_tcp(listen.host, listen.port, reuse_port=self.reuse_port, dual_stack=dual_stack)
            try:
                server = await loop.create_server(
                    lambda: TcpClient(self._on_connect, self._on_frame, self._on_disconnect, self._on_drained),
                    sock=sock,
                )
            except BaseException:
                sock.close()
                raise
        self._servers.append(server)
        port = sock.getsockname()[1]
        self.listeners.append(Listener(name, ListenAddress(listen.host, port), dual_stack))

    async def _bind_prometheus(self, listen: ListenAddress) -> None:
        from ..memory import fix_mmap_threshold
        from ..metrics_http import MetricsEndpoint
        from .metrics import SuperPeerMetrics

        fix_mmap_threshold()  # scrapes of many peers would otherwise ratchet RSS up
        self.metrics = SuperPeerMetrics(self.core, self.io_drops)
        endpoint = MetricsEndpoint(self._metrics_snapshot, self.metrics.exposition, self.config.prometheus_token)
        with _binding("Prometheus", listen):
            server = await endpoint.serve(listen.host, listen.port)
        self._servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.listeners.append(Listener("Prometheus", ListenAddress(listen.host, port)))

    def _metrics_snapshot(self) -> Any:
        """What a scrape shows (a worker's is a coroutine: it asks the other workers)."""
        return self.metrics.snapshot()  # type: ignore[union-attr]  # bound with the endpoint

    # --- input -----------------------------------------------------------------------------

    def _on_datagrams(self, sock: UdpSocket, packets: list[tuple[bytes, Address]]) -> None:
        self._receive_udp(sock.local, packets, monotonic_us(), wall_offset_us())

    def _receive_udp(self, local: Address, packets, now: int, wall_offset: int) -> None:
        """Datagrams that arrived on the socket bound to ``local``: to the core, then the outbox."""
        self.core.wall_offset = wall_offset
        receive = self.core.receive
        for data, addr in packets:
            try:
                receive(data, UDP, local, addr, now)
            except Exception:
                self._faults.report("processing a UDP datagram")
        self._send_outbox()

    def _on_connect(self, client: TcpClient) -> None:
        if len(self._connections) >= self.config.max_peers:
            self.drops["tcp_connection_limit"] += 1
            client.close()
            return
        source = source_of(client.peername)
        held = self._per_source.get(source, 0)
        if held >= self._per_source_limit:
            self.drops["tcp_source_limit"] += 1
            client.close()
            return
        self._per_source[source] = held + 1
        client.source = source
        self._connections[client.peername] = client
        client.deadline = asyncio.get_running_loop().call_later(REGISTER_TIMEOUT_S, self._registration_due, client)

    def _registration_due(self, client: TcpClient) -> None:
        client.deadline = None
        if not client.registered:
            self.drops["tcp_unregistered"] += 1
            client.abort()

    def _on_frame(self, client: TcpClient, frame: bytes) -> None:
        core = self.core
        core.wall_offset = wall_offset_us()
        try:
            valid = core.receive(frame, TCP, None, client.peername, monotonic_us())
        except Exception:
            self._faults.report("processing a TCP frame")
            valid = False
        if not valid:  # as drasyl-rs: a connection that sends garbage is closed
            client.close()
        elif frame[_MESSAGE_TYPE_OFFSET] == HELLO:  # valid HELLOs are those the core accepted
            client.registered = True
        self._send_outbox()

    def _on_disconnect(self, client: TcpClient) -> None:
        if client.deadline is not None:
            client.deadline.cancel()
        if self._connections.get(client.peername) is not client:
            return  # refused at accept
        del self._connections[client.peername]
        left = self._per_source[client.source] - 1
        if left:
            self._per_source[client.source] = left
        else:
            del self._per_source[client.source]
        self._backlog -= client.queued
        client.queued = 0

    def _on_drained(self, client: TcpClient) -> None:
        self._backlog -= client.queued
        client.queued = 0

    # --- output ----------------------------------------------------------------------------

    def _send_outbox(self) -> None:
        core = self.core
        outbox = core.outbox
        if not outbox:
            return
        core.outbox = []
        try:
            plain = _one_socket_batch(outbox)
            if plain is not None:
                sock = self._udp.get(plain[0])
                if sock is None:
                    self.drops["udp_socket_gone"] += len(outbox)
                else:
                    sock.send_batch(plain[1])
                return
            gone = send_transmits(outbox, self._udp, self._send_tcp)
            if gone:
                self.drops["udp_socket_gone"] += gone
        except Exception:
            self._faults.report("sending")

    def _send_tcp(self, data: bytes | bytearray, remote: Address) -> None:
        client = self._connections.get(remote)
        transport = client.transport if client is not None else None
        if transport is None:
            self.drops["tcp_connection_gone"] += 1
            return
        queued = transport.get_write_buffer_size()
        if queued:  # the kernel takes nothing more for now: this frame would wait in our memory
            if queued > TCP_BACKLOG_LIMIT:
                self.drops["tcp_backlog_full"] += 1  # a client that does not read
                return
            if self._backlog + len(data) > TCP_TOTAL_BACKLOG_LIMIT:
                self.drops["tcp_backlog_total"] += 1
                return
        if not client.send(data):
            self.drops["tcp_connection_gone"] += 1
            return
        queued = transport.get_write_buffer_size()
        self._backlog += queued - client.queued
        client.queued = queued

    # --- housekeeping ----------------------------------------------------------------------

    def _housekeeping(self) -> None:
        core = self.core
        now = monotonic_us()
        try:
            if now >= core.next_timer():
                core.wall_offset = wall_offset_us()
                core.handle_timer(now)
                if self.metrics is not None:
                    self.metrics.observe_tick()
                self._check_connections()
                self._send_outbox()
        except Exception:
            self._faults.report("housekeeping")
        delay_us = max(core.next_timer() - now, 0)
        self._timer = asyncio.get_running_loop().call_later(delay_us / 1e6, self._housekeeping)

    def _check_connections(self) -> None:
        """Close TCP connections without a complete frame for ``hello_timeout``; recount backlogs."""
        deadline = asyncio.get_running_loop().time() - self.config.hello_timeout_ms / 1000
        backlog = 0
        for client in list(self._connections.values()):
            if client.transport is not None:
                client.queued = client.transport.get_write_buffer_size()
                backlog += client.queued
            if client.last_activity < deadline:
                client.abort()  # not close(): that would wait for a client that does not read
        self._backlog = backlog


def _c_int(us: int) -> int:
    """A duration for C's 64-bit arithmetic: HELLO_TIMEOUT and HELLO_MAX_AGE go up to 2⁶⁴ − 1 ms;
    2⁶² µs (146 000 years) already means "never" to either clock."""
    return min(us, 1 << 62)


def _one_socket_batch(outbox: list) -> tuple[Address, list[tuple[bytes | bytearray, Address]]] | None:
    """The outbox as one ``sendmmsg`` batch: when every transmit is UDP from one socket and no
    two in a row go to the same address (a super peer's usual outbox, answers to many nodes).
    Otherwise None, and :func:`send_transmits` sends it (TCP, several sockets, or runs to one
    address that it sends with UDP GSO). One pass, no syscall; addresses are compared by
    identity (the socket layer hands out one tuple per address), which can only miss a run."""
    local = outbox[0][2]
    batch = []
    append = batch.append
    prev = None
    for data, proto, source, remote in outbox:
        if proto != UDP or source is not local or remote is prev:
            return None
        append((data, remote))
        prev = remote
    return local, batch


@contextmanager
def _binding(name: str, listen: ListenAddress) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        # asyncio wraps bind errors in a longer message; the errno says it shorter.
        if exc.errno and not isinstance(exc, socket.gaierror):
            reason = os.strerror(exc.errno)
        else:
            reason = exc.strerror or str(exc)
        raise BindError(f"cannot bind {name} listener to {listen}: {reason}") from None
