"""The super peer's I/O adapter in-process, on real loopback sockets: clock steps, TCP slots.

A :class:`SuperPeerServer` runs in the test's event loop with a short housekeeping interval,
so its timers can be observed within a second. Wall clock steps are simulated by shifting
``time.time_ns`` (what the wall clock reads); the monotonic clock runs on untouched. Nodes
are plain sockets speaking the wire format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from typing import Awaitable, Callable

import pytest

from drasyl.crypto import session_keys
from drasyl.identity import Identity
from drasyl.messages import ACK, APP, HELLO, HelloSuperPeer, encode_message, parse_long_header
from drasyl.net.tcp import frame
from drasyl.superpeer import server as server_module
from drasyl.superpeer.config import DaemonConfig, ListenAddress
from drasyl.superpeer.server import SuperPeerServer, connections_per_source
from drasyl.transmit import TCP, UDP

WAIT_S = 5.0
HOUR_NS = 3600 * 10**9


def config(**settings) -> DaemonConfig:
    """UDP4 and TCP4 on loopback ports the OS picks, nothing else; ``settings`` override."""
    base = DaemonConfig.from_env({"DRASYL_MIN_POW_DIFFICULTY": "0"})
    loopback = {"udp4_listen": ListenAddress("127.0.0.1", 0), "udp6_listen": None,
                "tcp4_listen": ListenAddress("127.0.0.1", 0), "tcp6_listen": None, "prometheus_listen": None}
    return dataclasses.replace(base, **{**loopback, **settings})


def hello(node: Identity, sp: Identity, time_us: int | None = None) -> bytes:
    _, tx = session_keys(node, sp.public_key)
    stamp = time.time_ns() // 1000 if time_us is None else time_us
    return encode_message(HELLO, 1, sp.public_key, node.public_key, node.proof_of_work,
                          HelloSuperPeer(stamp, 1, b"").encode(), tx)


def app(sender: Identity, recipient: Identity, payload: bytes) -> bytes:
    _, tx = session_keys(sender, recipient.public_key)
    return encode_message(APP, 1, recipient.public_key, sender.public_key, sender.proof_of_work, payload, tx)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
    """Seconds until ``condition()`` holds; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def running(cfg: DaemonConfig, identity: Identity, scenario: Callable[[SuperPeerServer], Awaitable[None]]) -> None:
    server = SuperPeerServer(identity, cfg)
    await server.start()
    try:
        await scenario(server)
    finally:
        await server.close()


def port(server: SuperPeerServer, name: str) -> tuple[str, int]:
    [listener] = [x for x in server.listeners if x.name == name]
    return listener.address.host, listener.address.port


class TcpNode:
    """A node's TCP connection to the super peer, as non-blocking socket in the test's loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, address: tuple[str, int], source: str = "127.0.0.1", rcvbuf: int | None = None) -> TcpNode:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def register(self, node: Identity, sp: Identity) -> None:
        await self.send(frame(hello(node, sp)))
        header = parse_long_header(await self.read_frame())
        assert header.message_type == ACK and header.recipient == node.public_key

    async def read_frame(self) -> bytes:
        loop = asyncio.get_running_loop()

        async def exactly(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = await loop.sock_recv(self.sock, n - len(data))
                if not chunk:
                    pytest.fail("TCP connection closed by the super peer")
                data += chunk
            return data

        return await asyncio.wait_for(exactly(int.from_bytes(await exactly(2), "big")), WAIT_S)

    async def closed_by_peer(self, timeout: float) -> bool:
        """True if the super peer closes the connection within ``timeout`` (data is discarded)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        if not await loop.sock_recv(self.sock, 65536):
                            return True
                    except ConnectionResetError:
                        return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


async def udp_register(server: SuperPeerServer, node: Identity, sp: Identity) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    await loop.sock_sendto(sock, hello(node, sp), port(server, "UDP4"))
    reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), WAIT_S)
    assert parse_long_header(reply).message_type == ACK
    return sock


def step_wall_clock(monkeypatch, ns: int) -> None:
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + ns)


