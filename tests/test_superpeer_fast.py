"""The super peer's C accelerator (drasyl/superpeer/_fast.c) against the pure Python core.

Two :class:`SuperPeerServer`s with the same identity run side by side on loopback, one
draining its UDP socket in C, the other with ``DRASYL_NATIVE=off``. Every node socket sends
each datagram to both, so both see the same sources; afterwards what each node received (ACKs
and UNITEs disarmed, since their random R differs; everything else byte for byte) and what
each core holds (peers with their counters, held APPs, UNITE records, drops) must be equal.
Hypothesis draws the sequences: registrations, replays, moves, changed endpoints, relays with
and without a UNITE due, hop limits, held APPs, bad tags, STUN, garbage and oversize datagrams.

Without the module built these tests skip, except under ``CI=true``: CI must test the C build.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netns import python_env

from drasyl import native
from drasyl.crypto import session_keys
from drasyl.errors import DrasylError
from drasyl.identity import Identity
from drasyl.messages import (ACK, APP, HELLO, UNITE, HelloSuperPeer, encode_endpoints, encode_message,
                             open_body, parse_long_header)
from drasyl.stun import binding_request
from drasyl.superpeer.config import ListenAddress
from drasyl.superpeer.server import SuperPeerServer

from test_superpeer_server import config, port

BUILT = importlib.util.find_spec("drasyl.superpeer._fast") is not None

pytestmark = pytest.mark.skipif(not BUILT and os.environ.get("CI") != "true",
                                reason="drasyl.superpeer._fast is not built (no C compiler at install)")

SP = Identity.generate(difficulty=0)
NODES = [Identity.generate(difficulty=0) for _ in range(4)]
ENDPOINTS = [b"", encode_endpoints([("192.0.2.1", 22527)]), encode_endpoints([("192.0.2.2", 0)])]
WAIT_S = 5.0
BIG = 3000  # longer than a receive slot: dropped as oversize
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; Python's socket module does not name it


def test_the_c_build_is_there_in_ci():
    """CI installs with a compiler: a build that fell back to Python must not pass as native."""
    assert BUILT, "drasyl.superpeer._fast was not built"


class Lab:
    """The two servers, and per node two UDP sockets (two sources) that send to both."""

    def __init__(self, native_server: SuperPeerServer, python_server: SuperPeerServer, ipv6: bool = False) -> None:
        self.servers = (native_server, python_server)
        self.ipv6 = ipv6
        self.targets = [port(s, "UDP6" if ipv6 else "UDP4") for s in self.servers]
        self.sockets = [[_udp("::1" if ipv6 else "127.0.0.1") for _ in range(2)] for _ in NODES]
        self.stamps = [int(time.time() * 1e6)] * len(NODES)
        self.probes = 0

    def send(self, sock: socket.socket, data: bytes) -> None:
        for target in self.targets:
            sock.sendto(data, target)

    async def barrier(self) -> None:
        """Wait until both servers processed all sent so far: a STUN request from a new source
        comes back only after what was queued before it (one socket, handled in order)."""
        self.probes += 1
        # IPv6 has one loopback address: its probes share a STUN budget of 64 (a few barriers)
        probe = _udp("::1" if self.ipv6 else f"127.0.{1 + self.probes // 250}.{1 + self.probes % 250}")
        loop = asyncio.get_running_loop()
        try:
            for target in self.targets:
                probe.sendto(binding_request()[0], target)
            for _ in self.targets:
                await asyncio.wait_for(loop.sock_recv(probe, 2048), WAIT_S)
        finally:
            probe.close()

    def received(self) -> list[list[list[tuple]]]:
        """Per node and socket: per server, what arrived, in order and comparable."""
        out = []
        for node, socks in zip(NODES, self.sockets):
            rx, _ = session_keys(node, SP.public_key)
            per_socket = []
            for sock in socks:
                got: dict[tuple, list[tuple]] = {t: [] for t in self.targets}
                while True:
                    try:
                        data, source = sock.recvfrom(4096)
                    except BlockingIOError:
                        break
                    got[source[:2]].append(_comparable(data, rx))
                per_socket.append([got[t] for t in self.targets])
            out.append(per_socket)
        return out

    def close(self) -> None:
        for socks in self.sockets:
            for sock in socks:
                sock.close()


def _udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:  # both servers' answers wait here until read: the default buffer overflows
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def _comparable(data: bytes, rx: bytes) -> tuple:
    """An ACK or UNITE from the super peer disarmed (R is random); anything else as it is."""
    try:
        header = parse_long_header(data)
    except DrasylError:
        return ("raw", data)
    if header.sender == SP.public_key and header.message_type in (ACK, UNITE):
        return ("sp", header, open_body(data, header, rx))
    return ("raw", data)


def state(server: SuperPeerServer) -> dict:
    """What the core holds, minus what depends on the moment (hello_time) or the server (port)."""
    core = server.core
    [local] = server._udp
    peers = {
        pk: (p.rx, p.tx, p.hello_stamp, p.proto, p.local == local, p.src, p.endpoints, p.hello_endpoints,
             p.hello_rx, p.ack_tx, p.app_rx, p.app_tx, p.unite_tx, p.relayed_bytes)
        for pk, p in core.peers.items()
    }
    held = {pk: [(data, reason) for _, data, reason in queue] for pk, queue in core._held.items()}
    drops = server.io_drops()
    drops.update(core.drops)
    return {"peers": peers, "held": held, "unites": set(core._unites), "drops": +drops,
            "stun": core.stun_answered}


# --- the actions a sequence is made of ----------------------------------------------------------

node = st.integers(0, len(NODES) - 1)
source = st.integers(0, 1)
app = st.tuples(st.just("app"), node, node, source, st.sampled_from([0, 0, 0, 7, 8]), st.sampled_from([10, 1300]))
actions = st.one_of(
    st.tuples(st.just("hello"), node, source, st.integers(0, len(ENDPOINTS) - 1),
              st.sampled_from(["fresh", "fresh", "fresh", "replayed", "too_old"])),
    app, app, app,  # relays need two registrations and a UNITE sent: more APPs reach the C path
    st.tuples(st.just("bad_tag"), node, source),
    st.tuples(st.just("unarmed"), node, source),
    st.tuples(st.just("other_network"), node, source),
    st.tuples(st.just("stun"), node, source),
    st.tuples(st.just("garbage"), node, source, st.binary(min_size=0, max_size=120)),
    st.tuples(st.just("oversize"), node, source),
    st.tuples(st.just("barrier")),
)


def datagram(lab: Lab, action: tuple) -> tuple[socket.socket, bytes] | None:
    kind = action[0]
    if kind == "barrier":
        return None
    i, sock = action[1], lab.sockets[action[1]][action[2] if kind != "app" else action[3]]
    me = NODES[i]
    _, tx = session_keys(me, SP.public_key)
    if kind == "hello":
        _, _, _, endpoints, age = action
        if age == "fresh":
            lab.stamps[i] += 1000
            stamp = lab.stamps[i]
        else:
            stamp = lab.stamps[i] - (1000 if age == "replayed" else 400 * 10**6)
        body = HelloSuperPeer(stamp, 1, ENDPOINTS[endpoints]).encode()
        return sock, bytes(encode_message(HELLO, 1, SP.public_key, me.public_key, me.proof_of_work, body, tx))
    if kind == "app":
        _, _, j, _, hop, size = action
        to_peer = session_keys(me, NODES[j].public_key)[1] if i != j else bytes(32)  # to itself: dropped
        data = bytearray(encode_message(APP, 1, NODES[j].public_key, me.public_key, me.proof_of_work,
                                        bytes(size), to_peer))
        data[4] = hop
        return sock, bytes(data)
    body = HelloSuperPeer(lab.stamps[i], 1).encode()
    if kind == "bad_tag":
        data = bytearray(encode_message(HELLO, 1, SP.public_key, me.public_key, me.proof_of_work, body, tx))
        data[79 + 32] ^= 1
        return sock, bytes(data)
    if kind == "unarmed":
        return sock, bytes(encode_message(HELLO, 1, SP.public_key, me.public_key, me.proof_of_work, body, None))
    if kind == "other_network":
        return sock, bytes(encode_message(HELLO, 2, SP.public_key, me.public_key, me.proof_of_work, body, tx))
    if kind == "stun":
        return sock, binding_request()[0]
    if kind == "garbage":
        return sock, action[3]
    return sock, bytes(BIG)


async def compare(sequence: list[tuple], ipv6: bool = False, **settings_) -> dict[str, int]:
    """Run ``sequence`` against both servers; assert equal outputs and state; return the C
    loop's counters (what it handled itself, what it handed to the core)."""
    listen = {"udp4_listen": None, "udp6_listen": ListenAddress("::1", 0)} if ipv6 else {}
    cfg = config(tcp4_listen=None, **listen, **settings_)
    saved = os.environ.get("DRASYL_NATIVE")
    try:
        os.environ["DRASYL_NATIVE"] = "on"
        in_c = SuperPeerServer(SP, cfg)
        os.environ["DRASYL_NATIVE"] = "off"
        in_python = SuperPeerServer(SP, cfg)
    finally:
        os.environ.pop("DRASYL_NATIVE") if saved is None else os.environ.__setitem__("DRASYL_NATIVE", saved)
    await in_c.start()
    await in_python.start()
    lab = Lab(in_c, in_python, ipv6)
    try:
        assert in_c.fast and not in_python.fast
        for action in sequence:
            sent = datagram(lab, action)
            if sent is None:
                await lab.barrier()
            else:
                lab.send(*sent)
        await lab.barrier()
        for node_sockets in lab.received():
            for from_c, from_python in node_sockets:
                assert from_c == from_python
        assert state(in_c) == state(in_python)
        [fast] = in_c.fast.values()
        return fast.counters()
    finally:
        lab.close()
        await in_c.close()
        await in_python.close()


