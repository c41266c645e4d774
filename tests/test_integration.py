"""End to end on loopback: a real super peer process and real nodes (spec §6.1, §6.2).

The super peer (``python -m drasyl.superpeer``) runs as a subprocess on 127.0.0.1 with free
ports and its Prometheus endpoint on, so the tests can tell what it relayed. The nodes are
in-process :class:`drasyl.Node` instances (one UDP socket on 127.0.0.1, free port), plus the
example node (``python -m drasyl.node``) as a subprocess.

What is pinned down: the first message is relayed and triggers UNITE; the direct path is used
as soon as it answers (not at the next 5 s tick); then APPs go as short-header datagrams and
the super peer relays nothing more; thousands of maximum-size messages arrive complete both
ways; TCP-registered nodes talk through the super peer; the example node and the library
interoperate. Every wait has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Awaitable, Iterator

import pytest
from netns import Process, python_env

from drasyl.crypto import ARM_OVERHEAD
from drasyl.identity import Identity
from drasyl.messages import (
    APP,
    LONG_HEADER_LEN,
    MAGIC_BYTES,
    MAX_ARMED_LONG_APP,
    parse_long_header,
)
from drasyl.node import Node, NodeConfig
from drasyl.node import api as node_api
from drasyl.transmit import UDP
from drasyl.urls import SuperPeerUrl

LOCALHOST = "127.0.0.1"
START_S = 10.0
REGISTER_S = 3.0  # first HELLO goes out at start; its ACK takes a millisecond on loopback
DIRECT_S = 2.0  # first relayed APP -> UNITE -> HELLO/ACK: no 5 s tick may be in between
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class SuperPeer:
    """A ``drasyl-sp`` subprocess on loopback with its /metrics endpoint."""

    def __init__(self, identity_file: str, **env: str) -> None:
        self.metrics_port = _free_tcp_port()
        self.proc = Process([sys.executable, "-m", "drasyl.superpeer"], "drasyl-sp", python_env(
            DRASYL_IDENTITY_FILE=identity_file,
            DRASYL_UDP4_LISTEN=f"{LOCALHOST}:0", DRASYL_UDP6_LISTEN="",
            DRASYL_TCP4_LISTEN=f"{LOCALHOST}:0", DRASYL_TCP6_LISTEN="",
            DRASYL_PEERS_PRINT_INTERVAL="0",
            DRASYL_PROMETHEUS_LISTEN=f"{LOCALHOST}:{self.metrics_port}",
            **env,
        ))
        try:
            self.proc.wait_for_line(r"^Super peer listening on:$", START_S)
            self.url = self.proc.wait_for_line(r"^  (udp://127\.0\.0\.1:\d+\?\S+&tcpPort=\d+)$", START_S).match.group(1)
        except BaseException:
            self.proc.stop()
            raise
        parsed = SuperPeerUrl.parse(self.url)
        self.address = (parsed.host, parsed.port)

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        """Every sample of /metrics, keyed by (name, frozenset of label items)."""
        with urllib.request.urlopen(f"http://{LOCALHOST}:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        # parsed here: prometheus_client's parser renames counters to ..._total
        samples = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m:
                labels = frozenset(_LABEL.findall(m.group(2) or ""))
                samples[(m.group(1), labels)] = float(m.group(3))
        return samples

    async def ametrics(self) -> dict[tuple[str, frozenset], float]:
        return await asyncio.to_thread(self.metrics)


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def app_counts(metrics: dict, a: Identity, b: Identity) -> tuple[float, float, float]:
    """(APPs the super peer got from a, APPs it sent to b, bytes it relayed a -> b)."""
    return (
        sample(metrics, "drasyl_sp_messages", type="app", peer=a.public_key_hex, direction="rx"),
        sample(metrics, "drasyl_sp_messages", type="app", peer=b.public_key_hex, direction="tx"),
        sample(metrics, "drasyl_sp_relayed_bytes", src=a.public_key_hex, dst=b.public_key_hex),
    )


@pytest.fixture
def super_peer(tmp_path, ids) -> Iterator[SuperPeer]:
    path = tmp_path / "sp.identity"
    ids["id_1"].save(path)
    sp = SuperPeer(str(path))
    try:
        yield sp
    finally:
        sp.proc.stop()


def run(coro: Awaitable, timeout: float = 60.0):
    """Run one test scenario on a fresh event loop, bounded by ``timeout``."""
    try:
        return asyncio.run(asyncio.wait_for(coro, timeout))
    except TimeoutError:
        raise AssertionError(f"scenario did not finish within {timeout:g} s") from None


async def poll(condition, timeout: float, what: str) -> None:
    """Wait until ``condition()`` is true, checking every 5 ms; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(0.005)


