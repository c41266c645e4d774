"""Behaviour of the sans-I/O super peer core (spec §6.1, §6.3, §7) with a fake clock.

Packets are built here with the codec and the nodes' real keys, fed to
:class:`SuperPeerCore.receive`, and what lands in ``outbox`` is parsed and disarmed with the
*receiving node's* keys, so every assertion also checks the bytes a drasyl-rs node would get.
No sockets, no sleeps: ``now`` is a plain integer in µs.
"""

from __future__ import annotations

import os

import pytest
from fakeclock import MS, T0, S

from drasyl.crypto import session_keys
from drasyl.errors import DisarmError
from drasyl.identity import Identity, pow_is_valid
from drasyl.messages import (
    ACK,
    APP,
    HELLO,
    UNITE,
    Ack,
    HelloSuperPeer,
    Unite,
    decode_endpoints,
    encode_endpoints,
    encode_long_header,
    encode_message,
    open_body,
    parse_long_header,
)
from drasyl.superpeer.core import HOLD_MAX_BYTES, HOLD_MAX_PACKETS, HOLD_PER_PEER, SuperPeerConfig, SuperPeerCore
from drasyl.superpeer.shared import SharedCore
from drasyl.transmit import TCP, UDP

SP_UDP = ("192.0.2.100", 22527)
A_SRC = ("198.51.100.1", 40001)  # where the SP sees node A (behind a NAT)
B_SRC = ("203.0.113.2", 40002)
B_SRC_2 = ("203.0.113.2", 40999)
B_TCP = ("203.0.113.2", 51000)
A_LAN = [("10.0.0.1", 1001)]
B_LAN = [("10.1.0.1", 1002), ("2001:db8:1::2", 1002)]


@pytest.fixture(scope="module")
def sp_id() -> Identity:
    return Identity.generate(difficulty=0)  # nobody checks a super peer's PoW


@pytest.fixture
def a(ids):
    return ids["id_1"]


@pytest.fixture
def b(ids):
    return ids["id_2"]


def make_sp(sp_id: Identity, **settings) -> SuperPeerCore:
    sp = SuperPeerCore(sp_id, SuperPeerConfig(**settings), T0)
    sp.handle_timer(T0)  # first housekeeping tick; the next one is due at T0 + 5 s
    return sp


def hello(node: Identity, sp: SuperPeerCore, time: int, endpoints=(), *, child_time: int = 1,
          network_id: int = 1, armed: bool = True, pow_: int | None = None) -> bytes:
    tx = session_keys(node, sp.public_key)[1] if armed else None
    body = HelloSuperPeer(time, child_time, encode_endpoints(list(endpoints))).encode()
    return encode_message(HELLO, network_id, sp.public_key, node.public_key,
                          node.proof_of_work if pow_ is None else pow_, body, tx)


def app(sender: Identity, recipient: Identity, payload: bytes, hop: int = 0, mtype: int = APP) -> bytes:
    tx = session_keys(sender, recipient.public_key)[1]
    data = bytearray(encode_message(mtype, 1, recipient.public_key, sender.public_key,
                                    sender.proof_of_work, payload, tx))
    data[4] = hop
    return bytes(data)


def register(sp: SuperPeerCore, node: Identity, src, now: int = T0, endpoints=(), proto: int = UDP) -> None:
    local = None if proto == TCP else SP_UDP
    assert sp.receive(hello(node, sp, now, endpoints), proto, local, src, now)
    sp.outbox.clear()


def opened(data, node: Identity, sp: SuperPeerCore):
    """(header, plaintext body) of a message from the SP, disarmed with the node's rx key."""
    header = parse_long_header(bytes(data))
    rx = session_keys(node, sp.public_key)[0] if header.armed else None
    return header, bytes(open_body(bytes(data), header, rx))


def unites(sp: SuperPeerCore) -> list:
    return [t for t in sp.outbox if parse_long_header(bytes(t[0])).message_type == UNITE]


# --- HELLO -> ACK ----------------------------------------------------------------------------


@pytest.mark.parametrize("proto, local, remote", [(UDP, SP_UDP, A_SRC), (TCP, None, B_TCP)])
def test_ack_echoes_hello_time_unchanged_and_returns_by_same_proto_and_addresses(sp_id, a, proto, local, remote):
    sp = make_sp(sp_id)
    hello_time = T0 - 1234567  # the node's clock, a little behind ours
    assert sp.receive(hello(a, sp, hello_time), proto, local, remote, T0)
    [(data, out_proto, out_local, out_remote)] = sp.outbox
    assert (out_proto, out_local, out_remote) == (proto, local, remote)
    header, body = opened(data, a, sp)
    assert header.message_type == ACK and header.armed
    assert (header.sender, header.recipient, header.network_id) == (sp.public_key, a.public_key, 1)
    assert header.hop_count == 0
    assert Ack.parse(body).time == hello_time
    assert len(data) == 135  # armed ACK, spec §4.5


