"""The ``drasyl-sp`` daemon as a real process on loopback: start-up output, binding,
registration over UDP and TCP, relaying, /metrics, configuration errors and garbage input.

Every wait polls for an output line, a reply or a metric with a deadline; every process
started here is killed in teardown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pytest

from drasyl.crypto import session_keys
from drasyl.identity import Identity
from drasyl.messages import (
    ACK,
    APP,
    HELLO,
    UNITE,
    Ack,
    HelloSuperPeer,
    LongHeader,
    Unite,
    encode_endpoints,
    encode_long_header,
    encode_message,
    open_body,
    parse_long_header,
)
from drasyl.net.tcp import frame
from drasyl.superpeer.cli import listening_urls, main, peer_table
from drasyl.superpeer.config import VARIABLES, DaemonConfig, ListenAddress
from drasyl.superpeer.core import Peer, SuperPeerConfig, SuperPeerCore
from drasyl.superpeer.metrics import SuperPeerMetrics
from drasyl.superpeer.server import REGISTER_TIMEOUT_S, Listener, SuperPeerServer
from drasyl.transmit import TCP, UDP

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 10.0


# --- helpers ---------------------------------------------------------------------------------


class SuperPeerProcess:
    """A running ``python -m drasyl.superpeer`` whose stdout and stderr lines are collected."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drasyl.superpeer"], env=env, cwd=cwd, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, name), daemon=True)
            for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            with self._changed:
                self.lines[name].append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        return "--- stdout:\n" + "\n".join(self.lines["stdout"]) + "\n--- stderr:\n" + "\n".join(self.lines["stderr"])

    def wait_for(self, match: str | Callable[[str], bool], stream: str = "stdout", timeout: float = WAIT_S) -> str:
        """The first line containing ``match`` (or satisfying it); fails after ``timeout``."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines[stream] if test(line)), None)
                if found is not None:
                    return found
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    pytest.fail(f"drasyl-sp exited ({self.proc.returncode}) before printing {match!r}\n{self.output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"drasyl-sp did not print {match!r} to {stream} within {timeout} s\n{self.output()}")
                self._changed.wait(min(left, 0.1))

    def wait_exit(self, timeout: float = WAIT_S) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"drasyl-sp did not exit within {timeout} s\n{self.output()}")
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.wait_exit()


def _can_bind(family: int, kind: int, port: int) -> bool:
    with socket.socket(family, kind) as sock:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port that is free for UDP and TCP, IPv4 and IPv6."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if all(_can_bind(f, k, port) for f in (socket.AF_INET6, socket.AF_INET)
               for k in (socket.SOCK_DGRAM, socket.SOCK_STREAM)):
            return port
    pytest.fail("no free port found")


@pytest.fixture
def sp_identity(tmp_path: Path, ids) -> tuple[Path, Identity]:
    path = tmp_path / "sp.identity"
    ids["id_1"].save(path)
    return path, ids["id_1"]


@pytest.fixture
def sp_workers(request) -> int:
    """DRASYL_WORKERS of the super peers start_sp runs: ``--sp-workers`` (default 1);
    tests/test_superpeer_workers.py runs some of these tests again with 2."""
    return request.config.getoption("sp_workers")


@pytest.fixture
def start_sp(tmp_path: Path, sp_identity, sp_workers) -> Iterator[Callable[..., SuperPeerProcess]]:
    """start_sp(**env) runs drasyl-sp on loopback ports; env values override the defaults.

    Defaults: the vector identity id_1, UDP4/TCP4 on 127.0.0.1 free ports, no IPv6, Prometheus
    on a free loopback port, no peer table, INFO logs, ``sp_workers`` workers.
    """
    started: list[SuperPeerProcess] = []

    def start(**overrides: str) -> SuperPeerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRASYL_") and k != "RUST_LOG"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update({
            "DRASYL_IDENTITY_FILE": str(sp_identity[0]),
            "DRASYL_UDP4_LISTEN": f"127.0.0.1:{free_port()}",
            "DRASYL_UDP6_LISTEN": "",
            "DRASYL_TCP4_LISTEN": f"127.0.0.1:{free_port()}",
            "DRASYL_TCP6_LISTEN": "",
            "DRASYL_PROMETHEUS_LISTEN": f"127.0.0.1:{free_port()}",
            "DRASYL_PEERS_PRINT_INTERVAL": "0",
            "DRASYL_WORKERS": str(sp_workers),
            "RUST_LOG": "info",
        })
        env.update({k if k == "RUST_LOG" else f"DRASYL_{k}": v for k, v in overrides.items()})
        process = SuperPeerProcess(env, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
        process.proc.wait(WAIT_S)
        for stream in (process.proc.stdout, process.proc.stderr):
            stream.close()


def port_of(value: str) -> int:
    return int(value.rsplit(":", 1)[1])


def hello(node: Identity, sp: Identity, time_us: int, endpoints: bytes = b"") -> bytes:
    _, tx = session_keys(node, sp.public_key)
    body = HelloSuperPeer(time_us, 1, endpoints).encode()
    return encode_message(HELLO, 1, sp.public_key, node.public_key, node.proof_of_work, body, tx)


def opened(node: Identity, sp: Identity, data: bytes) -> tuple[LongHeader, bytes]:
    """Header and disarmed body of a message the super peer sent to ``node``."""
    header = parse_long_header(data)
    rx, _ = session_keys(node, sp.public_key)
    return header, open_body(data, header, rx)


def udp_exchange(sock: socket.socket, address: tuple, datagram: bytes, timeout: float = WAIT_S) -> bytes:
    """Send ``datagram`` (again every 0.5 s) until a reply arrives; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(datagram, address)
        sock.settimeout(0.5)
        try:
            return sock.recv(2048)
        except TimeoutError:
            continue
    pytest.fail(f"no UDP reply from {address} within {timeout} s")