async def registered(node: Node, path: str = "udp", timeout: float = REGISTER_S) -> None:
    """Wait until the node's super peer answers over ``path`` (udp or tcp)."""
    def ok() -> bool:
        return any(p.role == "super_peer" and p.path == path and p.rtt_ms is not None for p in node.peers())
    await poll(ok, timeout, f"{node.public_key.hex()[:8]} registered over {path}: {node.peers()}")


async def start_node(identity: Identity, sp: SuperPeer, config: NodeConfig | None = None) -> Node:
    return await Node.start(identity, [sp.url], udp_port=0, udp_addrs=[LOCALHOST], config=config)


async def recv(node: Node, timeout: float = 5.0) -> tuple[bytes, bytes]:
    try:
        return await asyncio.wait_for(node.recv(), timeout)
    except TimeoutError:
        raise AssertionError(f"nothing received within {timeout:g} s; drops: {node.core.drops}") from None


def test_first_message_is_relayed_then_direct_then_short_header(super_peer, ids, monkeypatch):
    a_id, b_id = ids["id_2"], ids["id_3"]
    sent: list[tuple[tuple, bytes, tuple]] = []  # (local, datagram, remote) of every UDP send
    original_send_transmits = node_api.send_transmits

    def recording_send_transmits(out, sockets, send_tcp):
        sent.extend((local, bytes(data), remote) for data, proto, local, remote in out if proto == UDP)
        return original_send_transmits(out, sockets, send_tcp)

    monkeypatch.setattr(node_api, "send_transmits", recording_send_transmits)

    async def scenario() -> None:
        a = await start_node(a_id, super_peer)
        b = await start_node(b_id, super_peer)
        try:
            await registered(a)
            await registered(b)

            # (a) the first message goes through the super peer
            first = b"first message " + os.urandom(200)
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            a.send_nowait(b.public_key, first)
            peer_b = a.core.peers[b.public_key]
            assert peer_b.route == "relayed" and peer_b.best is None
            assert await recv(b) == (a.public_key, first)

            # (b) UNITE follows at once; the direct path is used as soon as it answers
            await a.wait_path(b.public_key, "direct", DIRECT_S)
            direct_after = loop.time() - sent_at
            print(f"direct path {direct_after * 1000:.0f} ms after the first message")
            assert direct_after < DIRECT_S
            await b.wait_path(a.public_key, "direct", DIRECT_S)

            m = await super_peer.ametrics()
            assert app_counts(m, a_id, b_id) == (1, 1, LONG_HEADER_LEN + ARM_OVERHEAD + len(first))
            for node_id in (a_id, b_id):
                assert sample(m, "drasyl_sp_messages", type="unite", peer=node_id.public_key_hex,
                              direction="tx") == 1

            # (c) B's HELLO told A its short id: later APPs are short-header, sent directly
            await poll(lambda: peer_b.tx_short_id is not None, DIRECT_S, "A learns B's short id")
            short_id = peer_b.tx_short_id
            assert short_id == b.core.peers[a.public_key].rx_short_id
            b_address = (LOCALHOST, b.udp_port)
            mark = len(sent)
            messages = [b"short %d " % i + os.urandom(i * 50) for i in range(20)]
            for message in messages:
                await a.send(b.public_key, message)
            received = [await recv(b) for _ in messages]
            assert received == [(a.public_key, message) for message in messages]
            to_b = [(data, remote) for local, data, remote in sent[mark:] if local == (LOCALHOST, a.udp_port)]
            short = [remote for data, remote in to_b if data[:4] == short_id]
            assert short == [b_address] * len(messages)
            long_apps = [data for data, _ in to_b
                         if data[:4] == MAGIC_BYTES and parse_long_header(data).message_type == APP]
            assert long_apps == [], "long-header APPs after the short id was known"
            assert app_counts(await super_peer.ametrics(), a_id, b_id) == app_counts(m, a_id, b_id), \
                "the super peer relayed APPs although the direct path was up"

            # (e) the peer list shows both kinds of peer with their paths
            rows = {p.public_key: p for p in a.peers()}
            row_b, row_sp = rows[b.public_key], rows[ids["id_1"].public_key]
            assert (row_b.role, row_b.path, row_b.remote) == ("node", "direct", b_address)
            assert row_b.rtt_ms is not None and 0 <= row_b.rtt_ms < 1000
            assert (row_sp.role, row_sp.path, row_sp.remote) == ("super_peer", "udp", super_peer.address)
            assert row_sp.rtt_ms is not None and 0 <= row_sp.rtt_ms < 1000
        finally:
            await a.close()
            await b.close()

    run(scenario())