def test_unarmed_hello_rejected_when_arming_is_on(sp_id, a):
    sp = make_sp(sp_id)
    assert not sp.receive(hello(a, sp, T0, armed=False), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and a.public_key not in sp.peers
    assert sp.drops["armed_mismatch"] == 1


def test_armed_hello_rejected_when_arming_is_off_and_unarmed_one_gets_unarmed_ack(sp_id, a):
    sp = make_sp(sp_id, arm_messages=False)
    assert not sp.receive(hello(a, sp, T0, armed=True), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.drops["armed_mismatch"] == 1
    assert sp.receive(hello(a, sp, T0, armed=False), UDP, SP_UDP, A_SRC, T0)
    [(data, *_)] = sp.outbox
    header, body = opened(data, a, sp)
    assert not header.armed and len(data) == 87 and Ack.parse(body).time == T0


def test_hello_with_wrong_network_id_rejected(sp_id, a):
    sp = make_sp(sp_id)
    assert not sp.receive(hello(a, sp, T0, network_id=2), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.peers == {} and sp.drops["network_id"] == 1


def test_hello_with_invalid_pow_gets_no_reply_and_no_table_entry(sp_id, a):
    bad_pow = a.proof_of_work + 1
    assert not pow_is_valid(a.public_key, bad_pow, 24)
    sp = make_sp(sp_id)
    assert not sp.receive(hello(a, sp, T0, pow_=bad_pow), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.peers == {} and sp.drops["pow_invalid"] == 1


def test_hello_failing_authentication_creates_no_entry(sp_id, a):
    sp = make_sp(sp_id)
    data = bytearray(hello(a, sp, T0))
    data[-1] ^= 0x01  # flip a ciphertext bit
    assert not sp.receive(bytes(data), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.peers == {}
    assert sp.drops["malformed"] == 1
    # armed with the wrong key (the node's rx instead of tx key)
    rx = session_keys(a, sp.public_key)[0]
    forged = encode_message(HELLO, 1, sp.public_key, a.public_key, a.proof_of_work,
                            HelloSuperPeer(T0).encode(), rx)
    assert not sp.receive(forged, UDP, SP_UDP, A_SRC, T0)
    assert sp.peers == {} and sp.outbox == []


def test_hello_with_child_time_zero_rejected(sp_id, a):
    sp = make_sp(sp_id)
    assert not sp.receive(hello(a, sp, T0, child_time=0), UDP, SP_UDP, A_SRC, T0)
    assert sp.peers == {} and sp.outbox == []


def test_non_hello_addressed_to_super_peer_rejected(sp_id, a):
    sp = make_sp(sp_id)
    tx = session_keys(a, sp.public_key)[1]
    for mtype in (ACK, APP, UNITE):
        data = encode_message(mtype, 1, sp.public_key, a.public_key, a.proof_of_work, Ack(T0).encode(), tx)
        assert not sp.receive(data, UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.peers == {} and sp.drops["unexpected_type"] == 3


def test_max_peers_refuses_new_peers_but_keeps_serving_known_ones(sp_id):
    nodes = [Identity.generate(difficulty=4) for _ in range(3)]
    sp = make_sp(sp_id, max_peers=2, min_pow_difficulty=4)
    register(sp, nodes[0], ("198.51.100.10", 1))
    register(sp, nodes[1], ("198.51.100.11", 1))
    assert not sp.receive(hello(nodes[2], sp, T0), UDP, SP_UDP, ("198.51.100.12", 1), T0)
    assert sp.outbox == [] and nodes[2].public_key not in sp.peers and sp.drops["max_peers"] == 1
    assert sp.receive(hello(nodes[0], sp, T0 + S), UDP, SP_UDP, ("198.51.100.10", 1), T0 + S)
    assert len(sp.outbox) == 1
    # once a peer expires and housekeeping removes it, there is room again
    for t in range(5, 40, 5):
        register(sp, nodes[0], ("198.51.100.10", 1), T0 + t * S)
        sp.handle_timer(T0 + t * S)
    assert nodes[1].public_key not in sp.peers
    register(sp, nodes[2], ("198.51.100.12", 1), T0 + 35 * S)
    assert nodes[2].public_key in sp.peers


def test_hello_older_than_max_age_rejected(sp_id, a):
    sp = make_sp(sp_id)  # hello_max_age 300 s
    assert not sp.receive(hello(a, sp, T0 - 300 * S - 1), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.peers == {} and sp.drops["hello_too_old"] == 1
    assert sp.receive(hello(a, sp, T0 - 300 * S), UDP, SP_UDP, A_SRC, T0)  # exactly max age is fine


def test_hello_from_the_future_accepted_and_echoed(sp_id, a):
    sp = make_sp(sp_id)
    future = T0 + 3600 * S  # a node clock one hour ahead
    assert sp.receive(hello(a, sp, future), UDP, SP_UDP, A_SRC, T0)
    [(data, *_)] = sp.outbox
    assert Ack.parse(opened(data, a, sp)[1]).time == future
    assert sp.peers[a.public_key].hello_time == T0  # registration uses the SP's clock


def test_hello_endpoints_and_source_are_stored(sp_id, a):
    sp = make_sp(sp_id)
    endpoints = A_LAN + [("2001:db8::1", 1001), ("10.0.0.9", 0)]  # port 0 is skipped
    register(sp, a, A_SRC, endpoints=endpoints)
    peer = sp.peers[a.public_key]
    assert decode_endpoints(peer.endpoints) == endpoints[:2]
    assert (peer.proto, peer.local, peer.src) == (UDP, SP_UDP, A_SRC)


def test_hello_endpoints_are_cut_to_fifteen(sp_id, a):
    sp = make_sp(sp_id)
    endpoints = [(f"10.0.0.{i}", 1000 + i) for i in range(1, 18)]
    register(sp, a, A_SRC, endpoints=endpoints)
    assert decode_endpoints(sp.peers[a.public_key].endpoints) == endpoints[:15]


def test_peer_expires_hello_timeout_after_last_hello_at_housekeeping(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    for t in (5, 10, 15, 20, 25, 30):  # 30 s is not *more* than hello_timeout
        sp.handle_timer(T0 + t * S)
        assert a.public_key in sp.peers, t
    sp.handle_timer(T0 + 35 * S)
    assert a.public_key not in sp.peers


def test_housekeeping_runs_only_once_per_interval(sp_id, a):
    sp = make_sp(sp_id)
    assert sp.next_timer() == T0 + 5 * S
    register(sp, a, A_SRC)
    sp.handle_timer(T0 + 40 * S)
    assert sp.next_timer() == T0 + 45 * S
    assert a.public_key not in sp.peers


# --- relay ---------------------------------------------------------------------------------


def test_relay_increments_only_hop_count_and_goes_to_latest_hello_source(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    register(sp, b, B_SRC_2, T0 + S)  # the latest HELLO decides where B is reached
    data = app(a, b, b"payload", hop=3)
    assert sp.receive(data, UDP, SP_UDP, A_SRC, T0 + 2 * S)
    relayed = [t for t in sp.outbox if parse_long_header(bytes(t[0])).message_type == APP]
    [(out, proto, local, remote)] = relayed
    assert (proto, local, remote) == (UDP, SP_UDP, B_SRC_2)
    out = bytes(out)
    assert len(out) == len(data)
    assert out[4] == 4
    assert out[:4] + out[5:] == data[:4] + data[5:]
    # still end-to-end encrypted: B opens it with its A key
    header = parse_long_header(out)
    assert open_body(out, header, session_keys(b, a.public_key)[0]) == b"payload"


def test_relay_to_tcp_registered_peer_goes_over_its_tcp_connection(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    register(sp, b, B_TCP, proto=TCP)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    out, proto, local, remote = sp.outbox[0]
    assert parse_long_header(bytes(out)).message_type == APP
    assert (proto, local, remote) == (TCP, None, B_TCP)


def test_relay_hop_count_seven_forwarded_eight_dropped(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    assert sp.receive(app(a, b, b"x", hop=7), UDP, SP_UDP, A_SRC, T0)
    [(out, *_)] = sp.outbox
    assert out[4] == 8
    sp.outbox.clear()
    assert sp.receive(app(a, b, b"x", hop=8), UDP, SP_UDP, A_SRC, T0)  # silently
    assert sp.outbox == [] and sp.drops["hop_limit"] == 1


def test_relay_loopback_rejected(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    tx = session_keys(a, sp.public_key)[1]
    data = encode_message(APP, 1, a.public_key, a.public_key, a.proof_of_work, b"x", tx)
    assert not sp.receive(data, UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.drops["loopback"] == 1


def test_app_of_unregistered_sender_is_never_relayed_and_dropped_after_one_interval(sp_id, a, b):
    sp = make_sp(sp_id)  # housekeeping every 5 s
    register(sp, b, B_SRC)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0 + S)
    assert sp.outbox == [] and sum(sp.drops.values()) == 0  # held, not relayed
    register(sp, b, B_SRC, T0 + 5 * S)
    sp.handle_timer(T0 + 5 * S)  # held for 4 s: kept
    assert sp.drops["unregistered_sender"] == 0
    sp.handle_timer(T0 + 10 * S)
    assert sp.outbox == [] and sp.drops["unregistered_sender"] == 1
    register(sp, a, A_SRC, T0 + 11 * S)
    assert sp.outbox == []  # nothing left to relay


def test_expired_sender_is_not_relayed_even_before_housekeeping(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC, T0 + 20 * S)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0 + 31 * S)
    assert sp.outbox == []
    sp.handle_timer(T0 + 35 * S)
    sp.handle_timer(T0 + 40 * S)
    assert sp.outbox == [] and sp.drops["unregistered_sender"] == 1


def test_app_to_unknown_recipient_is_dropped_after_one_interval(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    sp.handle_timer(T0 + 5 * S)
    assert sp.outbox == [] and sp.drops["unknown_recipient"] == 1


@pytest.mark.parametrize("mtype", [ACK, HELLO, UNITE])
def test_only_app_is_forwarded(sp_id, a, b, mtype):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    assert not sp.receive(app(a, b, Ack(T0).encode() + bytes(4), mtype=mtype), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == [] and sp.drops["unexpected_type"] == 1


# --- UNITE ---------------------------------------------------------------------------------


def test_unite_pair_sent_after_relay_with_reported_endpoints_plus_observed_source(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC, endpoints=A_LAN)
    register(sp, b, B_SRC, endpoints=B_LAN)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    got = unites(sp)
    assert len(got) == 2
    by_recipient = {parse_long_header(bytes(t[0])).recipient: t for t in got}
    to_a, to_b = by_recipient[a.public_key], by_recipient[b.public_key]
    assert to_a[1:] == (UDP, SP_UDP, A_SRC)
    assert to_b[1:] == (UDP, SP_UDP, B_SRC)
    header, body = opened(to_a[0], a, sp)  # armed with A's key: A can open it
    assert header.armed and header.sender == sp.public_key
    unite = Unite.parse(body)
    assert unite.address == b.public_key
    assert decode_endpoints(unite.endpoints) == B_LAN + [B_SRC]
    header, body = opened(to_b[0], b, sp)
    unite = Unite.parse(body)
    assert unite.address == a.public_key
    assert decode_endpoints(unite.endpoints) == A_LAN + [A_SRC]
    # and not with the other node's key
    with pytest.raises(DisarmError):
        opened(to_a[0], b, sp)


def test_unite_for_tcp_registered_peer_has_only_reported_endpoints_and_goes_over_tcp(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC, endpoints=A_LAN)
    register(sp, b, B_TCP, endpoints=B_LAN, proto=TCP)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    by_recipient = {parse_long_header(bytes(t[0])).recipient: t for t in unites(sp)}
    unite = Unite.parse(opened(by_recipient[a.public_key][0], a, sp)[1])
    assert decode_endpoints(unite.endpoints) == B_LAN  # no observed TCP source
    assert by_recipient[b.public_key][1:] == (TCP, None, B_TCP)


def test_unite_is_rate_limited_per_pair_in_milliseconds(sp_id, a, b):
    sp = make_sp(sp_id)  # send_unites 5000 ms; housekeeping at T0 + 5 s must keep the record
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    assert sp.receive(app(a, b, b"1"), UDP, SP_UDP, A_SRC, T0 + 4 * S)
    assert len(unites(sp)) == 2
    sp.outbox.clear()
    sp.handle_timer(T0 + 5 * S)
    assert sp.receive(app(b, a, b"2"), UDP, SP_UDP, B_SRC, T0 + 5 * S)  # other direction, same pair
    assert sp.receive(app(a, b, b"3"), UDP, SP_UDP, A_SRC, T0 + 8 * S + 999 * MS)
    assert unites(sp) == [] and len(sp.outbox) == 2  # both relayed
    sp.outbox.clear()
    assert sp.receive(app(a, b, b"4"), UDP, SP_UDP, A_SRC, T0 + 9 * S)
    assert len(unites(sp)) == 2


def test_unite_rate_limit_one_second_later_none_five_seconds_later_again(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    sp.receive(app(a, b, b"1"), UDP, SP_UDP, A_SRC, T0)
    assert len(unites(sp)) == 2
    sp.outbox.clear()
    sp.receive(app(a, b, b"2"), UDP, SP_UDP, A_SRC, T0 + S)
    assert unites(sp) == []
    sp.outbox.clear()
    sp.receive(app(a, b, b"3"), UDP, SP_UDP, A_SRC, T0 + 5 * S)
    assert len(unites(sp)) == 2


def test_unite_rate_limit_is_per_pair(sp_id, a, b, ids):
    c = ids["id_3"]
    sp = make_sp(sp_id)
    for node, src in ((a, A_SRC), (b, B_SRC), (c, ("192.0.2.33", 3))):
        register(sp, node, src)
    sp.receive(app(a, b, b"1"), UDP, SP_UDP, A_SRC, T0)
    sp.outbox.clear()
    sp.receive(app(a, c, b"2"), UDP, SP_UDP, A_SRC, T0 + S)
    assert len(unites(sp)) == 2


@pytest.mark.parametrize("late", ["recipient", "sender"])
def test_unite_not_recorded_while_one_side_is_unregistered(sp_id, a, b, late):
    # drasyl-rs records the attempt before checking registration, delaying the first UNITE
    sp = make_sp(sp_id)
    early_node, early_src, late_node, late_src = (a, A_SRC, b, B_SRC) if late == "recipient" else (b, B_SRC, a, A_SRC)
    register(sp, early_node, early_src)
    assert sp.receive(app(a, b, b"early"), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox == []
    assert sp.receive(hello(late_node, sp, T0 + S), UDP, SP_UDP, late_src, T0 + S)
    assert len(unites(sp)) == 2  # with the held APP, at once
    sp.outbox.clear()
    assert sp.receive(app(a, b, b"later"), UDP, SP_UDP, A_SRC, T0 + 2 * S)
    assert unites(sp) == []  # recorded then, so rate limited now


def test_send_unites_negative_never_sends_unite(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    for t in (0, 10, 20):
        assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0 + t * S)
    assert unites(sp) == [] and len(sp.outbox) == 3


def test_send_unites_zero_sends_unite_after_every_relay(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=0)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    for _ in range(3):
        assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    assert len(unites(sp)) == 6


# --- bad input -----------------------------------------------------------------------------


def test_garbage_and_runts_return_false_and_count_drops(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    valid = hello(a, sp, T0)
    samples = [b"", b"\x1e", b"\x1e\x3f\x50", b"\x1e\x3f\x50\x01", os.urandom(50), os.urandom(200),
               valid[:78], b"\x00" * 79, valid[:78] + b"\x04", valid[:78] + b"\xff",
               valid[:79], valid[:100]]
    for proto in (UDP, TCP):
        for data in samples:
            before = sum(sp.drops.values())
            assert sp.receive(data, proto, SP_UDP, A_SRC, T0) is False, data
            assert sum(sp.drops.values()) == before + 1
    assert sp.outbox == []


#: Long header: magic 0-3, hop count 4, flags 5, network id 6-9, recipient 10-41, sender 42-73,
#: PoW 74-77, type 78; bytes 5-78 are authenticated with an armed body.
MAGIC, HOP, NETWORK_ID, TYPE = range(0, 4), 4, range(6, 10), 78


def test_every_truncation_and_bit_flip_of_valid_packets_is_handled(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    for valid in (hello(a, sp, T0, A_LAN), app(a, b, b"hello")):
        is_app = parse_long_header(valid).message_type == APP
        for n in range(len(valid)):
            result = sp.receive(valid[:n], UDP, SP_UDP, A_SRC, T0)
            # a HELLO cut anywhere fails; an APP is relayed as is once its header is whole
            assert result is (n >= 79 and is_app)
        for i in range(len(valid)):
            flipped = bytearray(valid)
            flipped[i] ^= 0x40
            result = sp.receive(bytes(flipped), UDP, SP_UDP, A_SRC, T0)
            # HELLO: only the unauthenticated hop count may change. APP: the super peer reads
            # magic, network id and type; the rest is relayed (or held) as is.
            expected = i not in MAGIC and i not in NETWORK_ID and i != TYPE if is_app else i == HOP
            assert result is expected, i
    sp.outbox.clear()
    # the table still works afterwards
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    assert sp.outbox[0][1:] == (UDP, SP_UDP, B_SRC)


# --- clocks: monotonic now, wall time only for HELLO ages ------------------------------------


def test_hello_age_is_checked_against_the_wall_clock_not_the_monotonic_one(sp_id, a):
    sp = make_sp(sp_id)  # hello_max_age 300 s
    sp.wall_offset = 10 * 60 * S  # our wall clock is 10 min ahead of the monotonic one
    assert not sp.receive(hello(a, sp, T0), UDP, SP_UDP, A_SRC, T0)  # 10 min old by the wall
    assert sp.drops["hello_too_old"] == 1 and sp.peers == {}
    assert sp.receive(hello(a, sp, T0 + 10 * 60 * S), UDP, SP_UDP, A_SRC, T0)
    assert Ack.parse(opened(sp.outbox[0][0], a, sp)[1]).time == T0 + 10 * 60 * S


def test_wall_clock_stepping_back_stalls_neither_expiry_nor_housekeeping(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    sp.wall_offset = -3600 * S  # wall clock set back one hour; monotonic time runs on
    assert sp.receive(hello(a, sp, T0 + S), UDP, SP_UDP, A_SRC, T0 + S)  # "future" HELLO: fine
    sp.outbox.clear()
    ticks = []
    for t in range(5, 40, 5):
        before = sp.next_timer()
        sp.handle_timer(T0 + t * S)
        ticks.append(sp.next_timer() != before)
    assert ticks == [True] * 7
    assert a.public_key not in sp.peers  # expired 30 s after its last HELLO


def test_wall_clock_stepping_forward_neither_expires_peers_nor_bursts_ticks(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC)
    sp.wall_offset = 3600 * S  # wall clock one hour ahead
    sp.handle_timer(T0 + 5 * S)
    assert a.public_key in sp.peers
    assert sp.next_timer() == T0 + 10 * S
    sp.handle_timer(T0 + 6 * S)  # no catching up on the hour the wall clock jumped
    assert sp.next_timer() == T0 + 10 * S


# --- replays: a HELLO older than the last one does not move a registration ------------------

ATTACKER = ("192.0.2.66", 6666)


def test_replayed_older_hello_from_another_source_is_dropped_without_ack(sp_id, a):
    sp = make_sp(sp_id)
    captured = hello(a, sp, T0)  # seen on the wire, still within hello_max_age
    register(sp, a, A_SRC, T0)
    register(sp, a, A_SRC, T0 + 5 * S)
    for proto, src in ((UDP, ATTACKER), (TCP, ATTACKER), (TCP, A_SRC)):
        assert not sp.receive(captured, proto, SP_UDP, src, T0 + 6 * S)
    assert sp.outbox == []  # no ACK reflected to a spoofed source
    assert sp.drops["hello_replayed"] == 3
    peer = sp.peers[a.public_key]
    assert (peer.proto, peer.src, peer.hello_time) == (UDP, A_SRC, T0 + 5 * S)


def test_older_hello_from_the_same_source_is_accepted_after_the_nodes_clock_stepped_back(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC, T0 + 60 * S)
    stepped_back = T0 + 5 * S  # the node's clock went back almost a minute
    assert sp.receive(hello(a, sp, stepped_back), UDP, SP_UDP, A_SRC, T0 + 65 * S)
    [(data, *_)] = sp.outbox
    assert Ack.parse(opened(data, a, sp)[1]).time == stepped_back
    assert sp.peers[a.public_key].hello_time == T0 + 65 * S  # still registered, renewed
    sp.outbox.clear()
    # its replay still cannot move it: the newest timestamp seen is what counts
    assert not sp.receive(hello(a, sp, T0 + 30 * S), UDP, SP_UDP, ATTACKER, T0 + 66 * S)
    assert sp.drops["hello_replayed"] == 1


def test_newer_hello_from_another_source_moves_the_registration(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC, T0)
    assert sp.receive(hello(a, sp, T0), TCP, None, B_TCP, T0 + S)  # same timestamp: UDP and TCP HELLOs of one tick
    assert sp.receive(hello(a, sp, T0 + S), UDP, SP_UDP, B_SRC, T0 + S)  # roamed
    assert sp.peers[a.public_key].src == B_SRC and sp.drops["hello_replayed"] == 0


def test_older_hello_from_another_source_is_accepted_once_the_registration_expired(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC, T0 + 60 * S)
    # the node rebooted with its clock a minute behind and came back from elsewhere
    assert sp.receive(hello(a, sp, T0 + 31 * S), UDP, SP_UDP, B_SRC, T0 + 91 * S)
    assert sp.peers[a.public_key].src == B_SRC


# --- APPs overtaking a HELLO are held, not dropped ---------------------------------------------


def app_frames(outbox: list) -> list:
    return [t for t in outbox if parse_long_header(bytes(t[0])).message_type == APP]


def test_app_overtaking_the_senders_first_hello_is_relayed_when_the_hello_arrives(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, b, B_SRC)
    data = app(a, b, b"first message")
    assert sp.receive(data, UDP, SP_UDP, A_SRC, T0 + S)
    assert sp.outbox == []
    assert sp.receive(hello(a, sp, T0 + S), UDP, SP_UDP, A_SRC, T0 + 2 * S)
    kinds = [parse_long_header(bytes(t[0])).message_type for t in sp.outbox]
    assert kinds == [ACK, APP, UNITE, UNITE]
    [(out, proto, local, remote)] = app_frames(sp.outbox)
    assert (proto, local, remote) == (UDP, SP_UDP, B_SRC)
    assert bytes(out[:4]) + bytes(out[5:]) == data[:4] + data[5:] and out[4] == 1
    assert sum(sp.drops.values()) == 0


def test_app_to_a_recipient_not_yet_registered_is_relayed_when_it_registers(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    register(sp, a, A_SRC)
    assert sp.receive(app(a, b, b"1"), UDP, SP_UDP, A_SRC, T0)
    assert sp.receive(app(a, b, b"2"), UDP, SP_UDP, A_SRC, T0 + S)
    assert sp.outbox == []
    assert sp.receive(hello(b, sp, T0 + 2 * S), TCP, None, B_TCP, T0 + 2 * S)
    relayed = app_frames(sp.outbox)
    assert [t[1:] for t in relayed] == [(TCP, None, B_TCP)] * 2
    assert [open_body(bytes(t[0]), parse_long_header(bytes(t[0])), session_keys(b, a.public_key)[0])
            for t in relayed] == [b"1", b"2"]  # in order


def test_app_with_neither_side_registered_waits_for_both(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    register(sp, a, A_SRC, T0 + S)  # the helper clears the outbox: check it did hold
    assert sp.receive(hello(b, sp, T0 + 2 * S), UDP, SP_UDP, B_SRC, T0 + 2 * S)
    assert [t[1:] for t in app_frames(sp.outbox)] == [(UDP, SP_UDP, B_SRC)]


def test_held_app_older_than_one_interval_is_dropped_not_relayed(sp_id, a, b):
    sp = make_sp(sp_id)
    register(sp, b, B_SRC)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0 + S)
    assert sp.receive(hello(a, sp, T0 + 6 * S + 1), UDP, SP_UDP, A_SRC, T0 + 6 * S + 1)
    assert app_frames(sp.outbox) == [] and sp.drops["unregistered_sender"] == 1


def test_held_apps_are_bounded_per_missing_peer(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    register(sp, b, B_SRC)
    for i in range(HOLD_PER_PEER + 5):
        assert sp.receive(app(a, b, b"%d" % i), UDP, SP_UDP, A_SRC, T0)
    assert sp.drops["hold_full"] == 5
    assert sp.receive(hello(a, sp, T0), UDP, SP_UDP, A_SRC, T0)
    assert len(app_frames(sp.outbox)) == HOLD_PER_PEER


def fake_app(sender: bytes, recipient: bytes, size: int) -> bytes:
    """An APP from a key that never registers: the super peer cannot tell it from a real one."""
    return encode_long_header(APP, 1, recipient, sender, 0, True) + bytes(size)


def test_held_apps_are_bounded_in_number_and_bytes_in_total(sp_id, a, b):
    sp = make_sp(sp_id, send_unites_ms=-1)
    senders = [i.to_bytes(32, "big") for i in range(1, HOLD_MAX_PACKETS // HOLD_PER_PEER + 2)]
    for sender in senders:  # one sender more than fits
        for _ in range(HOLD_PER_PEER):
            assert sp.receive(fake_app(sender, b.public_key, 100), UDP, SP_UDP, ATTACKER, T0)
    assert sp.drops["hold_full"] == HOLD_PER_PEER
    sp.handle_timer(T0 + 5 * S)  # all expired: room again
    assert sp.drops["unregistered_sender"] == HOLD_MAX_PACKETS
    big = 60_000  # TCP frames can be this large: the byte bound applies first
    fits = HOLD_MAX_BYTES // (big + 79)
    for i, sender in enumerate(senders):
        assert sp.receive(fake_app(sender, b.public_key, big), TCP, None, ATTACKER, T0 + 5 * S)
    assert sp.drops["hold_full"] == HOLD_PER_PEER + len(senders) - fits


# --- bounded state ---------------------------------------------------------------------------


def test_relayed_bytes_forget_recipients_that_left_the_table(sp_id, a, b, ids):
    c = ids["id_3"]
    sp = make_sp(sp_id, send_unites_ms=-1)
    register(sp, a, A_SRC)
    register(sp, b, B_SRC)
    register(sp, c, ATTACKER)
    assert sp.receive(app(a, b, b"x"), UDP, SP_UDP, A_SRC, T0)
    assert sp.receive(app(a, c, b"x"), UDP, SP_UDP, A_SRC, T0)
    assert set(sp.peers[a.public_key].relayed_bytes) == {b.public_key, c.public_key}
    for t in range(5, 40, 5):  # a and c keep registering, b goes away
        register(sp, a, A_SRC, T0 + t * S)
        register(sp, c, ATTACKER, T0 + t * S)
        sp.handle_timer(T0 + t * S)
    assert b.public_key not in sp.peers
    assert set(sp.peers[a.public_key].relayed_bytes) == {c.public_key}


# --- per-packet shortcuts (issue 14) must not change what is stored or sent ------------------


def test_changed_endpoints_replace_the_stored_ones_and_port_zero_is_still_left_out(sp_id, a):
    sp = make_sp(sp_id)
    register(sp, a, A_SRC, T0, A_LAN)
    assert decode_endpoints(sp.peers[a.public_key].endpoints) == A_LAN
    register(sp, a, A_SRC, T0 + S, A_LAN)  # unchanged: kept
    assert decode_endpoints(sp.peers[a.public_key].endpoints) == A_LAN
    register(sp, a, A_SRC, T0 + 2 * S, [("10.0.0.9", 0), ("10.0.0.2", 1002)])
    assert decode_endpoints(sp.peers[a.public_key].endpoints) == [("10.0.0.2", 1002)]
    register(sp, a, A_SRC, T0 + 3 * S, [("10.0.0.9", 0), ("10.0.0.2", 1002)])  # same bytes again
    assert decode_endpoints(sp.peers[a.public_key].endpoints) == [("10.0.0.2", 1002)]
    register(sp, a, A_SRC, T0 + 4 * S)  # none now
    assert sp.peers[a.public_key].endpoints == b""
    register(sp, a, A_SRC, T0 + 5 * S, A_LAN)
    assert decode_endpoints(sp.peers[a.public_key].endpoints) == A_LAN


def test_acks_to_different_nodes_in_one_batch_are_independent_messages(sp_id, a, b):
    """The ACK is built in a reused buffer: each one in the outbox must keep its own bytes."""
    sp = make_sp(sp_id)
    assert sp.receive(hello(a, sp, T0 - 1), UDP, SP_UDP, A_SRC, T0)
    assert sp.receive(hello(b, sp, T0 - 2), UDP, SP_UDP, B_SRC, T0)
    assert sp.receive(hello(a, sp, T0 - 3), UDP, SP_UDP, A_SRC, T0)
    times = []
    for (data, _, _, _), node in zip(sp.outbox, (a, b, a)):
        header, body = opened(data, node, sp)
        assert header.recipient == node.public_key and header.sender == sp.public_key
        times.append(Ack.parse(body).time)
    assert times == [T0 - 1, T0 - 2, T0 - 3]
    assert len({bytes(t[0][79:111]) for t in sp.outbox}) == 3  # a fresh R each


def test_scratch_opens_and_seals_exactly_as_the_codec(sp_id, a):
    from drasyl.crypto import Scratch, arm_into, disarm_after_header

    key = os.urandom(32)
    scratch = Scratch()
    for n in (0, 8, 16 + 18 * 15, 1345, 2048 - 127, 2048):  # the last one past the buffer
        body = os.urandom(n)
        packet = bytearray(79 + 48 + n)
        packet[:79] = os.urandom(79)
        arm_into(packet, 79, body, key, 5)
        assert scratch.plain[:scratch.open_long(bytes(packet), key)] == body[:scratch.size]
        if n <= scratch.size - 127:
            scratch.out[:79] = packet[:79]
            sealed = scratch.seal_long(n, key)
            assert sealed[:79] == packet[:79] and sealed[79:111] != packet[79:111]
            assert disarm_after_header(bytes(sealed), 5, 79, key) == body
        packet[-1] ^= 1
        with pytest.raises(DisarmError):
            scratch.open_long(bytes(packet), key)
    with pytest.raises(DisarmError):
        scratch.open_long(bytes(79 + 47), key)


# --- two workers' cores sharing registrations (DRASYL_WORKERS) -------------------------------


def make_shared(sp_id: Identity) -> SharedCore:
    core = SharedCore(sp_id, SuperPeerConfig(min_pow_difficulty=0), T0)
    core.handle_timer(T0)
    return core


def share(source: SharedCore, *others: SharedCore, now: int = T0) -> None:
    """Deliver ``source``'s announcements to ``others``, as the mesh does."""
    for other in others:
        other.learn_remote(list(source.announcements), now)
    source.announcements.clear()


def test_shared_cores_relay_and_unite_nodes_the_other_owns(sp_id, a, b):
    w0, w1 = make_shared(sp_id), make_shared(sp_id)
    register(w0, a, A_SRC, endpoints=A_LAN)
    register(w1, b, B_SRC)
    share(w0, w1)
    share(w1, w0)
    assert (w0.owned(), w1.owned()) == (1, 1) and len(w0.peers) == len(w1.peers) == 2
    packet = app(a, b, b"hi")
    assert w0.receive(packet, UDP, SP_UDP, A_SRC, T0 + MS)
    relayed, *rest = w0.outbox
    assert relayed[1:] == (UDP, SP_UDP, B_SRC) and bytes(relayed[0])[5:] == packet[5:]
    [to_b] = [t for t in unites(w0) if t[3] == B_SRC]
    assert Unite.parse(opened(to_b[0], b, w0)[1]).address == a.public_key  # b's keys came along
    register(w0, a, A_SRC, now=T0 + 2 * S, endpoints=A_LAN)  # unchanged: nothing to announce
    assert w0.announcements == []


def test_shared_core_refreshes_owned_registrations_every_third_of_the_hello_timeout(sp_id, a):
    w0, w1 = make_shared(sp_id), make_shared(sp_id)
    register(w0, a, A_SRC)
    share(w0, w1)
    register(w0, a, A_SRC, now=T0 + 9 * S)
    w0.handle_timer(T0 + 5 * S)
    assert w0.announcements == []  # announced 5 s ago, the refresh is due after 10 s
    w0.handle_timer(T0 + 10 * S)
    share(w0, w1, now=T0 + 10 * S)
    assert w1.peers[a.public_key].hello_time == T0 + 9 * S
    w1.handle_timer(T0 + 35 * S)  # 26 s after a's last HELLO: current
    assert a.public_key in w1.peers
    w1.handle_timer(T0 + 40 * S)  # no refresh came: expired with the owner's registration
    assert a.public_key not in w1.peers


def test_shared_core_newest_hello_moves_a_node_and_releases_held_apps(sp_id, a, b):
    w0, w1 = make_shared(sp_id), make_shared(sp_id)
    register(w0, a, A_SRC)
    register(w0, b, B_SRC)
    share(w0, w1)
    register(w1, b, B_SRC_2, now=T0 + S)  # b's address moved to the other worker
    share(w1, w0, now=T0 + S)
    assert (w0.owned(), w1.owned()) == (1, 1) and w0.peers[b.public_key].src == B_SRC_2
    c = Identity.generate(difficulty=0)
    assert w0.receive(app(a, c, b"early"), UDP, SP_UDP, A_SRC, T0 + S)
    assert w0.outbox == []  # held: c is not registered anywhere yet
    register(w1, c, ("198.51.100.7", 7), now=T0 + 2 * S)
    share(w1, w0, now=T0 + 2 * S)
    assert [t[3] for t in w0.outbox][0] == ("198.51.100.7", 7)