def udp_ack(node: Identity, sp: Identity, host: str, port: int) -> int:
    """Register ``node`` over UDP; the time the ACK echoes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sent = time.time_ns() // 1000
        header, body = opened(node, sp, udp_exchange(sock, (host, port), hello(node, sp, sent)))
        assert header.message_type == ACK and Ack.parse(body).time == sent
        return sent


def read_frame(conn: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                pytest.fail("TCP connection closed by the super peer")
            data += chunk
        return data

    return exactly(int.from_bytes(exactly(2), "big"))


def tcp_connect(host: str, port: int) -> socket.socket:
    conn = socket.create_connection((host, port), timeout=WAIT_S)
    conn.settimeout(WAIT_S)
    return conn


def tcp_ack(conn: socket.socket, node: Identity, sp: Identity) -> None:
    sent = time.time_ns() // 1000
    conn.sendall(frame(hello(node, sp, sent)))
    header, body = opened(node, sp, read_frame(conn))
    assert header.message_type == ACK and Ack.parse(body).time == sent


def scrape(port: int, path: str = "/metrics", token: str | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def metric_value(text: str, sample: str) -> float | None:
    """The value of the exposition line that starts with ``sample`` followed by a space."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


# --- start-up and shutdown -------------------------------------------------------------------


def test_missing_identity_is_generated_announced_and_sigterm_exits_0(start_sp, tmp_path):
    identity_file = tmp_path / "new.identity"
    sp = start_sp(IDENTITY_FILE=str(identity_file), MIN_POW_DIFFICULTY="8")
    sp.wait_for(f"Identity file '{identity_file}' not found. Generate new one...")
    sp.wait_for("Super peer listening on:")
    url = sp.wait_for("  udp://")
    identity = Identity.load(identity_file)
    udp_port, tcp_port = port_of(sp.env["DRASYL_UDP4_LISTEN"]), port_of(sp.env["DRASYL_TCP4_LISTEN"])
    assert url == (f"  udp://127.0.0.1:{udp_port}?publicKey={identity.public_key_hex}"
                   f"&networkId=1&tcpPort={tcp_port}")
    sp.wait_for(f"Bound UDP4 server to 127.0.0.1:{udp_port}", "stderr")
    assert sp.stop(signal.SIGTERM) == 0, sp.output()
    assert "Shutdown initiated via SIGTERM." in sp.lines["stdout"]