#: every node registered from its first socket (sequences start here, so more of them reach C)
REGISTER = [("hello", i, 0, 1, "fresh") for i in range(len(NODES))] + [("barrier",)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(actions, min_size=1, max_size=60), unites=st.sampled_from([5000, 5000, 0, -1]))
def test_c_and_python_leave_the_same_bytes_and_state(sequence, unites):
    asyncio.run(compare(REGISTER + sequence, send_unites_ms=unites))


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_registered_traffic_runs_in_c_with_the_same_result(ipv6):
    """The common case, many times: HELLOs of current registrations and APPs between them are
    answered in C (the counters prove the path ran), with outputs and state equal to Python's."""
    traffic = [("app", 0, 1, 0, 0, 1300), ("app", 1, 0, 0, 0, 10), ("hello", 2, 0, 1, "fresh"),
               ("app", 2, 3, 0, 0, 10)] * 50
    counters = asyncio.run(compare(REGISTER + traffic, ipv6))
    # the first APP of each pair needs a UNITE (Python), each node's first HELLO registers it
    assert counters["relays"] >= 150 - 3, counters
    assert counters["hellos"] >= 50 - 1, counters


def test_expired_registrations_and_moves_go_to_the_core():
    """An expired registration's HELLO re-registers it in Python; so does one from a new source."""
    counters = asyncio.run(compare([("hello", 0, 0, 0, "fresh"), ("barrier",), ("hello", 0, 0, 0, "fresh"),
                                    ("hello", 0, 1, 0, "fresh"), ("hello", 0, 1, 0, "fresh")],
                                   hello_timeout_ms=60_000))
    assert counters["hellos"] == 2 and counters["handed"] >= 2, counters  # the first, and the move
    # hello_timeout 0: a registration is current only within the batch that made it
    asyncio.run(compare([("hello", 0, 0, 0, "fresh"), ("barrier",), ("hello", 0, 0, 0, "fresh")],
                        hello_timeout_ms=0))