MESSAGES = 2000
WINDOW = 64  # messages in flight per direction: a moderate pace, no sleeps
STALL_S = 5.0  # a lost message stops the window; this long without progress fails


class Direction:
    """One direction of the bulk test: what was sent and what arrived, in order of index."""

    def __init__(self, name: str, sender: Node, receiver: Node) -> None:
        self.name = name
        self.sender = sender
        self.receiver = receiver
        self.payloads = [i.to_bytes(4, "big") + os.urandom(MAX_ARMED_LONG_APP - 4) for i in range(MESSAGES)]
        self.seen: set[int] = set()
        self.progress = asyncio.Event()

    async def send_all(self) -> None:
        for i, payload in enumerate(self.payloads):
            while i - len(self.seen) >= WINDOW:
                self.progress.clear()
                try:
                    await asyncio.wait_for(self.progress.wait(), STALL_S)
                except TimeoutError:
                    missing = sorted(set(range(i)) - self.seen)
                    raise AssertionError(
                        f"{self.name}: no progress for {STALL_S:g} s; {len(self.seen)} of {i} sent arrived, "
                        f"missing {missing[:20]}; sender drops {self.sender.core.drops}, "
                        f"receiver drops {self.receiver.core.drops}"
                    ) from None
            self.sender.send_nowait(self.receiver.public_key, payload)

    def received(self, payload: bytes) -> None:
        index = int.from_bytes(payload[:4], "big")
        assert index < MESSAGES and payload == self.payloads[index], f"{self.name}: corrupt message {index}"
        assert index not in self.seen, f"{self.name}: message {index} arrived twice"
        self.seen.add(index)
        self.progress.set()


async def receive_all(node: Node, directions: dict[bytes, Direction]) -> None:
    while any(len(d.seen) < MESSAGES for d in directions.values()):
        try:
            batch = await asyncio.wait_for(node.recv_batch(), STALL_S)
        except TimeoutError:
            raise AssertionError(
                f"nothing received for {STALL_S:g} s: "
                + "; ".join(f"{d.name}: {len(d.seen)} of {MESSAGES}, missing "
                            f"{sorted(set(range(MESSAGES)) - d.seen)[:20]}" for d in directions.values())
                + f"; receiver drops {node.core.drops}"
            ) from None
        for sender, payload in batch:
            directions[sender].received(payload)


def test_thousands_of_max_size_messages_arrive_complete_both_ways(super_peer, ids):
    async def scenario() -> None:
        a = await start_node(ids["id_2"], super_peer)
        b = await start_node(ids["id_3"], super_peer)
        try:
            await registered(a)
            await registered(b)
            # no direct path yet: the first messages are relayed, the rest go direct
            ab = Direction("A->B", a, b)
            ba = Direction("B->A", b, a)
            started = time.monotonic()
            await asyncio.gather(
                ab.send_all(), ba.send_all(),
                receive_all(b, {a.public_key: ab}), receive_all(a, {b.public_key: ba}),
            )
            elapsed = time.monotonic() - started
            print(f"{2 * MESSAGES} messages of {MAX_ARMED_LONG_APP} bytes in {elapsed:.2f} s")
            assert len(ab.seen) == len(ba.seen) == MESSAGES
            relayed = app_counts(await super_peer.ametrics(), ids["id_2"], ids["id_3"])[0]
            print(f"A->B: {relayed:.0f} relayed by the super peer, the rest direct")
            assert 1 <= relayed < MESSAGES
            assert a.core.peers[b.public_key].route == b.core.peers[a.public_key].route == "direct"
            assert a.inbox_drops == b.inbox_drops == 0
        finally:
            await a.close()
            await b.close()

    run(scenario(), timeout=120.0)


