"""``drasyl.Node`` over real sockets when things go wrong: wall clock steps, a hostile node,
a half-dead or stalled super peer, an application that does not read, refused payloads.

The super peer is either the real one (``python -m drasyl.superpeer`` on loopback, fixture
from test_integration) or :class:`TcpSuperPeer`, a small in-process TCP server with a real
super peer identity that ACKs HELLOs only while it is told to: a super peer whose replies
get lost, which a real one cannot be made into without touching the host's firewall.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from test_integration import LOCALHOST, poll, recv, registered, run, start_node, super_peer  # noqa: F401

from drasyl.crypto import session_keys
from drasyl.identity import Identity
from drasyl.messages import ACK, APP, HELLO, Ack, HelloSuperPeer, encode_message, open_body, parse_long_header
from drasyl.net.tcp import FramedProtocol
from drasyl.node import Node, NodeConfig, PayloadTooLarge
from drasyl.node import api as node_api
from drasyl.transmit import UDP

INTERVAL_MS = 200  # housekeeping interval of the nodes here: timings scale with it
MAX_LONG_APP = 1345
STRANGER = bytes(range(32))  # a peer nobody has talked to


class TcpSuperPeer:
    """A super peer reachable over TCP only, whose answers can be switched off.

    Its UDP port is a bound socket nobody reads: HELLOs there vanish without an ICMP error,
    so a node falls back to TCP after one interval.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.answering = True
        self.conns: list[FramedProtocol] = []
        self.closed: list[FramedProtocol] = []
        self.frames: list[tuple[int, int]] = []  # (connection index, message type)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((LOCALHOST, 0))
        self._server: asyncio.AbstractServer | None = None
        self.url = ""

    async def start(self) -> TcpSuperPeer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FramedProtocol(self._on_frame, self.closed.append),
                                                LOCALHOST, 0)
        tcp_port = self._server.sockets[0].getsockname()[1]
        self.url = (f"udp://{LOCALHOST}:{self._udp.getsockname()[1]}?publicKey={self.identity.public_key_hex}"
                    f"&networkId=1&tcpPort={tcp_port}")
        return self

    def _on_frame(self, conn: FramedProtocol, frame: bytes) -> None:
        if conn not in self.conns:
            self.conns.append(conn)
        header = parse_long_header(frame)
        self.frames.append((self.conns.index(conn), header.message_type))
        if header.message_type == HELLO and self.answering:
            rx, tx = session_keys(self.identity, header.sender)
            hello = HelloSuperPeer.parse(open_body(frame, header, rx))
            conn.send(encode_message(ACK, 1, header.sender, self.identity.public_key,
                                     self.identity.proof_of_work, Ack(hello.time).encode(), tx))

    def apps(self, conn: int) -> int:
        return sum(1 for i, mtype in self.frames if i == conn and mtype == APP)

    async def close(self) -> None:
        for conn in self.conns:
            conn.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._udp.close()


async def on_tcp(identity: Identity, sp: TcpSuperPeer, **settings) -> Node:
    node = await Node.start(identity, [sp.url], udp_port=0, udp_addrs=[LOCALHOST],
                            config=NodeConfig(housekeeping_interval_ms=INTERVAL_MS, **settings))
    try:
        await registered(node, "tcp", 10 * INTERVAL_MS / 1000)
    except BaseException:
        await node.close()
        raise
    return node


# --- time ------------------------------------------------------------------------------------


def test_wall_clock_steps_neither_stop_nor_bunch_hellos(super_peer, ids, monkeypatch):  # noqa: F811
    hellos: list[float] = []  # monotonic time of every HELLO sent to the super peer
    original = node_api.send_transmits

    def recording(out, sockets, send_tcp):
        hellos.extend(time.monotonic() for data, proto, _, remote in out
                      if proto == UDP and remote == super_peer.address and data[78] == HELLO)
        return original(out, sockets, send_tcp)

    monkeypatch.setattr(node_api, "send_transmits", recording)
    step = [3600 * 10**9]  # the wall clock starts an hour ahead (booted before NTP synced)
    real_time_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + step[0])

    async def scenario() -> None:
        node = await start_node(ids["id_2"], super_peer, NodeConfig(housekeeping_interval_ms=INTERVAL_MS))
        try:
            await registered(node)
            sp = next(iter(node.core.super_peers.values()))
            for new_step, name in ((0, "back"), (2 * 3600 * 10**9, "forward")):
                step[0] = new_step
                stepped, seen = time.monotonic(), len(hellos)
                await poll(lambda: len(hellos) >= seen + 3, 15 * INTERVAL_MS / 1000,
                           f"three HELLOs after the wall clock stepped {name}")
                took = hellos[seen + 2] - stepped
                assert took >= 1.5 * INTERVAL_MS / 1000, f"a burst of HELLOs after stepping {name}: {took:.3f} s"
                acked = sp.best_udp.last_ack
                await poll(lambda: sp.best_udp is not None and sp.best_udp.last_ack > acked,
                           5 * INTERVAL_MS / 1000, f"the super peer answers after the step {name}")
            assert min(sp.best_udp.rtts) >= 0 and max(sp.best_udp.rtts) < 1_000_000, sp.best_udp.rtts
        finally:
            await node.close()

    run(scenario())


# --- TCP fallback: cut only by the super peer, half-dead detected, bounded -------------------


