"""The agent's C data path (:mod:`drasyl.agent.fast`) against the Python one.

Same bytes: what C arms, :mod:`drasyl.messages` opens, and the other way round (a flipped bit or
another short id fails both). Same behaviour: two agents in the lab of test_agent_e2e.py, a on
the C path (``DRASYL_NATIVE=on``) and b on the Python path (``off``): pings and a TCP transfer
cross between them, each side's byte counters agree with the other's and with what was sent,
the packets C must leave to Python (a routed subnet, ``drasyl-agent ping``'s replies) are
Python's, and ``status`` says which path carried what. Skipped where the module was not built
(``python setup.py build_ext --inplace``); with ``CI=true`` that fails instead.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator

import pytest
from netns import Lab, require_lab_tools
from prometheus_client.parser import text_string_to_metric_families
from test_agent_e2e import (METRICS, OVERLAY, RECEIVER, ROUTED, SCRAPE, SENDER, SETTLE_S, Cluster, _identities,
                            _received, wait_until)

from drasyl import native
from drasyl.crypto import session_keys
from drasyl.errors import DrasylError
from drasyl.messages import encode_short, open_short

try:
    from drasyl.agent import _fast
except ImportError:
    _fast = None

if _fast is None and os.environ.get("CI") == "true":
    raise RuntimeError("drasyl.agent._fast was not built (python setup.py build_ext --inplace)")
pytestmark = pytest.mark.skipif(_fast is None, reason="drasyl.agent._fast not built (setup.py build_ext)")

PING_SIZE = 100  # ICMP payload: 128-byte IPv4 packets
IP_PACKET = PING_SIZE + 8 + 20


def engine():
    encrypt, decrypt = native.aegis_functions()
    return _fast.Engine(encrypt, decrypt, None, None, print, print, print, 1345, 1, bytes(8))


@pytest.mark.parametrize("size", [0, 1, 20, 84, 1345])
def test_c_arms_and_disarms_as_python(ids, size: int) -> None:
    """Short-header APPs with the session keys of two real identities, both directions."""
    c = engine()
    rx, tx = session_keys(ids["id_2"], ids["id_3"].public_key)
    peer_rx, peer_tx = session_keys(ids["id_3"], ids["id_2"].public_key)
    assert (rx, tx) == (peer_tx, peer_rx)
    payload = os.urandom(size)
    sealed = c.seal(b"\x01\x02\x03\x04", tx, payload)
    assert len(sealed) == 4 + 48 + size and sealed[:4] == b"\x01\x02\x03\x04"
    assert bytes(open_short(sealed, peer_rx)) == payload
    assert c.open(bytes(encode_short(b"\x01\x02\x03\x04", payload, peer_tx)), rx) == payload
    assert c.seal(b"\x01\x02\x03\x04", tx, payload)[4:36] != sealed[4:36], "R must be fresh per packet"
    for spoiled in (b"\x01\x02\x03\x05" + sealed[4:], sealed[:40] + bytes([sealed[40] ^ 1]) + sealed[41:]):
        assert c.open(spoiled, peer_rx) is None
        with pytest.raises(DrasylError):
            open_short(spoiled, peer_rx)


def test_random_pool_is_not_shared_with_a_forked_child() -> None:
    """A child must not send the R its parent sends next (pthread_atfork drops the pool)."""
    c = engine()
    key = bytes(32)
    c.seal(b"abcd", key, b"")  # the pool is filled now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, c.seal(b"abcd", key, b"")[4:36])
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 32)
    os.close(read)
    os.close(write)
    assert child != c.seal(b"abcd", key, b"")[4:36]


@pytest.fixture(scope="module")
def mixed(ids, tmp_path_factory) -> Iterator[Cluster]:
    """test_agent_e2e's lab with a on the C path and b on the Python path."""
    require_lab_tools()
    with Lab() as lab:
        c = Cluster(lab, tmp_path_factory.mktemp("fast"), _identities(ids))
        try:
            c.agents["a"].start(DRASYL_NATIVE="on")
            c.agents["b"].start(DRASYL_NATIVE="off")
            for agent in c.agents.values():
                agent.wait_network("net1", "active")
            yield c
        finally:
            c.close()


def _peer(cluster: Cluster, side: str, other: str) -> dict:
    status = cluster.agents[side].status()
    return next(p for p in status["peers"] if p["public_key"] == cluster.ids[other].public_key_hex)


def _quiet(cluster: Cluster) -> tuple[dict, dict]:
    """Both agents' status once two reads in a row agree on the byte counters (nothing in flight)."""
    def read() -> tuple[dict, dict] | None:
        first = [cluster.agents[s].status() for s in ("a", "b")]
        second = [cluster.agents[s].status() for s in ("a", "b")]
        counters = [[(p["rx_bytes"], p["tx_bytes"]) for p in s["peers"]] for s in first]
        return tuple(second) if counters == [[(p["rx_bytes"], p["tx_bytes"]) for p in s["peers"]]
                                             for s in second] else None
    return wait_until(read, 10, "byte counters settle", cluster.describe)


def _row(status: dict, cluster: Cluster, other: str) -> dict:
    return next(p for p in status["peers"] if p["public_key"] == cluster.ids[other].public_key_hex)


