"""``drasyl-sp`` with ``DRASYL_WORKERS=2`` as real processes on loopback: nodes registered in
different workers reach each other, /metrics sums the workers, no process outlives the super
peer, and the daemon tests of tests/test_superpeer_daemon.py that start a super peer pass
with two workers as well (imported below, run with this module's ``sp_workers``).

Which worker owns a node is read from ``drasyl_sp_worker_peers{worker}``: a node is moved by
registering it again from a fresh source port until the kernel's hash puts it into the other
worker. Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nacl.bindings as sodium
import pytest
from test_superpeer_daemon import (  # noqa: F401  # fixtures and the tests run again with two workers
    WAIT_S,
    hello,
    metric_value,
    opened,
    port_of,
    read_frame,
    scrape,
    sp_identity,
    start_sp,
    tcp_ack,
    tcp_connect,
    test_drasyl_rs_default_listeners_bind_side_by_side,
    test_flood_of_invalid_hellos_does_not_lock_out_valid_nodes,
    test_garbage_is_counted_and_never_stops_the_daemon,
    test_guide_setup_serves_ipv4_nodes_on_the_dual_stack_ipv6_sockets,
    test_idle_tcp_connection_is_closed_after_hello_timeout,
    test_invalid_environment_value_is_exit_2_naming_the_variable,
    test_metrics_use_drasyl_rs_names_and_require_the_token,
    test_missing_identity_is_generated_announced_and_sigterm_exits_0,
    test_nodes_register_over_udp_and_tcp_and_app_is_relayed_between_them,
    test_port_in_use_is_one_line_error_exit_1,
    udp_exchange,
)

from drasyl.crypto import session_keys
from drasyl.identity import Identity, search_pow
from drasyl.messages import ACK, APP, UNITE, Unite, encode_message

ATTEMPTS = 64  # fresh source ports tried to land a node in the other worker (1/2 each)


@pytest.fixture
def sp_workers() -> int:
    return 2


def owned(sp) -> dict[str, float]:
    """Registrations per worker, from /metrics."""
    _, _, text = scrape(port_of(sp.env["DRASYL_PROMETHEUS_LISTEN"]))
    return {w: metric_value(text, f'drasyl_sp_worker_peers{{worker="{w}"}}') or 0 for w in ("0", "1")}


def register_udp(node: Identity, sp_id: Identity, port: int) -> socket.socket:
    """A UDP socket from which ``node`` registered (its HELLO was ACKed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    header, _ = opened(node, sp_id, udp_exchange(sock, ("127.0.0.1", port), hello(node, sp_id, time.time_ns() // 1000)))
    assert header.message_type == ACK
    return sock


def register_in_both_workers(sp, sp_id: Identity, first, node: Identity) -> socket.socket:
    """Register ``node`` over UDP from fresh ports until it and ``first`` (registered already)
    are owned by different workers; its socket."""
    port = port_of(sp.env["DRASYL_UDP4_LISTEN"])
    for _ in range(ATTEMPTS):
        sock = register_udp(node, sp_id, port)
        if owned(sp) == {"0": 1, "1": 1}:
            return sock
        sock.close()
    pytest.fail(f"{ATTEMPTS} source ports all landed in one worker: {owned(sp)}\n{sp.output()}")


def app(sender: Identity, recipient: Identity, payload: bytes) -> bytes:
    _, tx = session_keys(sender, recipient.public_key)
    return encode_message(APP, 1, recipient.public_key, sender.public_key, sender.proof_of_work, payload, tx)


def receive_unite(sock: socket.socket, node: Identity, sp_id: Identity, about: Identity) -> None:
    sock.settimeout(WAIT_S)
    header, body = opened(node, sp_id, sock.recv(2048))
    assert header.message_type == UNITE and Unite.parse(body).address == about.public_key


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def wait_gone(pids: list[int], what: str) -> None:
    """Until none of ``pids`` runs (a zombie nobody reaps counts as gone)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(pid)
            except FileNotFoundError:
                pass
        if not alive:
            return
        time.sleep(0.05)
    pytest.fail(f"{what}: processes {alive} still run after {WAIT_S} s")


@dataclass
class Pair:
    """A running super peer with two workers and two UDP nodes, each owned by another worker."""

    sp: Any
    sp_id: Identity
    port: int
    nodes: list[tuple[Identity, socket.socket]]

    def directions(self):
        """((sender, its socket), (recipient, its socket)): a to b, then b to a."""
        return (self.nodes, self.nodes[::-1])


@pytest.fixture
def pair(start_sp, sp_identity, ids) -> Iterator[Pair]:
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    sp_id, a, b = sp_identity[1], ids["id_2"], ids["id_3"]
    port = port_of(sp.env["DRASYL_UDP4_LISTEN"])
    with register_udp(a, sp_id, port) as sock_a, register_in_both_workers(sp, sp_id, a, b) as sock_b:
        yield Pair(sp, sp_id, port, [(a, sock_a), (b, sock_b)])


def test_udp_nodes_in_different_workers_relay_to_each_other_and_get_unites(pair):
    for (sender, s_sock), (recipient, r_sock) in pair.directions():
        packet = app(sender, recipient, b"across workers")
        s_sock.sendto(packet, ("127.0.0.1", pair.port))
        r_sock.settimeout(WAIT_S)
        relayed = r_sock.recv(2048)
        assert relayed[4] == 1 and relayed[:4] + relayed[5:] == packet[:4] + packet[5:]
        if sender is pair.nodes[0][0]:  # the first relay introduces both
            receive_unite(r_sock, recipient, pair.sp_id, sender)
            receive_unite(s_sock, sender, pair.sp_id, recipient)


def test_tcp_node_gets_relays_from_a_udp_node_in_another_worker(start_sp, sp_identity, ids):
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    sp_id, node_tcp, node_udp = sp_identity[1], ids["id_2"], ids["id_3"]
    with tcp_connect("127.0.0.1", port_of(sp.env["DRASYL_TCP4_LISTEN"])) as conn:
        tcp_ack(conn, node_tcp, sp_id)
        with register_in_both_workers(sp, sp_id, node_tcp, node_udp) as udp:
            packet = app(node_udp, node_tcp, b"to the other worker's TCP connection")
            udp.sendto(packet, ("127.0.0.1", port_of(sp.env["DRASYL_UDP4_LISTEN"])))
            relayed = read_frame(conn)
            assert relayed[4] == 1 and relayed[:4] + relayed[5:] == packet[:4] + packet[5:]
            header, body = opened(node_tcp, sp_id, read_frame(conn))
            assert header.message_type == UNITE and Unite.parse(body).address == node_udp.public_key
            receive_unite(udp, node_udp, sp_id, node_tcp)


def cheap_identity() -> Identity:
    """A random identity with a difficulty-0 proof of work (the super peer must allow 0)."""
    pk, sk = sodium.crypto_sign_seed_keypair(os.urandom(32))
    return Identity(sk, search_pow(pk, 0))


def test_app_held_for_a_node_is_relayed_when_it_registers_in_another_worker(start_sp, sp_identity, ids):
    sp = start_sp(MIN_POW_DIFFICULTY="0")
    sp.wait_for("Super peer listening on:")
    sp_id, a = sp_identity[1], ids["id_2"]
    port = port_of(sp.env["DRASYL_UDP4_LISTEN"])
    with register_udp(a, sp_id, port) as sock_a:
        [a_worker] = [w for w, n in owned(sp).items() if n == 1]
        other = "1" if a_worker == "0" else "0"
        for _ in range(ATTEMPTS):  # a port of the other worker: a throwaway node registers from it
            before = owned(sp)[other]
            sock_b = register_udp(cheap_identity(), sp_id, port)
            if owned(sp)[other] > before:
                break
            sock_b.close()
        else:
            pytest.fail(f"{ATTEMPTS} source ports all landed in worker {a_worker}\n{sp.output()}")
        with sock_b:
            b = cheap_identity()
            packet = app(a, b, b"before b's HELLO")
            sock_a.sendto(packet, ("127.0.0.1", port))  # held by a's worker: b is unknown
            sock_b.sendto(hello(b, sp_id, time.time_ns() // 1000), ("127.0.0.1", port))
            sock_b.settimeout(WAIT_S)
            received = [sock_b.recv(2048) for _ in range(3)]  # ACK, the APP, a UNITE, in any order
            assert any(data[5:] == packet[5:] for data in received), received
            assert {opened(b, sp_id, data)[0].message_type for data in received if data[5:] != packet[5:]} \
                == {ACK, UNITE}


def test_metrics_sum_the_workers(pair):
    sp, port = pair.sp, pair.port
    # a's APPs are counted by a's worker, b's by b's: a's row needs both workers' counts
    for (sender, s_sock), (recipient, r_sock) in pair.directions():
        packet = app(sender, recipient, b"x" * 100)
        r_sock.settimeout(WAIT_S)
        for _ in range(3):
            s_sock.sendto(packet, ("127.0.0.1", port))
            while r_sock.recv(2048)[5:] != packet[5:]:  # UNITEs in between
                pass
    garbage = 8
    for _ in range(garbage):  # from fresh ports: some land in each worker
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            junk.sendto(b"\x00" * 10, ("127.0.0.1", port))
    deadline = time.monotonic() + WAIT_S
    while True:
        _, _, text = scrape(port_of(sp.env["DRASYL_PROMETHEUS_LISTEN"]))
        if metric_value(text, 'drasyl_sp_dropped_packets{reason="malformed"}') == garbage:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"malformed drops are not the {garbage} sent:\n{text}")
        time.sleep(0.05)
    pa, pb = (node.public_key_hex for node, _ in pair.nodes)
    assert metric_value(text, "drasyl_sp_peers") == 2
    assert owned(sp) == {"0": 1, "1": 1}
    for src, dst in ((pa, pb), (pb, pa)):
        assert metric_value(text, f'drasyl_sp_messages{{direction="rx",peer="{src}",type="app"}}') == 3
        assert metric_value(text, f'drasyl_sp_messages{{direction="tx",peer="{src}",type="app"}}') == 3
        assert metric_value(text, f'drasyl_sp_relayed_bytes{{dst="{dst}",src="{src}"}}') == 3 * len(packet)
    assert metric_value(text, f'drasyl_sp_messages{{direction="rx",peer="{pa}",type="hello"}}') >= 1


def test_sigterm_stops_every_worker_and_sigkill_leaves_no_orphan(start_sp):
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    workers = children(sp.proc.pid)
    assert len(workers) == 2
    assert sp.stop(signal.SIGTERM) == 0, sp.output()
    assert "Shutdown initiated via SIGTERM." in sp.lines["stdout"]
    wait_gone(workers, "after SIGTERM")

    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    workers = children(sp.proc.pid)
    sp.proc.kill()
    sp.wait_exit()
    wait_gone(workers, "after SIGKILL to the parent")


def test_a_worker_that_dies_stops_the_super_peer_with_exit_1(start_sp):
    sp = start_sp()
    sp.wait_for("Super peer listening on:")
    workers = children(sp.proc.pid)
    os.kill(workers[1], signal.SIGKILL)
    assert sp.wait_exit() == 1
    assert f"drasyl-sp: worker 1 (pid {workers[1]}) was killed by SIGKILL; stopping the super peer" \
        in sp.lines["stderr"], sp.output()
    wait_gone(workers, "after a worker died")


@pytest.mark.parametrize("value", ["0", "two", "65", ""])
def test_bad_workers_value_is_one_line_exit_2(start_sp, value):
    sp = start_sp(WORKERS=value)
    assert sp.wait_exit() == 2
    assert len(sp.lines["stderr"]) == 1, sp.output()
    assert sp.lines["stderr"][0].startswith(f"drasyl-sp: error: DRASYL_WORKERS={value!r} is invalid: ")