def test_nodes_registered_over_tcp_talk_through_the_super_peer(super_peer, ids):
    """Both nodes on TCP (enforce_tcp): the super peer relays APP frames over TCP both ways."""
    async def scenario() -> None:
        config = NodeConfig(enforce_tcp=True, process_unites=False)
        a = await start_node(ids["id_2"], super_peer, config)
        b = await start_node(ids["id_3"], super_peer, config)
        try:
            await registered(a, "tcp")
            await registered(b, "tcp")
            for src, dst in ((a, b), (b, a), (a, b)):
                payload = os.urandom(MAX_ARMED_LONG_APP)
                await src.send(dst.public_key, payload)
                assert await recv(dst) == (src.public_key, payload)
                assert src.core.peers[dst.public_key].route == "tcp"
            assert [row.path for row in a.peers() if row.role == "super_peer"] == ["tcp"]
            m = await super_peer.ametrics()
            assert app_counts(m, ids["id_2"], ids["id_3"])[:2] == (2, 2)
            assert app_counts(m, ids["id_3"], ids["id_2"])[:2] == (1, 1)
            for node_id in (ids["id_2"], ids["id_3"]):
                assert sample(m, "drasyl_sp_peer_paths", peer=node_id.public_key_hex,
                              ip_version="ipv4", transport="tcp") == 1
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_example_node_and_library_node_message_each_other(super_peer, ids, tmp_path):
    node_id, example_id = ids["id_2"], ids["id_3"]
    example_file = tmp_path / "example.identity"
    example_id.save(example_file)

    async def scenario() -> None:
        node = await start_node(node_id, super_peer)
        example = Process([sys.executable, "-m", "drasyl.node"], "example node", python_env(
            DRASYL_IDENTITY_FILE=str(example_file), DRASYL_SUPER_PEERS=super_peer.url,
            DRASYL_UDP_ADDRS=LOCALHOST, DRASYL_UDP_PORT="0", DRASYL_LOG_LEVEL="info",
        ))
        try:
            await registered(node)
            line = await asyncio.to_thread(example.wait_for_line, r"^I am ([0-9a-f]{64})$", START_S)
            assert line.match.group(1) == example_id.public_key_hex

            async def round_trip(text: str, reply: str) -> None:
                example.write(node_id.public_key_hex, text)
                assert await recv(node) == (example_id.public_key, text.encode())
                await node.send(example_id.public_key, reply.encode())
                pattern = rf"^{node_id.public_key_hex}: {re.escape(reply)} \({len(reply.encode())} bytes\)$"
                await asyncio.to_thread(example.wait_for_line, pattern, 5.0)

            # relayed first (the example node's message waits for its registration) ...
            await round_trip("hello from the example node", "hello from drasyl.Node, grüße")
            # ... then over the direct path both have punched after the super peer's UNITE
            await node.wait_path(example_id.public_key, "direct", DIRECT_S)
            await round_trip("direct now", "direct too")
            assert node.core.peers[example_id.public_key].tx_short_id is not None

            example.close_stdin()
            assert await asyncio.to_thread(example.wait, 15.0) == 0
        finally:
            example.stop()
            await node.close()

    run(scenario())


def test_nodes_on_ipv6_register_relay_and_go_direct(tmp_path, ids):
    """The whole path over IPv6 (::1): registration, relay, UNITE, direct short-header APPs."""
    path = tmp_path / "sp6.identity"
    ids["id_1"].save(path)
    sp = Process([sys.executable, "-m", "drasyl.superpeer"], "drasyl-sp6", python_env(
        DRASYL_IDENTITY_FILE=str(path),
        DRASYL_UDP4_LISTEN="", DRASYL_UDP6_LISTEN="[::1]:0",
        DRASYL_TCP4_LISTEN="", DRASYL_TCP6_LISTEN="",
        DRASYL_PEERS_PRINT_INTERVAL="0", DRASYL_PROMETHEUS_LISTEN="",
    ))
    try:
        url = sp.wait_for_line(r"^  (udp://\[::1\]:\d+\?\S+)$", START_S).match.group(1)

        async def scenario() -> None:
            a = await Node.start(ids["id_2"], [url], udp_port=0, udp_addrs=["::1"])
            b = await Node.start(ids["id_3"], [url], udp_port=0, udp_addrs=["::1"])
            try:
                await registered(a)
                await registered(b)
                await a.send(b.public_key, b"over v6, relayed")
                assert await recv(b) == (a.public_key, b"over v6, relayed")
                await a.wait_path(b.public_key, "direct", DIRECT_S)
                assert a.core.peers[b.public_key].tx_short_id is not None
                await a.send(b.public_key, b"over v6, direct")
                assert await recv(b) == (a.public_key, b"over v6, direct")
                row = next(p for p in a.peers() if p.public_key == b.public_key)
                assert row.path == "direct" and row.remote[0] == "::1", row
                assert not a.core.drops and not b.core.drops, (a.core.drops, b.core.drops)
            finally:
                await a.close()
                await b.close()

        run(scenario())
    finally:
        sp.stop()
