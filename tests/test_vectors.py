"""Every vector in tests/vectors parses, disarms and re-encodes to the same bytes."""

from __future__ import annotations

import pytest

from drasyl import messages as m
from drasyl.crypto import session_keys
from drasyl.identity import Identity, pow_difficulty, pow_is_valid

BODY = {"HELLO": None, "ACK": m.Ack, "UNITE": m.Unite}


def _keys(me: Identity, peer: Identity) -> tuple[bytes, bytes]:
    return session_keys(me, peer.public_key)


def test_spec_pow_fixtures():
    pk = bytes.fromhex("9331341e09d313baa4027a2fccea4fd471b9637f2305de714009c46b9192e006")
    assert pow_difficulty(pk, -2130520098) == 24
    assert pow_is_valid(pk, -2130520098, 24)
    bad = bytes.fromhex("38fddd8d068165f227199b521bf91c09577231f05cae822d78c04be7595fb81d")
    assert not pow_is_valid(bad, -2110011455, 24)


def test_derived_session_keys(derived, ids):
    for name, want in derived["session_keys"].items():
        me, peer = name.split("_with_")
        rx, tx = _keys(ids[me], ids[peer])
        assert (rx.hex(), tx.hex()) == (want["rx"], want["tx"])
        # the other side's keys are the mirror image
        prx, ptx = _keys(ids[peer], ids[me])
        assert (prx, ptx) == (tx, rx)


def test_derived_identities(derived, ids):
    for name, v in derived["identities"].items():
        assert ids[name].public_key_hex == v["public_key_hex"]
        assert ids[name].x25519_public_key.hex() == v["x25519_public_hex"]
        assert ids[name].pow_difficulty() >= 24


def _reencode(header: m.LongHeader, body: bytes, tx: bytes | None, random: bytes | None) -> bytes:
    out = m.encode_message(
        header.message_type, header.network_id, header.recipient, header.sender,
        header.proof_of_work, body, tx, random,
    )
    return out[:4] + bytes([header.hop_count]) + out[5:]


@pytest.mark.parametrize("index", range(8))
def test_derived_vector_roundtrip(derived, ids, index):
    v = derived["vectors"][index]
    wire = bytes.fromhex(v["hex"])
    sender, recipient = ids[v["from"]], ids[v["to"]]
    rx_recipient, _ = _keys(recipient, sender)
    _, tx_sender = _keys(sender, recipient)
    random = bytes.fromhex(v["random_hex"]) if "random_hex" in v else None
    if v["name"] == "app_armed_short_header":
        short_id = bytes.fromhex(v["short_id_hex"])
        assert wire[:4] == short_id
        assert bytes(m.open_short(wire, rx_recipient)).decode() == v["payload_utf8"]
        assert m.encode_short(short_id, v["payload_utf8"].encode(), tx_sender, random) == wire
        return
    header = m.parse_long_header(wire)
    assert header.sender == sender.public_key and header.recipient == recipient.public_key
    assert header.network_id == 1 and header.armed == (random is not None)
    body = m.open_body(wire, header, rx_recipient)
    if v["name"].startswith("hello_super_peer"):
        hello = m.HelloSuperPeer.parse(body)
        assert hello.time == 1700000000000000 and hello.child_time == 1
        assert m.decode_endpoints(hello.endpoints) == [("192.168.1.10", 40000), ("2001:db8::10", 40000)]
    elif v["name"].startswith("ack"):
        assert m.Ack.parse(body).time == 1700000000000000
    elif v["name"] == "hello_node_peer_unarmed":
        assert m.HelloNodePeer.parse(body) == (1700000000000000, bytes.fromhex("deadbeef"))
    elif v["name"] == "unite_unarmed":
        unite = m.Unite.parse(body)
        assert unite.address == ids[v["address"]].public_key
        assert m.decode_endpoints(unite.endpoints) == [("203.0.113.7", 51000)]
    elif v["name"] == "app_armed_long_header":
        assert bytes(body).decode() == v["payload_utf8"]
        relayed = wire[:4] + b"\x01" + wire[5:]  # the super peer's hop-count increment
        assert bytes(m.open_body(relayed, m.parse_long_header(relayed), rx_recipient)) == b"hello"
    assert _reencode(header, bytes(body), tx_sender if header.armed else None, random) == wire


def _capture_ids(capture) -> dict[str, Identity]:
    return {
        name: Identity.from_hex(v["secret_key_hex"], v["proof_of_work"])
        for name, v in capture["identities"].items()
    }


@pytest.mark.parametrize("index", range(14))
def test_drasyl_rs_capture_parses_disarms_and_reencodes(capture, index):
    ids = _capture_ids(capture)
    p = capture["packets"][index]
    wire = bytes.fromhex(p["wire_hex"])
    sender, recipient = ids[p["from"]], ids[p["to"]]
    rx, _ = _keys(recipient, sender)
    _, tx = _keys(sender, recipient)
    plaintext = bytes.fromhex(p["plaintext_body_hex"])
    if p["type"] == "APP (short header)":
        assert wire[:4].hex() == p["short_id_hex"] == p["short_id_announced_by_node_b_hello"]
        assert bytes(m.open_short(wire, rx)) == plaintext == p["payload_utf8"].encode()
        assert m.encode_short(wire[:4], plaintext, tx, wire[4:36]) == wire
        return
    header = m.parse_long_header(wire)
    assert m.MessageType(header.message_type).name == p["type"]
    assert (header.hop_count, header.armed, header.network_id) == (p["hop_count"], p["armed"], p["network_id"])
    assert (header.sender, header.recipient) == (sender.public_key, recipient.public_key)
    assert header.proof_of_work == sender.proof_of_work
    body = bytes(m.open_body(wire, header, rx))
    assert body == plaintext
    if p["type"] == "HELLO" and p["to"] == "sp":
        hello = m.HelloSuperPeer.parse(body)
        assert (hello.time, hello.child_time) == (p["time_us"], p["child_time"])
        assert [f"{h}:{port}" for h, port in m.decode_endpoints(hello.endpoints)] == p["endpoints"]
    elif p["type"] == "HELLO":
        hello = m.HelloNodePeer.parse(body)
        assert (hello.time, hello.short_id.hex()) == (p["time_us"], p["short_id_hex"])
    elif p["type"] == "ACK":
        assert m.Ack.parse(body).time == p["time_us"]
    elif p["type"] == "UNITE":
        unite = m.Unite.parse(body)
        assert unite.address.hex() == p["address"]
        assert [f"{h}:{port}" for h, port in m.decode_endpoints(unite.endpoints)] == p["endpoints"]
    elif p["type"] == "APP":
        assert body.decode() == p["payload_utf8"]
    random = wire[m.LONG_HEADER_LEN : m.LONG_HEADER_LEN + 32]
    assert _reencode(header, body, tx, random) == wire