def test_drasyl_rs_default_listeners_bind_side_by_side(start_sp, sp_identity, ids):
    """0.0.0.0 and [::] on the same ports: drasyl-rs fails here, we make the v6 socket V6ONLY."""
    udp, tcp = free_port(), free_port()
    sp = start_sp(UDP4_LISTEN=f"0.0.0.0:{udp}", UDP6_LISTEN=f"[::]:{udp}",
                  TCP4_LISTEN=f"0.0.0.0:{tcp}", TCP6_LISTEN=f"[::]:{tcp}")
    for name, address in (("UDP4", f"0.0.0.0:{udp}"), ("UDP6", f"[::]:{udp}"),
                          ("TCP4", f"0.0.0.0:{tcp}"), ("TCP6", f"[::]:{tcp}")):
        sp.wait_for(f"Bound {name} server to {address}", "stderr")
    sp.wait_for("  udp://")
    assert all(line.endswith(f"&tcpPort={tcp}") for line in sp.lines["stdout"] if line.startswith("  udp://"))
    sp_id = sp_identity[1]
    udp_ack(ids["id_2"], sp_id, "127.0.0.1", udp)
    udp_ack(ids["id_3"], sp_id, "::1", udp)
    for host in ("127.0.0.1", "::1"):
        with tcp_connect(host, tcp) as conn:
            tcp_ack(conn, ids["id_2"], sp_id)


def test_guide_setup_serves_ipv4_nodes_on_the_dual_stack_ipv6_sockets(start_sp, sp_identity, ids):
    """UDP4/TCP4 empty, [::] for both (Docker image and self-hosting guide)."""
    udp, tcp = free_port(), free_port()
    sp = start_sp(UDP4_LISTEN="", TCP4_LISTEN="", UDP6_LISTEN=f"[::]:{udp}", TCP6_LISTEN=f"[::]:{tcp}")
    sp.wait_for(f"Bound TCP6 server to [::]:{tcp}", "stderr")
    sp.wait_for("  udp://")
    urls = [line for line in sp.lines["stdout"] if line.startswith("  udp://")]
    assert urls and all(f"&tcpPort={tcp}" in url for url in urls), sp.output()
    sp_id = sp_identity[1]
    udp_ack(ids["id_2"], sp_id, "127.0.0.1", udp)
    udp_ack(ids["id_3"], sp_id, "::1", udp)
    with tcp_connect("127.0.0.1", tcp) as conn:
        tcp_ack(conn, ids["id_2"], sp_id)


# --- registration, relaying, peer table ------------------------------------------------------


def test_nodes_register_over_udp_and_tcp_and_app_is_relayed_between_them(start_sp, sp_identity, ids):
    sp = start_sp(PEERS_PRINT_INTERVAL="100")
    sp.wait_for("Super peer listening on:")
    sp_id, node_udp, node_tcp = sp_identity[1], ids["id_2"], ids["id_3"]
    udp_port, tcp_port = port_of(sp.env["DRASYL_UDP4_LISTEN"]), port_of(sp.env["DRASYL_TCP4_LISTEN"])
    endpoints = encode_endpoints([("192.0.2.44", 40000)])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, tcp_connect("127.0.0.1", tcp_port) as conn:
        sent = time.time_ns() // 1000
        header, body = opened(node_udp, sp_id, udp_exchange(udp, ("127.0.0.1", udp_port),
                                                            hello(node_udp, sp_id, sent, endpoints)))
        assert header.message_type == ACK and Ack.parse(body).time == sent
        tcp_ack(conn, node_tcp, sp_id)

        udp_row = sp.wait_for(lambda line: line.startswith(node_udp.public_key_hex))
        row = re.fullmatch(
            rf"{node_udp.public_key_hex} ok  (\d+) +udp://127\.0\.0\.1:{udp.getsockname()[1]} udp://192\.0\.2\.44:40000",
            udp_row,
        )
        assert row and int(row[1]) < WAIT_S * 1000, udp_row  # ms since its HELLO, on one clock
        tcp_row = sp.wait_for(lambda line: line.startswith(node_tcp.public_key_hex))
        assert f" tcp://127.0.0.1:{conn.getsockname()[1]}" in tcp_row
        sp.wait_for("Total Peers: 2")

        # APP from the UDP node to the TCP node: relayed on the TCP connection, hop count + 1,
        # then both are introduced (UNITE) over their own paths.
        _, tx = session_keys(node_udp, node_tcp.public_key)
        app = encode_message(APP, 1, node_tcp.public_key, node_udp.public_key, node_udp.proof_of_work,
                             b"hello over the relay", tx)
        udp.sendto(app, ("127.0.0.1", udp_port))
        relayed = read_frame(conn)
        assert relayed[4] == 1 and relayed[:4] + relayed[5:] == app[:4] + app[5:]
        header, body = opened(node_tcp, sp_id, read_frame(conn))
        assert header.message_type == UNITE and Unite.parse(body).address == node_udp.public_key
        udp.settimeout(WAIT_S)
        header, body = opened(node_udp, sp_id, udp.recv(2048))
        assert header.message_type == UNITE and Unite.parse(body).address == node_tcp.public_key