def test_a_spoiled_relayed_app_does_not_cut_a_node_off_its_tcp_fallback(super_peer, ids):  # noqa: F811
    a_id, b_id = ids["id_2"], ids["id_3"]

    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind((LOCALHOST, 0))  # A's UDP to the super peer goes here: A must use TCP
        url = super_peer.url.replace(f":{super_peer.address[1]}?", f":{silent.getsockname()[1]}?")
        a = await Node.start(a_id, [url], udp_port=0, udp_addrs=[LOCALHOST],
                             config=NodeConfig(housekeeping_interval_ms=INTERVAL_MS, process_unites=False))
        b = await start_node(b_id, super_peer)
        try:
            await registered(a, "tcp", 10 * INTERVAL_MS / 1000)
            await registered(b)
            conn = a._tcp[ids["id_1"].public_key]
            # anyone registered can make the super peer relay garbage to A (it cannot check
            # the end-to-end tag): forged with B's key from a socket of the test's own
            tx = session_keys(b_id, a_id.public_key)[1]
            spoiled = bytearray(encode_message(APP, 1, a_id.public_key, b_id.public_key, b_id.proof_of_work,
                                               b"spoiled", tx))
            spoiled[-1] ^= 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
                for _ in range(5):
                    attacker.sendto(bytes(spoiled), super_peer.address)
            await poll(lambda: a.core.drops["malformed"] == 5, 3.0, f"A drops 5 spoiled APPs: {a.core.drops}")
            assert a._tcp.get(ids["id_1"].public_key) is conn and not conn.transport.is_closing()
            await b.send(a_id.public_key, b"still reachable")
            assert await recv(a) == (b_id.public_key, b"still reachable")
            assert a.core.super_peers[ids["id_1"].public_key].tcp == "up"
        finally:
            await a.close()
            await b.close()
            silent.close()

    run(scenario())


def test_half_dead_tcp_is_closed_reopened_and_traffic_waits_for_a_live_one(ids):
    async def scenario() -> None:
        sp = await TcpSuperPeer(ids["id_1"]).start()
        node = await on_tcp(ids["id_2"], sp)
        peer = ids["id_3"].public_key
        try:
            node.send_nowait(peer, b"over the live connection")
            await poll(lambda: sp.apps(0) == 1, 1.0, "the APP arrives over the live connection")
            sp.answering = False  # replies get lost from now on; the kernel keeps the connection
            silent_since = time.monotonic()
            await poll(lambda: sp.closed and sp.closed[0] is sp.conns[0], 10 * INTERVAL_MS / 1000,
                       "the node closes the connection that stopped answering")
            took = time.monotonic() - silent_since
            print(f"half-dead TCP closed {took:.2f} s after the super peer went silent")
            assert took >= 1.5 * INTERVAL_MS / 1000, "closed before two intervals without answer"
            node.send_nowait(peer, b"waits for a live super peer")
            assert node.core.queued == 1 and sp.apps(0) == 1
            await poll(lambda: len(sp.conns) >= 2, 10 * INTERVAL_MS / 1000, "the node reopens TCP")
            sp.answering = True
            await poll(lambda: sum(sp.apps(i) for i in range(1, len(sp.conns))) == 1, 10 * INTERVAL_MS / 1000,
                       "the queued APP goes out once a connection answers")
            assert node.core.queued == 0
        finally:
            await node.close()
            await sp.close()

    run(scenario())


def test_tcp_write_backlog_is_bounded_and_overflow_counted(ids):
    async def scenario() -> None:
        sp = await TcpSuperPeer(ids["id_1"]).start()
        node = await on_tcp(ids["id_2"], sp)
        try:
            conn = node._tcp[ids["id_1"].public_key]
            sp.conns[0].transport.pause_reading()  # a stalled super peer: nothing is read
            payload = os.urandom(MAX_LONG_APP)
            node.send_many(ids["id_3"].public_key, [payload] * 20_000)  # 27 MB
            backlog = conn.transport.get_write_buffer_size()
            print(f"backlog after 20 000 APPs: {backlog} bytes, dropped {node.stats()['tcp_backlog_full']}")
            assert backlog <= node_api.TCP_BACKLOG_LIMIT + 2 + 79 + MAX_LONG_APP + 40
            assert node.stats()["tcp_backlog_full"] > 10_000
        finally:
            await node.close()
            await sp.close()

    run(scenario())


# --- receive queue and sending ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def registered_pair(sp, ids) -> AsyncIterator[tuple[Node, Node]]:
    a = await start_node(ids["id_2"], sp)
    b = await start_node(ids["id_3"], sp)
    try:
        await registered(a)
        await registered(b)
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_receive_queue_is_bounded_and_drops_are_visible_in_stats(super_peer, ids, monkeypatch):  # noqa: F811
    monkeypatch.setattr(node_api, "INBOX_LIMIT", 100)

    async def scenario() -> None:
        async with registered_pair(super_peer, ids) as (a, b):
            a.send_many(b.public_key, [b"%d" % i for i in range(300)])  # B does not read
            await poll(lambda: b.stats().get("inbox_full", 0) + len(b._received) == 300, 5.0,
                       f"B received or dropped all 300: {b.stats()}")
            assert b.stats()["inbox_full"] == 200 and b.inbox_drops == 200
            batch = await b.recv_batch(1000)
            assert [p for _, p in batch] == [b"%d" % i for i in range(200, 300)]  # the newest stay

    run(scenario())


def test_send_many_sends_what_it_accepted_before_a_refused_payload(super_peer, ids):  # noqa: F811
    async def scenario() -> None:
        async with registered_pair(super_peer, ids) as (a, b):
            with pytest.raises(PayloadTooLarge):
                a.send_many(b.public_key, [b"one", b"two", bytes(5000), b"never"])
            assert a.core.outbox == []  # flushed at once, not at some later wake-up
            assert [await recv(b), await recv(b)] == [(a.public_key, b"one"), (a.public_key, b"two")]
            with pytest.raises(PayloadTooLarge):
                a.send_nowait(STRANGER, bytes(5000))
            assert STRANGER not in a.core.peers  # refused: no state left behind

    run(scenario())
