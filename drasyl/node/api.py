"""``drasyl.Node``: the node core driven by asyncio (UDP sockets, TCP fallback, timers, DNS).

Thin glue only: every protocol decision is in :class:`~drasyl.node.core.NodeCore`. Received
datagrams are processed in batches (all that are ready per wake-up) and the outbox is sent
right after, so the data path has no per-packet task, future or log call.

Clocks: the core gets monotonic µs (:func:`drasyl.clock.monotonic_us`, the clock the event
loop schedules on) and its ``wall_offset`` is refreshed at every batch, tick and send, so a
wall clock that steps neither stops nor bunches the HELLOs.

Bounds: the receive queue holds :data:`INBOX_LIMIT` messages (the oldest is dropped beyond
that, counted as ``inbox_full``); a TCP connection to a super peer takes no more frames once
:data:`TCP_BACKLOG_LIMIT` bytes wait to be written (``tcp_backlog_full``). Both counters are in
:meth:`Node.stats` with the core's drops.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import socket
from collections import deque
from typing import Callable, Iterable

from .. import clock
from ..env import env_bool, env_int, env_str
from ..errors import ConfigError, DrasylError
from ..identity import Identity
from ..net.faults import FaultLog
from ..net.interfaces import local_addresses
from ..net.tcp import FramedProtocol
from ..net.udp import Intercept, UdpSocket, bind_udp, send_transmits
from ..transmit import Address
from ..urls import SuperPeerUrl, parse_super_peers
from .core import NodeConfig, NodeCore, NodePeer

#: The data path's receive seam: called with each received batch of ``(sender, payload)``.
Receiver = Callable[[list[tuple[bytes, bytes | bytearray]]], None]
from .events import CloseProbeSockets, CloseTcp, OpenProbeSockets, OpenTcp, PathChanged, PeerInfo

log = logging.getLogger(__name__)

DNS_TIMEOUT = 2.0
TCP_CONNECT_TIMEOUT = 5.0
INBOX_LIMIT = 65536  # received messages held for the application (~90 MB of full-size APPs)
TCP_BACKLOG_LIMIT = 128 * 1024  # bytes waiting on a TCP connection, as at the super peer


def derived_udp_port(public_key: bytes) -> int:
    """A stable per-identity port in 22528..65534, like drasyl-rs (its hash is not portable)."""
    return 22528 + int.from_bytes(hashlib.sha256(public_key).digest()[:8], "big") % 43007


def node_config_from_env() -> NodeConfig:
    """The node settings from ``DRASYL_*`` variables (drasyl-rs' names and defaults), strictly
    parsed: a bad value is a :class:`ConfigError` naming the variable."""
    return NodeConfig(
        arm_messages=env_bool("DRASYL_ARM_MESSAGES", True),
        max_peers=env_int("DRASYL_MAX_PEERS", 8192, 0, 2**32),
        min_pow_difficulty=env_int("DRASYL_MIN_POW_DIFFICULTY", 24, 0, 64),
        hello_timeout_ms=env_int("DRASYL_HELLO_TIMEOUT", 30_000, 1, 2**32),
        hello_max_age_ms=env_int("DRASYL_HELLO_MAX_AGE", 60_000, 1, 2**32),
        housekeeping_interval_ms=env_int("DRASYL_HOUSEKEEPING_INTERVAL", 5_000, 100, 2**32),
        process_unites=env_bool("DRASYL_PROCESS_UNITES", True),
        enforce_tcp=env_bool("DRASYL_ENFORCE_TCP", False),
    )


def udp_from_env() -> tuple[int | None, list[str] | None]:
    """``DRASYL_UDP_PORT`` (unset or empty: derived from the key, 0: random) and
    ``DRASYL_UDP_ADDRS`` (space-separated IPs; unset or empty: every usable interface)."""
    port = env_int("DRASYL_UDP_PORT", 0, 0, 65535) if os.environ.get("DRASYL_UDP_PORT") else None
    addrs = env_str("DRASYL_UDP_ADDRS", "").split() or None
    for addr in addrs or ():
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise ConfigError(f"DRASYL_UDP_ADDRS: {addr!r} is not an IP address") from None
    return port, addrs


def _urls(super_peers: Iterable[str | SuperPeerUrl] | str) -> list[SuperPeerUrl]:
    if isinstance(super_peers, str):
        return parse_super_peers(super_peers)
    return [u if isinstance(u, SuperPeerUrl) else SuperPeerUrl.parse(u) for u in super_peers]


def _as_key(public_key: bytes | str) -> bytes:
    if isinstance(public_key, str):
        try:
            public_key = bytes.fromhex(public_key)
        except ValueError:
            raise DrasylError(f"not a hex public key: {public_key!r}") from None
    if len(public_key) != 32:
        raise DrasylError("a public key is 32 bytes (64 hex characters)")
    return bytes(public_key)


class Node:
    """An asyncio drasyl node. Create it with :meth:`start`; use ``async with`` or :meth:`close`."""

    def __init__(self, core: NodeCore, udp_addrs: list[str] | None, udp_port: int,
                 on_receive: Receiver | None = None) -> None:
        self._core = core
        self._on_receive = on_receive
        self._fixed_addrs = udp_addrs
        self._port = udp_port
        self._loop = asyncio.get_running_loop()
        self._sockets: dict[Address, UdpSocket] = {}  # one per local address, on the node's port
        self._probe_sockets: dict[Address, UdpSocket] = {}  # extra ones while probing (core.probing)
        self._send_sockets: dict[Address, UdpSocket] = {}  # both, by local address, for the outbox
        self._tcp: dict[bytes, FramedProtocol] = {}
        self._received: deque[tuple[bytes, bytes]] = deque()
        self._reader: asyncio.Future | None = None
        self._path_waiters: list[tuple[bytes, str, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0  # monotonic µs the timer is set for: earlier wishes of the core reset it
        self._faults = FaultLog(core.drops)
        self._drained = asyncio.Event()  # set by _flush when no APP waits for a super peer
        self._intercept: Intercept | None = None  # see set_intercept
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # --- life cycle -----------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        identity: Identity,
        super_peers: Iterable[str | SuperPeerUrl] | str,
        *,
        udp_port: int | None = None,
        udp_addrs: list[str] | None = None,
        config: NodeConfig | None = None,
        on_receive: Receiver | None = None,
    ) -> Node:
        """Bind UDP sockets, resolve the super peers and register with them.

        ``udp_port``: None derives a stable port from the public key, 0 picks a free one.
        ``udp_addrs``: local IPs to bind (one socket each); None means every usable interface
        address, re-read at each housekeeping tick.
        ``on_receive``: the data path's receive seam. Called synchronously once per received
        batch with the ``(sender, payload)`` list (payloads are fresh buffers; the list is
        not reused after the call); :meth:`recv` then gets nothing. None: queue for
        :meth:`recv` (at most :data:`INBOX_LIMIT`).
        """
        urls = _urls(super_peers)
        core = NodeCore(identity, urls, config, clock.monotonic_us(), clock.wall_offset_us())
        port = derived_udp_port(identity.public_key) if udp_port is None else udp_port
        node = cls(core, udp_addrs, port, on_receive)
        try:
            node._sync_sockets(starting=True)
            await node._resolve_super_peers()
        except BaseException:
            node._close_sockets()
            raise
        node._on_timer()
        return node

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for proto in self._tcp.values():
            proto.close()
        self._tcp.clear()
        self._close_sockets()
        if self._reader is not None and not self._reader.done():
            self._reader.set_exception(DrasylError("node closed"))
        for _, _, fut in self._path_waiters:
            if not fut.done():
                fut.set_exception(DrasylError("node closed"))

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- application API ------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self._core.public_key

    @property
    def udp_port(self) -> int:
        return self._port

    @property
    def core(self) -> NodeCore:
        """The protocol state, for inspection (tests, status output)."""
        return self._core

    def send_nowait(self, recipient: bytes | str, payload: bytes) -> None:
        """Send one message now (direct, relayed or queued until a super peer answers)."""
        if self._closed:
            raise DrasylError("node closed")
        self._core.send(_as_key(recipient), payload, self._now())
        self._flush()

    async def send(self, recipient: bytes | str, payload: bytes) -> None:
        self.send_nowait(recipient, payload)

    def send_many(self, recipient: bytes | str, payloads: Iterable[bytes]) -> None:
        """Send a batch to one peer with one clock read and one flush.

        A refused payload (e.g. too large) raises after what was accepted before it is sent.
        """
        if self._closed:
            raise DrasylError("node closed")
        key = _as_key(recipient)
        now = self._now()
        send = self._core.send
        try:
            for payload in payloads:
                send(key, payload, now)
        finally:
            self._flush()

    async def recv(self) -> tuple[bytes, bytes]:
        """The next ``(sender public key, payload)``."""
        while not self._received:
            await self._wait_received()
        return self._received.popleft()

    async def recv_batch(self, limit: int = 1024) -> list[tuple[bytes, bytes]]:
        """Everything received so far (at least one message, at most ``limit``)."""
        while not self._received:
            await self._wait_received()
        q = self._received
        n = min(limit, len(q))
        return [q.popleft() for _ in range(n)]

    def peers(self, nodes: bool = True) -> list[PeerInfo]:
        """Super peers and (unless ``nodes`` is false) node peers: path (direct/relayed/tcp,
        udp/tcp), RTT, bytes, time since the last APP received."""
        return self._core.peer_list(self._now(), nodes)

    # --- data path seam (the agent's TUN loop) --------------------------------------------

    def handle(self, peer: bytes | str, keys: tuple[bytes, bytes] | None = None) -> NodePeer:
        """A send handle for :meth:`send_batch`; the peer's state is kept while it is held.
        ``keys``: its session keys when already computed (see :meth:`NodeCore.handle`)."""
        return self._core.handle(_as_key(peer), self._now(), keys)

    def release(self, handle: NodePeer) -> None:
        self._core.release(handle)

    def send_batch(self, items: Iterable[tuple[NodePeer, bytes | bytearray | memoryview]]) -> int:
        """Send ``(handle, payload)`` pairs (payloads ≤ :data:`MAX_PAYLOAD`) with one clock
        read and one flush; returns how many were dropped as too large (counted, never raised)."""
        if self._closed:
            return 0
        dropped = self._core.send_batch(items, self._now())
        self._flush()
        return dropped

    def set_intercept(self, intercept: Intercept | None) -> None:
        """Let ``intercept`` read the node's UDP sockets (those it binds later too) before the
        core: the agent's C data path (:mod:`drasyl.agent.fast`), which takes the short-header
        APPs of known peers and delivers every other datagram, in order, to the core. It reads
        ``_send_sockets`` and ``_closed`` and the core's ``short_ids`` and peers' fields; only
        sockets with batched syscalls (``recvmmsg``) are intercepted. None: the node reads again."""
        self._intercept = intercept
        for sock in self._sockets.values():
            if sock.batcher is not None:
                sock.set_intercept(intercept)

    def set_advertised(self, endpoints: list[Address]) -> None:
        """Announce these public endpoints (a router's port mapping) to the super peers now and
        in every HELLO from now on; an empty list withdraws them."""
        if not self._closed:
            self._core.set_advertised(endpoints, self._now())
            self._flush()

    async def set_super_peers(self, super_peers: Iterable[str | SuperPeerUrl] | str) -> None:
        """Switch to another super peer set while running (a reload): resolve the new ones
        and register at once; unchanged super peers keep their paths and connections (see
        :meth:`NodeCore.set_super_peers`)."""
        self._core.set_super_peers(_urls(super_peers), self._now())
        self._flush()
        await self._resolve_super_peers()
        if self._timer is not None and not self._closed:
            self._timer.cancel()
            self._timer = self._loop.call_soon(self._on_timer)

    @property
    def inbox_drops(self) -> int:
        """Messages dropped because the application did not read them fast enough."""
        return self._core.drops["inbox_full"]

    def stats(self) -> dict[str, int]:
        """Dropped packets by reason (core, receive queue, TCP backlog, UDP send, oversize UDP) and queued APPs."""
        stats = dict(self._core.drops)
        stats["udp_send_failed"] = sum(s.send_drops for s in self._sockets.values())
        stats["udp_oversize"] = sum(s.recv_truncated for s in self._sockets.values())
        stats["relay_queued"] = self._core.queued
        return stats

    async def wait_path(self, peer: bytes | str, path: str, timeout: float) -> None:
        """Wait until APPs to ``peer`` travel ``path`` (``direct``, ``relayed``, ``tcp``)."""
        key = _as_key(peer)
        entry = self._core.peers.get(key)
        if entry is not None and entry.route == path:
            return
        fut = self._loop.create_future()
        waiter = (key, path, fut)
        self._path_waiters.append(waiter)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            if waiter in self._path_waiters:
                self._path_waiters.remove(waiter)

    async def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until no APP is held back waiting for a super peer."""
        if self._core.queued:
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return not self._core.queued

    # --- internals: data path -------------------------------------------------------------

    def _wait_received(self) -> asyncio.Future:
        if self._closed:
            raise DrasylError("node closed")
        if self._reader is None or self._reader.done():
            self._reader = self._loop.create_future()
        return self._reader

    def _now(self) -> int:
        """Monotonic µs for the core, after bringing its wall clock offset up to date."""
        self._core.wall_offset = clock.wall_offset_us()
        return clock.monotonic_us()

    def _on_datagrams(self, sock: UdpSocket, packets: list[tuple[bytes, Address]]) -> None:
        now = self._now()
        receive = self._core.receive_datagram
        local = sock.local
        for data, addr in packets:
            try:
                receive(data, local, addr, now)
            except Exception:  # a bug must not stop the node: drop the packet, keep going
                self._faults.report("processing a UDP datagram")
        self._flush()

    def _flush(self) -> None:
        core = self._core
        if core.outbox:
            out, core.outbox = core.outbox, []
            send_transmits(out, self._send_sockets, self._send_tcp)
        if core.inbox and self._on_receive is not None:
            batch, core.inbox = core.inbox, []
            self._on_receive(batch)
        elif core.inbox:
            self._received.extend((sender, bytes(payload)) for sender, payload in core.inbox)
            core.inbox.clear()
            excess = len(self._received) - INBOX_LIMIT
            if excess > 0:
                for _ in range(excess):
                    self._received.popleft()
                core.drops["inbox_full"] += excess
            if self._reader is not None and not self._reader.done():
                self._reader.set_result(None)
        while core.events:
            self._on_event(core.events.popleft())
        if not core.queued:
            self._drained.set()
        if core.next_timer() < self._timer_at and self._timer is not None and not self._closed:
            self._timer.cancel()  # e.g. a UNITE asks for a probing decision before the next tick
            self._schedule()

    def _send_tcp(self, data: bytes | bytearray, super_peer: bytes) -> None:
        conn = self._tcp.get(super_peer)
        if conn is None:
            return
        transport = conn.transport
        if transport is not None and transport.get_write_buffer_size() > TCP_BACKLOG_LIMIT:
            self._core.drops["tcp_backlog_full"] += 1  # a stalled super peer: no unbounded queue
            return
        conn.send(data)

    def _on_event(self, event: object) -> None:
        if isinstance(event, PathChanged):
            for key, path, fut in list(self._path_waiters):
                if key == event.peer and path == event.path and not fut.done():
                    fut.set_result(None)
        elif isinstance(event, OpenTcp):
            self._spawn(self._open_tcp(event))
        elif isinstance(event, CloseTcp):
            conn = self._tcp.pop(event.super_peer, None)
            if conn is not None:
                conn.close()
        elif isinstance(event, OpenProbeSockets):
            self._open_probe_sockets(event.ip, event.count)
        elif isinstance(event, CloseProbeSockets):
            for local in event.locals:
                sock = self._probe_sockets.pop(local, None)
                if sock is not None:
                    sock.close()
            self._send_sockets = {**self._sockets, **self._probe_sockets}

    def _open_probe_sockets(self, ip: str, count: int) -> None:
        """Bind up to ``count`` sockets on random ports; the core learns which it got."""
        opened = []
        for _ in range(count):
            try:
                sock = bind_udp(ip, 0)
            except OSError as exc:
                log.warning("probing: cannot bind more UDP sockets on %s (%d bound): %s", ip, len(opened),
                            exc.strerror)
                break
            udp = UdpSocket(sock, self._on_datagrams, batch=8)
            self._probe_sockets[udp.local] = udp
            opened.append(udp.local)
        self._send_sockets = {**self._sockets, **self._probe_sockets}
        self._core.probe_sockets_opened(opened, self._now())

    # --- internals: timers, sockets, DNS, TCP ---------------------------------------------

    def _on_timer(self) -> None:
        if self._closed:
            return
        try:
            if self._fixed_addrs is None:
                self._sync_sockets()
            self._core.handle_timer(self._now())
            self._flush()
            self._spawn(self._resolve_super_peers())
        except Exception:  # the timer must keep running whatever happened
            self._faults.report("housekeeping")
        self._schedule()

    def _schedule(self) -> None:
        # the loop's clock is time.monotonic(), the clock of next_timer(): wall steps don't matter
        self._timer_at = self._core.next_timer()
        delay = max(0.0, (self._timer_at - clock.monotonic_us()) / 1e6)
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sync_sockets(self, starting: bool = False) -> None:
        """One UDP socket per local address, all on the same port (spec §6.2.1).

        At start a failure is a ConfigError; later (addresses come and go) it is logged and
        the node carries on with what it has.
        """
        wanted = self._fixed_addrs if self._fixed_addrs is not None else local_addresses()
        if not wanted:
            if starting:
                raise ConfigError("no usable local IP address to bind; set udp_addrs")
            log.warning("no usable local IP address; keeping the current sockets")
            return
        current = {local[0]: local for local in self._sockets}
        for ip in wanted:
            if ip in current:
                continue
            try:
                sock = bind_udp(ip, self._port, reuse_port=True)
            except OSError as exc:
                if starting:
                    raise ConfigError(f"cannot bind UDP {ip} port {self._port}: {exc.strerror}") from None
                log.warning("cannot bind UDP %s port %s: %s", ip, self._port, exc.strerror)
                continue
            if self._port == 0:
                self._port = sock.getsockname()[1]
            udp = UdpSocket(sock, self._on_datagrams)
            if udp.batcher is not None and self._intercept is not None:
                udp.set_intercept(self._intercept)
            self._sockets[udp.local] = udp
        for ip, local in current.items():
            if ip not in wanted:
                self._sockets.pop(local).close()
        self._send_sockets = {**self._sockets, **self._probe_sockets}
        self._core.set_local_addresses(list(self._sockets))

    def _close_sockets(self) -> None:
        for sock in (*self._sockets.values(), *self._probe_sockets.values()):
            sock.close()
        self._sockets.clear()
        self._probe_sockets.clear()
        self._send_sockets = {}

    async def _resolve_super_peers(self) -> None:
        for sp in self._core.super_peers.values():
            host = sp.url.host
            try:
                ipaddress.ip_address(host)
                addrs = [(host, sp.url.port)]
            except ValueError:
                try:
                    infos = await asyncio.wait_for(
                        self._loop.getaddrinfo(host, sp.url.port, type=socket.SOCK_DGRAM), DNS_TIMEOUT
                    )
                except (OSError, asyncio.TimeoutError) as exc:
                    log.warning("cannot resolve super peer %s: %s", host, exc)
                    continue  # keep the previous addresses
                addrs = [info[4][:2] for info in infos]
            if not self._closed:
                self._core.set_super_peer_addresses(sp.public_key, addrs)

    async def _open_tcp(self, event: OpenTcp) -> None:
        pk = event.super_peer
        proto: FramedProtocol | None = None

        def on_frame(conn: FramedProtocol, frame: bytes) -> None:
            if self._tcp.get(pk) is not conn:
                return
            try:
                valid = self._core.receive_tcp(pk, frame, self._now())
            except Exception:  # a bug must not go unnoticed, nor kill the connection silently
                self._faults.report("processing a TCP frame")
                valid = False
            if not valid:
                conn.close()
            self._flush()

        def on_close(conn: FramedProtocol) -> None:
            if self._tcp.get(pk) is conn:
                del self._tcp[pk]
                self._core.tcp_closed(pk, self._now())
                self._flush()

        try:
            _, proto = await asyncio.wait_for(
                self._loop.create_connection(lambda: FramedProtocol(on_frame, on_close), event.host, event.port),
                TCP_CONNECT_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            log.info("TCP to super peer %s:%s failed: %s", event.host, event.port, exc)
            self._core.tcp_closed(pk, self._now())
            self._flush()
            return
        if self._closed or self._core.super_peers[pk].tcp != "connecting":
            proto.close()  # UDP came back while we were connecting
            return
        self._tcp[pk] = proto
        self._core.tcp_connected(pk, self._now())
        self._flush()