# --- Prometheus ------------------------------------------------------------------------------


def test_metrics_use_drasyl_rs_names_and_require_the_token(start_sp, sp_identity, ids):
    token = "s3cret"
    sp = start_sp(PROMETHEUS_TOKEN=token)
    sp.wait_for("Super peer listening on:")
    port = port_of(sp.env["DRASYL_PROMETHEUS_LISTEN"])
    node = ids["id_2"]
    udp_ack(node, sp_identity[1], "127.0.0.1", port_of(sp.env["DRASYL_UDP4_LISTEN"]))

    assert scrape(port)[::2] == (401, "Unauthorized")
    assert scrape(port, token="wrong")[::2] == (401, "Unauthorized")
    assert scrape(port, "/other", token)[::2] == (404, "Not Found")
    status, content_type, text = scrape(port, token=token)
    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    for family, kind in (("drasyl_sp_peers", "gauge"), ("drasyl_sp_peer_paths", "gauge"),
                         ("drasyl_sp_peer_endpoints", "histogram"), ("drasyl_sp_messages", "counter"),
                         ("drasyl_sp_relayed_bytes", "counter"), ("drasyl_sp_dropped_packets", "counter")):
        assert f"# TYPE {family} {kind}\n" in text
    assert "_total" not in text
    pk = node.public_key_hex
    assert metric_value(text, "drasyl_sp_peers") == 1
    assert metric_value(text, f'drasyl_sp_messages{{direction="rx",peer="{pk}",type="hello"}}') == 1
    assert metric_value(text, f'drasyl_sp_messages{{direction="tx",peer="{pk}",type="ack"}}') == 1
    assert metric_value(text, f'drasyl_sp_peer_paths{{ip_version="ipv4",peer="{pk}",transport="udp"}}') == 1
    assert metric_value(text, f'drasyl_sp_peer_paths{{ip_version="ipv6",peer="{pk}",transport="tcp"}}') == 0

    assert sp.stop(signal.SIGINT) == 0, sp.output()
    assert "Shutdown initiated via Ctrl-C." in sp.lines["stdout"]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("MAX_PEERS", "1000"), ("NETWORK_ID", "one"), ("UDP4_LISTEN", "[::]:22527"), ("ARM_MESSAGES", "yes"),
])
def test_invalid_environment_value_is_exit_2_naming_the_variable(start_sp, name, value):
    sp = start_sp(**{name: value})
    assert sp.wait_exit() == 2
    assert len(sp.lines["stderr"]) == 1, sp.output()  # one line, no traceback
    assert sp.lines["stderr"][0].startswith(f"drasyl-sp: error: DRASYL_{name}={value!r} is invalid: ")


def test_identity_file_readable_by_others_is_warned_about_at_start(start_sp, sp_identity):
    path = sp_identity[0]
    path.chmod(0o644)
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    [warning] = [line for line in sp.lines["stderr"] if "warning" in line]
    assert warning == (f"drasyl-sp: warning: identity file '{path}' is accessible by group or others "
                       f"(mode 0644); it holds the secret key: chmod 600 '{path}'")
    assert sp.stop() == 0
    path.chmod(0o600)
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    sp.wait_for("Bound UDP4 server", "stderr")
    assert sp.stop() == 0
    assert not any("warning" in line for line in sp.lines["stderr"]), sp.output()


def test_config_repr_never_shows_the_prometheus_token():
    config = DaemonConfig.from_env({"DRASYL_PROMETHEUS_TOKEN": "s3cret-t0ken"})
    assert config.prometheus_token == "s3cret-t0ken"
    assert "s3cret-t0ken" not in repr(config) and "s3cret-t0ken" not in str(config)
    assert "prometheus_listen=" in repr(config)