def count_ticks(server: SuperPeerServer) -> list[float]:
    """Monotonic times of the metrics ticks from now on."""
    ticks: list[float] = []
    observe = server.metrics.observe_tick

    def observed() -> None:
        ticks.append(time.monotonic())
        observe()

    server.metrics.observe_tick = observed
    return ticks


# --- clock steps -------------------------------------------------------------------------------


def test_wall_clock_step_back_stops_neither_expiry_nor_idle_close_nor_metrics_ticks(ids, monkeypatch):
    sp, udp_node, tcp_node = ids["id_1"], ids["id_2"], ids["id_3"]
    cfg = config(hello_timeout_ms=300, housekeeping_interval_ms=100,
                 prometheus_listen=ListenAddress("127.0.0.1", 0))

    async def scenario(server: SuperPeerServer) -> None:
        udp = await udp_register(server, udp_node, sp)
        conn = await TcpNode.connect(port(server, "TCP4"))
        await conn.register(tcp_node, sp)
        ticks = count_ticks(server)
        step_wall_clock(monkeypatch, -HOUR_NS)
        await eventually(lambda: udp_node.public_key not in server.core.peers, "expiry of the UDP node")
        assert await conn.closed_by_peer(WAIT_S), "idle TCP connection not closed"
        await eventually(lambda: len(ticks) >= 5, "five metrics ticks")
        udp.close()
        conn.close()

    asyncio.run(running(cfg, sp, scenario))


def test_wall_clock_step_forward_neither_expires_peers_nor_bursts_ticks(ids, monkeypatch):
    sp, node = ids["id_1"], ids["id_2"]
    cfg = config(hello_timeout_ms=3000, housekeeping_interval_ms=100,
                 prometheus_listen=ListenAddress("127.0.0.1", 0))

    async def scenario(server: SuperPeerServer) -> None:
        udp = await udp_register(server, node, sp)
        ticks = count_ticks(server)
        step_wall_clock(monkeypatch, HOUR_NS)
        await eventually(lambda: len(ticks) >= 5, "five metrics ticks")
        assert node.public_key in server.core.peers, "registration expired by a wall clock step"
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert min(gaps) > 0.05, f"ticks came in a burst: {gaps}"
        udp.close()

    asyncio.run(running(cfg, sp, scenario))


# --- TCP slots -----------------------------------------------------------------------------------


def test_partial_frames_do_not_keep_a_tcp_slot(ids):
    sp, node = ids["id_1"], ids["id_2"]
    cfg = config(hello_timeout_ms=500, housekeeping_interval_ms=100)

    async def scenario(server: SuperPeerServer) -> None:
        conn = await TcpNode.connect(port(server, "TCP4"))
        await conn.register(node, sp)
        started = time.monotonic()
        closed = False
        for _ in range(30):  # a frame that never completes, one byte every 100 ms
            try:
                await conn.send(b"\x04" if _ == 0 else b"x")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if await conn.closed_by_peer(0.1):
                closed = True
                break
        assert closed, "a connection trickling a partial frame kept its slot for 3 s"
        assert time.monotonic() - started < 2.0
        conn.close()

    asyncio.run(running(cfg, sp, scenario))


def test_tcp_connection_must_register_within_the_deadline(ids, monkeypatch):
    monkeypatch.setattr(server_module, "REGISTER_TIMEOUT_S", 0.5)
    sp, node, other = ids["id_1"], ids["id_2"], ids["id_3"]

    async def scenario(server: SuperPeerServer) -> None:
        address = port(server, "TCP4")
        silent = await TcpNode.connect(address)
        apps_only = await TcpNode.connect(address)  # valid frames, but never a HELLO
        registered = await TcpNode.connect(address)
        await registered.register(node, sp)
        for _ in range(3):
            await apps_only.send(frame(app(other, node, b"keepalive?")))
        started = time.monotonic()
        assert await silent.closed_by_peer(WAIT_S)
        assert await apps_only.closed_by_peer(WAIT_S)
        assert 0.3 < time.monotonic() - started < 2.0
        assert not await registered.closed_by_peer(0.5), "a registered connection was closed"
        assert server.drops["tcp_unregistered"] == 2
        for conn in (silent, apps_only, registered):
            conn.close()

    asyncio.run(running(config(), sp, scenario))