def test_direct_between_c_and_python(mixed: Cluster) -> None:
    a = mixed.agents["a"]

    def direct() -> bool:
        a.ping(OVERLAY["b"], count=1)
        return _peer(mixed, "a", "b")["path"] == "direct" and _peer(mixed, "b", "a")["path"] == "direct"
    wait_until(direct, SETTLE_S, "a and b reach each other directly", mixed.describe)
    status_a, status_b = _quiet(mixed)
    assert status_b["native"] is None, status_b["native"]
    assert status_a["native"]["faults"] == 0, status_a["native"]


def test_pings_are_carried_by_c_and_counted_as_python_counts(mixed: Cluster) -> None:
    """Every echo request leaves a through C and every reply enters through C; the byte
    counters on both sides grow by exactly the packets' sizes."""
    a, count = mixed.agents["a"], 20
    before_a, before_b = _quiet(mixed)
    ping = a.exec("ping", "-n", "-c", str(count), "-i", "0.05", "-s", str(PING_SIZE), "-W", "2", OVERLAY["b"])
    assert _received(ping) == count, f"{ping.stdout}{ping.stderr}\n{mixed.describe()}"
    after_a, after_b = _quiet(mixed)
    sent = count * IP_PACKET
    grew = {name: {k: _row(after, mixed, other)[k] - _row(before, mixed, other)[k] for k in ("tx_bytes", "rx_bytes")}
            for name, before, after, other in (("a", before_a, after_a, "b"), ("b", before_b, after_b, "a"))}
    assert grew == {"a": {"tx_bytes": sent, "rx_bytes": sent}, "b": {"tx_bytes": sent, "rx_bytes": sent}}, grew
    native = {k: after_a["native"][k] - before_a["native"][k] for k in ("tx_packets", "rx_packets")}
    assert native == {"tx_packets": count, "rx_packets": count}, native
    assert after_a["drops"] == before_a["drops"], (before_a["drops"], after_a["drops"])


def test_tcp_transfer_c_to_python_and_back(mixed: Cluster) -> None:
    """20 MB a → b: C arms full-size segments in bursts (GSO), Python disarms them, and the
    ACKs come back through C; every byte arrives unchanged and the counters agree."""
    a, b = mixed.agents["a"], mixed.agents["b"]
    before_a, _ = _quiet(mixed)
    receiver = mixed.lab.start(b.ns, [sys.executable, "-c", RECEIVER, OVERLAY["b"]], "receiver")
    receiver.wait_for_line(r"^listening$", 10)
    sent = a.exec(sys.executable, "-c", SENDER, OVERLAY["b"], str(20 * 1024 * 1024), timeout=60)
    assert sent.returncode == 0, f"{sent.stderr}\n{mixed.describe()}"
    got = receiver.wait_for_line(r"^received (\d+) ([0-9a-f]{64})$", 30).match
    assert int(got.group(1)) == 20 * 1024 * 1024 and got.group(2) == sent.stdout.split()[-1]
    after_a, after_b = _quiet(mixed)
    assert _row(after_a, mixed, "b")["tx_bytes"] == _row(after_b, mixed, "a")["rx_bytes"]
    assert _row(after_a, mixed, "b")["rx_bytes"] == _row(after_b, mixed, "a")["tx_bytes"]
    assert after_a["native"]["tx_packets"] - before_a["native"]["tx_packets"] > 14_000, after_a["native"]
    assert after_a["native"]["faults"] == 0


def test_what_c_leaves_to_python(mixed: Cluster) -> None:
    """Packets to a routed subnet (not a /32 entry) leave through the Python path, and
    ``drasyl-agent ping``'s replies are taken off by Python (C would write them to the TUN,
    and the probes would time out); both counted as before, none sent by C."""
    a = mixed.agents["a"]
    before, _ = _quiet(mixed)
    a.exec("ping", "-n", "-c", "3", "-i", "0.05", "-W", "1", ROUTED.replace("0/24", "7"))
    probe = a.cli("ping", "bob", "-c", "3", "-i", "0.05")
    assert probe.stdout.count("pong from bob") == 3, probe.stdout
    after, _ = _quiet(mixed)
    assert after["native"]["tx_packets"] == before["native"]["tx_packets"], (before["native"], after["native"])
    grew = _row(after, mixed, "b")["tx_bytes"] - _row(before, mixed, "b")["tx_bytes"]
    assert grew == 3 * 84 + 3 * 36, grew  # 3 routed pings (84 bytes), 3 probes (20 + 8 + 8-byte token)


def test_metrics_show_what_c_carried(mixed: Cluster) -> None:
    """a (metrics on) exports the status' ``native`` counters; traffic is quiet, so they are equal."""
    a = mixed.agents["a"]
    status, _ = _quiet(mixed)
    result = a.exec(sys.executable, "-c", SCRAPE, f"http://{METRICS}/metrics")
    assert result.returncode == 0, result.stderr
    samples = {(s.name, s.labels.get("direction")): s.value for f in text_string_to_metric_families(result.stdout)
               for s in f.samples if s.name == "drasyl_agent_native_packets_total"}
    assert samples == {("drasyl_agent_native_packets_total", "tx"): status["native"]["tx_packets"],
                       ("drasyl_agent_native_packets_total", "rx"): status["native"]["rx_packets"]}, samples


def test_sigterm_leaves_nothing_with_c(mixed: Cluster) -> None:
    a = mixed.agents["a"]
    a.proc.popen.send_signal(signal.SIGTERM)
    assert a.proc.popen.wait(timeout=20) == 0
    assert not a.has_device() and a.our_lines() == []