def test_broken_identity_file_is_exit_1_and_left_untouched(start_sp, tmp_path):
    broken = tmp_path / "broken.identity"
    content = b"[Identity]\nSecretKey = not-hex\nProofOfWork = 12\n"
    broken.write_bytes(content)
    sp = start_sp(IDENTITY_FILE=str(broken))
    assert sp.wait_exit() == 1
    stderr = "\n".join(sp.lines["stderr"])
    assert str(broken) in stderr and "line 2" in stderr and "Traceback" not in stderr
    assert broken.read_bytes() == content


@pytest.mark.parametrize("listener", ["TCP4", "PROMETHEUS"])
def test_port_in_use_is_one_line_error_exit_1(start_sp, listener):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        address = f"127.0.0.1:{blocker.getsockname()[1]}"
        sp = start_sp(**{f"{listener}_LISTEN": address})
        assert sp.wait_exit() == 1
    name = "Prometheus" if listener == "PROMETHEUS" else listener
    assert sp.lines["stderr"] == [f"drasyl-sp: cannot bind {name} listener to {address}: Address already in use"]
    assert not any(line.startswith("  udp://") for line in sp.lines["stdout"])


# --- hostile input ---------------------------------------------------------------------------


def test_garbage_is_counted_and_never_stops_the_daemon(start_sp, sp_identity, ids):
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    sp_id = sp_identity[1]
    udp_port, tcp_port = port_of(sp.env["DRASYL_UDP4_LISTEN"]), port_of(sp.env["DRASYL_TCP4_LISTEN"])
    rng = random.Random(4711)
    valid = hello(ids["id_2"], sp_id, time.time_ns() // 1000)
    sent = 0
    partial = tcp_connect("127.0.0.1", tcp_port)  # a frame that never completes: loses its slot
    partial.sendall(b"\xff\xff" + b"x" * 100)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for burst in range(15):  # bursts small enough for the receive buffer; a HELLO after each
            for i in range(200):
                kind = i % 4
                if kind == 0:  # random bytes, including empty datagrams and runts
                    datagram = rng.randbytes(rng.randrange(0, 300))
                elif kind == 1:  # valid header, wrong or corrupted body
                    datagram = bytearray(valid)
                    datagram[rng.randrange(5, len(datagram))] ^= 1 + rng.randrange(255)
                elif kind == 2:  # valid header, cut anywhere
                    datagram = valid[: rng.randrange(0, len(valid))]
                else:  # junk after a valid magic number
                    datagram = valid[:4] + rng.randbytes(rng.randrange(0, 400))
                udp.sendto(datagram, ("127.0.0.1", udp_port))
                sent += 1
            header, _ = opened(ids["id_2"], sp_id, udp_exchange(udp, ("127.0.0.1", udp_port), valid))
            assert header.message_type == ACK

    bad_frames = [b"", b"\x1e\x3f", os.urandom(200)]
    for bad in bad_frames:  # each closes its connection, as in drasyl-rs
        with tcp_connect("127.0.0.1", tcp_port) as conn:
            conn.sendall(frame(bad))
            assert conn.recv(16) == b""
    with tcp_connect("127.0.0.1", tcp_port) as conn:
        tcp_ack(conn, ids["id_3"], sp_id)
    with partial:
        partial.settimeout(REGISTER_TIMEOUT_S + WAIT_S)
        assert partial.recv(16) == b"", "a connection without a whole frame kept its slot"

    udp_ack(ids["id_2"], sp_id, "127.0.0.1", udp_port)
    assert sp.proc.poll() is None, sp.output()
    _, _, text = scrape(port_of(sp.env["DRASYL_PROMETHEUS_LISTEN"]))
    drops = {match[0]: float(match[1]) for match in
             re.findall(r'^drasyl_sp_dropped_packets\{reason="(\w+)"\} (\S+)$', text, re.MULTILINE)}
    assert "internal_error" not in drops, sp.output()
    counted = sum(v for reason, v in drops.items() if reason not in ("udp_send_failed", "tcp_unregistered"))
    assert counted == sent + len(bad_frames), drops
    assert drops["tcp_unregistered"] == 1, drops
    assert drops["malformed"] >= sent // 4


def _flood(port: int, victim_pk: bytes, sp_pk: bytes, seconds: float, stop) -> None:
    """Child process: invalid datagrams as fast as one core sends them, three kinds mixed."""
    rng = random.Random(99)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        target = ("127.0.0.1", port)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end and not stop.is_set():
            kind = i % 3
            if kind == 0:  # garbage
                data = rng.randbytes(150)
            elif kind == 1:  # HELLO from a fresh random key: invalid PoW, would fill a naive table
                body = rng.randbytes(64)
                data = encode_long_header(HELLO, 1, sp_pk, rng.randbytes(32), rng.randrange(-2**31, 2**31), True) + body
            else:  # HELLO claiming a real node's key (valid PoW) with a forged body
                data = encode_long_header(HELLO, 1, sp_pk, victim_pk, -2131760488, True) + rng.randbytes(64)
            try:
                sock.sendto(data, target)
            except OSError:
                pass
            i += 1


def test_flood_of_invalid_hellos_does_not_lock_out_valid_nodes(start_sp, sp_identity, ids):
    """A one-core flood of garbage, bad-PoW and forged HELLOs, with a 4-entry peer table:
    real nodes keep registering during and after it, and the flood is counted, not stored."""
    import multiprocessing

    sp = start_sp(MAX_PEERS="4")
    sp.wait_for("Super peer listening on:")
    sp_id = sp_identity[1]
    port = port_of(sp.env["DRASYL_UDP4_LISTEN"])
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    flooder = ctx.Process(target=_flood, args=(port, ids["id_3"].public_key, sp_id.public_key, 4.0, stop))
    flooder.start()
    acked = sent = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                sock.sendto(hello(ids["id_2"], sp_id, time.time_ns() // 1000), ("127.0.0.1", port))
                sent += 1
                try:
                    while True:
                        header, _ = opened(ids["id_2"], sp_id, sock.recv(2048))
                        if header.message_type == ACK:
                            acked += 1
                            break
                except TimeoutError:
                    pass
    finally:
        stop.set()
        flooder.join(10)
    assert acked >= sent // 2, f"only {acked} of {sent} HELLOs answered during the flood"
    udp_ack(ids["id_3"], sp_id, "127.0.0.1", port)  # the forged id_3 HELLOs left no trace
    _, _, text = scrape(port_of(sp.env["DRASYL_PROMETHEUS_LISTEN"]))
    assert metric_value(text, "drasyl_sp_peers") == 2.0
    drops = {m[0]: float(m[1]) for m in
             re.findall(r'^drasyl_sp_dropped_packets\{reason="(\w+)"\} (\S+)$', text, re.MULTILINE)}
    assert drops.get("pow_invalid", 0) > 1000 and drops.get("malformed", 0) > 1000, drops
    assert "max_peers" not in drops and "internal_error" not in drops, drops


# --- pure parts: help, URLs, peer table ------------------------------------------------------


def test_help_and_guide_list_every_environment_variable(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    guide = (REPO / "docs" / "self-hosting.md").read_text()
    for name, default, _ in VARIABLES:
        assert f"DRASYL_{name}" in text and default in text
        assert f"| `DRASYL_{name}` | " + (f"`{default}`" if default else "(") in guide
    assert "RUST_LOG" in text and "| `RUST_LOG` |" in guide


def test_unknown_argument_is_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_defaults_are_those_of_drasyl_sp():
    config = DaemonConfig.from_env({})
    assert (str(config.udp4_listen), str(config.udp6_listen), str(config.tcp4_listen), str(config.tcp6_listen),
            str(config.prometheus_listen)) == ("0.0.0.0:22527", "[::]:22527", "0.0.0.0:8443", "[::]:8443",
                                              "127.0.0.1:9898")
    assert config.core_config().max_peers == 8192 and config.identity_file == "drasyl.identity"
    assert DaemonConfig.from_env({"RUST_LOG": "warn,drasyl_sp=debug"}).log_level == 10
    assert DaemonConfig.from_env({"DRASYL_LOG_LEVEL": "warn", "RUST_LOG": "debug"}).log_level == 30


def test_listening_urls_per_listener_kind():
    pk = "ab" * 32
    addresses = ["192.0.2.10", "2001:db8:1::10"]
    v4 = Listener("UDP4", ListenAddress("0.0.0.0", 22527))
    v6_dual = Listener("UDP6", ListenAddress("::", 22527), dual_stack=True)
    tcp6 = Listener("TCP6", ListenAddress("::", 443))
    assert listening_urls([v6_dual, tcp6], pk, 1, addresses) == [
        f"  udp://192.0.2.10:22527?publicKey={pk}&networkId=1&tcpPort=443",
        f"  udp://[2001:db8:1::10]:22527?publicKey={pk}&networkId=1&tcpPort=443",
    ]
    assert listening_urls([v4, Listener("UDP6", ListenAddress("::1", 1))], pk, -5, []) == [
        f"  udp://127.0.0.1:22527?publicKey={pk}&networkId=-5",  # loopback: nothing usable
        f"  udp://[::1]:1?publicKey={pk}&networkId=-5",
    ]


def test_peer_table_caps_rows():
    peers = []
    for i in range(1003):
        peer = Peer(i.to_bytes(32, "big"), None, None)
        peer.hello_time, peer.proto, peer.src = 1_000_000, TCP if i % 2 else UDP, ("10.0.0.1", 1000 + i)
        peers.append(peer)
    lines = peer_table(peers, now=1_250_000).splitlines()
    assert lines[0] == f"{'Node':<64} PoW HelloRx HelloSrc"
    assert lines[1] == f"{'00' * 32} ok  250     udp://10.0.0.1:1000"
    assert lines[2].endswith(" tcp://10.0.0.1:1001")
    assert lines[-2:] == ["… 3 more", "Total Peers: 1003"]
    assert len(lines) == 1 + 1000 + 2


def test_endpoint_histogram_is_observed_per_tick(ids):
    sp, node = ids["id_1"], ids["id_2"]
    now = time.time_ns() // 1000
    core = SuperPeerCore(sp, SuperPeerConfig(), now)
    endpoints = encode_endpoints([("192.0.2.1", 1), ("192.0.2.1", 1), ("192.0.2.2", 2)])
    assert core.receive(hello(node, sp, now, endpoints), UDP, ("0.0.0.0", 1), ("127.0.0.1", 5000), now)
    metrics = SuperPeerMetrics(core, Counter)
    metrics.observe_tick()
    metrics.observe_tick()
    text = metrics.exposition().decode()
    pk = node.public_key_hex
    assert metric_value(text, f'drasyl_sp_peer_endpoints_bucket{{le="1",peer="{pk}"}}') == 0
    assert metric_value(text, f'drasyl_sp_peer_endpoints_bucket{{le="2",peer="{pk}"}}') == 2
    assert metric_value(text, f'drasyl_sp_peer_endpoints_bucket{{le="+Inf",peer="{pk}"}}') == 2
    assert metric_value(text, f'drasyl_sp_peer_endpoints_sum{{peer="{pk}"}}') == 4


def test_unexpected_exception_is_counted_logged_once_and_serving_goes_on(ids, caplog):
    sp, node = ids["id_1"], ids["id_2"]
    config = dataclasses.replace(
        DaemonConfig.from_env({}), udp4_listen=ListenAddress("127.0.0.1", 0), udp6_listen=None,
        tcp4_listen=None, tcp6_listen=None, prometheus_listen=None,
    )

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = SuperPeerServer(sp, config)
        await server.start()
        receive = server.core.receive

        def buggy_receive(data: bytes, *args) -> bool:
            if data == b"boom":
                raise RuntimeError("a bug in the core")
            return receive(data, *args)

        server.core.receive = buggy_receive
        address = ("127.0.0.1", server.listeners[0].address.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            for _ in range(3):
                await loop.sock_sendto(client, b"boom", address)
            sent = time.time_ns() // 1000
            await loop.sock_sendto(client, hello(node, sp, sent), address)
            reply = await asyncio.wait_for(loop.sock_recv(client, 2048), WAIT_S)
        await server.close()
        assert Ack.parse(opened(node, sp, reply)[1]).time == sent
        assert server.drops["internal_error"] == 3

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "processing a UDP datagram" in errors[0].getMessage()


def test_idle_tcp_connection_is_closed_after_hello_timeout(start_sp, sp_identity, ids):
    sp = start_sp(HELLO_TIMEOUT="100")
    sp.wait_for("Super peer listening on:")
    with tcp_connect("127.0.0.1", port_of(sp.env["DRASYL_TCP4_LISTEN"])) as conn:
        tcp_ack(conn, ids["id_2"], sp_identity[1])  # registered: only the idle timeout applies
        conn.settimeout(6 + WAIT_S)  # the idle check runs with housekeeping, every 5 s
        assert conn.recv(16) == b""