def test_huge_timeouts_from_the_environment_start():
    """HELLO_TIMEOUT and HELLO_MAX_AGE go up to 2⁶⁴ − 1 ms: C gets them clamped, not an overflow."""
    asyncio.run(compare([("hello", 0, 0, 0, "fresh"), ("barrier",), ("hello", 0, 0, 0, "fresh")],
                        hello_timeout_ms=2**64 - 1, hello_max_age_ms=2**64 - 1))


def test_native_choice_is_checked(monkeypatch):
    monkeypatch.setenv("DRASYL_NATIVE", "fast")
    with pytest.raises(DrasylError, match="DRASYL_NATIVE='fast' is invalid"):
        native.load("drasyl.superpeer._fast")
    monkeypatch.setenv("DRASYL_NATIVE", "on")
    with pytest.raises(DrasylError, match="was not built"):
        native.load("drasyl.superpeer._nothing")
    monkeypatch.setenv("DRASYL_NATIVE", "off")
    assert native.load("drasyl.superpeer._fast") is None


def test_an_error_in_c_is_counted_logged_and_serving_goes_on(caplog, monkeypatch):
    """A peer whose state C cannot read (here a broken hello_time) costs that datagram only."""
    monkeypatch.setenv("DRASYL_NATIVE", "on")  # also when the suite runs with it off

    async def scenario() -> None:
        server = SuperPeerServer(SP, config(tcp4_listen=None))
        await server.start()
        lab = Lab(server, server)
        lab.targets = lab.targets[:1]
        try:
            lab.send(*datagram(lab, ("hello", 0, 0, 0, "fresh")))
            lab.send(*datagram(lab, ("hello", 1, 0, 0, "fresh")))
            await lab.barrier()
            server.core.peers[NODES[0].public_key].hello_time = "broken"
            lab.send(*datagram(lab, ("hello", 0, 0, 0, "fresh")))
            lab.send(*datagram(lab, ("hello", 1, 0, 0, "fresh")))
            await lab.barrier()
            received = lab.received()
            [acks_0], [acks_1] = received[0][0], received[1][0]
        finally:
            lab.close()
            await server.close()
        assert len(acks_0) == 1, "node 0's HELLO that C could not handle was answered"
        assert [kind for kind, *_ in acks_1] == ["sp", "sp"], "node 1's HELLO after the error was not answered"
        assert server.drops["internal_error"] == 1

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "in C" in errors[0].getMessage() and errors[0].exc_info[0] is TypeError


def test_drasyl_sp_reports_a_bad_choice_in_one_line(tmp_path):
    identity = tmp_path / "sp.identity"
    result = subprocess.run([sys.executable, "-m", "drasyl.superpeer"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=python_env(DRASYL_NATIVE="fast", DRASYL_IDENTITY_FILE=str(identity)))
    assert result.returncode == 2, result.stderr
    assert "DRASYL_NATIVE='fast' is invalid: expected auto, on or off" in result.stderr
    assert "Traceback" not in result.stderr
    assert not identity.exists()  # checked before anything is made


def test_the_daemon_tests_pass_in_pure_python_too():
    """Those without a compiler run the Python path: the daemon's own tests, with DRASYL_NATIVE=off."""
    suite = Path(__file__).with_name("test_superpeer_daemon.py")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
                            capture_output=True, text=True, timeout=600, cwd=suite.parent,
                            env={**os.environ, "DRASYL_NATIVE": "off"})
    assert result.returncode == 0, result.stdout[-3000:]