def test_one_source_address_holds_at_most_its_share_of_max_peers(ids):
    sp = ids["id_1"]
    cfg = config(max_peers=256)
    share = connections_per_source(256)
    assert share == 8 and connections_per_source(8192) == 128 and connections_per_source(4) == 8

    async def scenario(server: SuperPeerServer) -> None:
        address = port(server, "TCP4")
        mine = [await TcpNode.connect(address) for _ in range(share)]
        extra = await TcpNode.connect(address)
        assert await extra.closed_by_peer(WAIT_S), "connection beyond the share was kept"
        others = await TcpNode.connect(address, source="127.0.0.2")
        assert not await others.closed_by_peer(0.3), "another address was refused"
        assert not any([await conn.closed_by_peer(0.05) for conn in mine])
        assert server.drops["tcp_source_limit"] == 1
        mine[0].close()  # a freed slot can be taken again
        # seven of mine and the other address's
        await eventually(lambda: len(server._connections) == share, "the close to be seen")
        again = await TcpNode.connect(address)
        assert not await again.closed_by_peer(0.3)
        for conn in (*mine[1:], extra, others, again):
            conn.close()

    asyncio.run(running(cfg, sp, scenario))


def test_write_backlogs_are_bounded_across_all_connections(ids, monkeypatch):
    total = 200 * 1024
    monkeypatch.setattr(server_module, "TCP_TOTAL_BACKLOG_LIMIT", total)
    sp, sender = ids["id_1"], ids["id_2"]
    readers = [Identity.generate(difficulty=0) for _ in range(8)]  # 8 × 128 KiB would exceed it
    size = 8000

    async def scenario(server: SuperPeerServer) -> None:
        slow = []
        for node in readers:  # they register, then stop reading
            conn = await TcpNode.connect(port(server, "TCP4"), rcvbuf=4096)
            await conn.register(node, sp)
            slow.append(conn)
        source = await TcpNode.connect(port(server, "TCP4"))
        await source.register(sender, sp)
        frames = b"".join(frame(app(sender, node, bytes(size))) for node in readers)
        peak = 0
        for _ in range(2000):  # at most 128 MB; the kernel's buffers take a few MB per reader first
            await source.send(frames)
            await asyncio.sleep(0)
            peak = max(peak, sum(c.transport.get_write_buffer_size() for c in server._connections.values()))
            if server.drops["tcp_backlog_total"] > 100:
                break
        assert server.drops["tcp_backlog_total"] > 100, dict(server.drops)
        # one frame per connection may go over: the one written while its buffer was empty
        assert peak <= total + len(readers) * (size + 200), f"{peak} bytes queued for TCP clients"
        assert peak > total // 2
        for conn in (*slow, source):
            conn.close()

    asyncio.run(running(config(), sp, scenario))


def test_one_socket_batch_only_for_udp_from_one_socket_without_runs_to_one_address():
    """The shortcut past send_transmits: anything it cannot send as one sendmmsg batch
    (TCP, a second socket, two in a row to one address: a GSO run) goes the general way."""
    one_socket_batch = server_module._one_socket_batch
    local, other = ("192.0.2.1", 22527), ("2001:db8::1", 22527)
    a, b = ("198.51.100.1", 1), ("198.51.100.2", 2)
    assert one_socket_batch([(b"x", UDP, local, a), (b"y", UDP, local, b), (b"z", UDP, local, a)]) == (
        local, [(b"x", a), (b"y", b), (b"z", a)])
    assert one_socket_batch([(b"x", UDP, local, a), (b"y", UDP, local, a)]) is None
    assert one_socket_batch([(b"x", UDP, local, a), (b"y", UDP, other, b)]) is None
    assert one_socket_batch([(b"x", UDP, local, a), (b"y", TCP, None, b)]) is None
