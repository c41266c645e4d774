"""Property tests of the wire codec (spec §4) and of arming (spec §3.3).

Two promises are checked on random input: every parser either succeeds or raises a
``DrasylError`` (a daemon catches exactly that, so an ``IndexError`` or ``TypeError`` from a
hostile datagram would kill it), and encode → parse gives back what went in. Receive paths
hand the codec ``bytearray``/``memoryview`` buffers, so inputs come in all three types.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drasyl import crypto
from drasyl import messages as m
from drasyl.errors import DisarmError, DrasylError, MalformedMessage

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u8 = st.integers(0, 255)
key32 = st.binary(min_size=32, max_size=32)
short_id = st.binary(min_size=4, max_size=4)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoint(chunk: bytes, port_zero: bool) -> tuple[Address, int]:
    """One endpoint from 19 random bytes: kind, port, address material.

    Kinds: IPv4, IPv6, and the two IPv6 forms that embed IPv4 (mapped ``::ffff:a.b.c.d``,
    compatible ``::a.b.c.d``). With ``port_zero``, about half the endpoints get port 0.
    """
    kind, port, raw = chunk[0], int.from_bytes(chunk[1:3], "big") or 1, chunk[3:19]
    address: Address
    if kind % 4 == 0:
        address = ipaddress.IPv4Address(raw[:4])
    elif kind % 4 == 1:
        address = ipaddress.IPv6Address(raw)
    elif kind % 4 == 2:
        address = ipaddress.IPv6Address(m._V4_MAPPED + raw[:4])
    else:
        address = ipaddress.IPv6Address(bytes(12) + raw[:4])
    return address, 0 if port_zero and kind & 0x80 else port


def endpoint_lists(min_size: int = 0, max_size: int = 15, port_zero: bool = False) -> st.SearchStrategy:
    """Lists of endpoints drawn as one byte string: ~10x cheaper than lists of st.ip_addresses."""
    return st.integers(min_size, max_size).flatmap(
        lambda n: st.binary(min_size=19 * n, max_size=19 * n).map(
            lambda b: [_endpoint(b[i : i + 19], port_zero) for i in range(0, len(b), 19)]
        )
    )


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
buffer_types = st.sampled_from([bytes, bytearray, memoryview])


def _as(kind: Callable[[bytes], Any], data: bytes) -> Any:
    """``data`` as the buffer type a receive path would hold (bytes, bytearray, memoryview)."""
    return kind(bytearray(data)) if kind is memoryview else kind(data)


def _as_endpoint(address: Address, port: int) -> m.Endpoint:
    return (str(address), port)


def _canonical(address: Address) -> Address:
    """What reading gives back: ``::ffff:a.b.c.d`` becomes IPv4 again (spec §4.4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _decoded(raw: bytes) -> list[tuple[Address, int]]:
    """Decoded endpoints as address objects, so '::1.2.3.4' and '::102:304' compare equal."""
    return [(ipaddress.ip_address(host), port) for host, port in m.decode_endpoints(raw)]


def _expected(eps: list[tuple[Address, int]]) -> list[tuple[Address, int]]:
    return [(_canonical(address), port) for address, port in eps]


def _raw(eps: list[tuple[Address, int]]) -> bytes:
    return m.encode_endpoints([_as_endpoint(a, p) for a, p in eps])


def _drasyl_errors_only(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; a ``DrasylError`` is a valid answer (returns None), anything else fails."""
    try:
        return fn(*args)
    except DrasylError:
        return None


# --- random bytes never raise anything but DrasylError ----------------------------------

#: a parseable long header (random hop, flags, fields, type 0..3) and a random body
random_messages = st.builds(
    lambda hop, flags, fields, mtype, body: m.MAGIC_BYTES + bytes([hop, flags]) + fields + bytes([mtype]) + body,
    u8, u8, st.binary(min_size=72, max_size=72), st.integers(0, 3), st.binary(max_size=300),
)
#: random bytes, random bytes behind a valid magic, and messages with a valid header
wire_bytes = st.one_of(
    st.binary(max_size=400),
    st.binary(min_size=75, max_size=400).map(lambda b: m.MAGIC_BYTES + b),
    random_messages,
)
#: lengths around the 16/18·n and 32/18·n structure of HELLO and UNITE bodies
body_bytes = st.one_of(
    st.binary(max_size=400),
    st.integers(0, 20).flatmap(lambda n: st.binary(min_size=16 + 18 * n, max_size=16 + 18 * n)),
    st.integers(0, 20).flatmap(lambda n: st.binary(min_size=32 + 18 * n, max_size=32 + 18 * n)),
)

PARSERS: dict[str, Callable[[Any], Any]] = {
    "parse_long_header": m.parse_long_header,
    "HelloSuperPeer.parse": m.HelloSuperPeer.parse,
    "HelloNodePeer.parse": m.HelloNodePeer.parse,
    "Ack.parse": m.Ack.parse,
    "Unite.parse": m.Unite.parse,
    "decode_endpoints": m.decode_endpoints,
}


@PROPERTY
@given(data=st.one_of(wire_bytes, body_bytes), kind=buffer_types)
def test_parsers_raise_only_drasyl_errors_on_random_bytes(data: bytes, kind: Any) -> None:
    """A hostile datagram may be rejected, but only with the documented error family.

    All parsers see every input (one test, not one per parser: hypothesis' per-test cost
    dominates here, and a body can reach any parser).
    """
    parsed = {name: _drasyl_errors_only(parse, _as(kind, data)) for name, parse in PARSERS.items()}
    assert (parsed["decode_endpoints"] is None) == (len(data) % m.ENDPOINT_LEN != 0)
    assert (parsed["Ack.parse"] is None) == (len(data) < 8)
    assert (parsed["HelloNodePeer.parse"] is None) == (len(data) < 12)


@PROPERTY
@given(data=random_messages, key=key32, kind=buffer_types)
def test_open_body_of_random_long_header_messages(data: bytes, key: bytes, kind: Any) -> None:
    """Random armed bodies never authenticate; unarmed ones are returned as they are."""
    buf = _as(kind, data)
    header = m.parse_long_header(buf)
    if header.armed:
        with pytest.raises(DisarmError):
            m.open_body(buf, header, key)
        with pytest.raises(MalformedMessage):
            m.open_body(buf, header, None)
    else:
        assert bytes(m.open_body(buf, header, key)) == data[m.LONG_HEADER_LEN :]


@PROPERTY
@given(data=st.binary(max_size=200), key=key32, kind=buffer_types)
def test_open_short_of_random_bytes_is_a_disarm_error(data: bytes, key: bytes, kind: Any) -> None:
    """A random short-header packet (even a runt) is rejected as unauthentic, not a crash."""
    with pytest.raises(DisarmError):
        m.open_short(_as(kind, data), key)


@PROPERTY
@given(
    data=st.binary(max_size=200),
    offset=st.integers(0, 260),
    ad=st.binary(max_size=100),
    key=key32,
    kind=buffer_types,
)
def test_disarm_of_random_bytes_is_a_disarm_error(data: bytes, offset: int, ad: bytes, key: bytes, kind: Any) -> None:
    """Forgeries and bodies shorter than R ‖ tag are DisarmError, at any body offset."""
    with pytest.raises(DisarmError):
        crypto.disarm(_as(kind, data), offset, _as(kind, ad), key)


# --- round trips -------------------------------------------------------------------------


@PROPERTY
@given(eps=endpoint_lists(max_size=20))
def test_endpoints_round_trip(eps: list[tuple[Address, int]]) -> None:
    """IPv4 and IPv6 endpoints survive encoding; IPv4 travels as ::ffff:a.b.c.d."""
    raw = _raw(eps)
    assert len(raw) == m.ENDPOINT_LEN * len(eps)
    assert _decoded(raw) == _expected(eps)


@PROPERTY
@given(address=addresses, port=st.integers(1, 65535))
def test_endpoint_round_trip_for_any_address(address: Address, port: int) -> None:
    """Hypothesis' own address generator (special ranges included) agrees with the codec."""
    raw = m.encode_endpoint((str(address), port))
    assert raw[:2] == port.to_bytes(2, "big")
    assert raw[2:] == (m._V4_MAPPED + address.packed if address.version == 4 else address.packed)
    assert _decoded(raw) == [(_canonical(address), port)]


@PROPERTY
@given(n=st.integers(0, 20), data=st.data())
def test_decoded_endpoints_encode_to_the_same_bytes(n: int, data: st.DataObject) -> None:
    """Any 18·n bytes decode to addresses that encode back bit for bit (a relay may re-encode)."""
    raw = data.draw(st.binary(min_size=18 * n, max_size=18 * n))
    assert m.encode_endpoints(m.decode_endpoints(raw)) == raw


@PROPERTY
@given(port=st.one_of(st.integers(max_value=-1), st.integers(min_value=65536)), address=addresses)
def test_encode_endpoint_rejects_ports_outside_u16(port: int, address: Any) -> None:
    """A bad port is a MalformedMessage, not a struct.error."""
    with pytest.raises(MalformedMessage):
        m.encode_endpoint((str(address), port))


@PROPERTY
@given(
    hop=u8, armed=st.booleans(), network_id=i32, recipient=key32, sender=key32,
    pow_=i32, message_type=st.sampled_from(list(m.MessageType)),
)
def test_long_header_round_trip(
    hop: int, armed: bool, network_id: int, recipient: bytes, sender: bytes, pow_: int, message_type: int
) -> None:
    """Every header field comes back unchanged from its 79 bytes."""
    raw = m.encode_long_header(message_type, network_id, recipient, sender, pow_, armed, hop)
    assert len(raw) == m.LONG_HEADER_LEN and raw[:4] == bytes.fromhex("1e3f5001")
    assert m.parse_long_header(raw) == (hop, armed, network_id, recipient, sender, pow_, message_type)


@PROPERTY
@given(flags=u8, mtype=u8, rest=st.binary(min_size=72, max_size=72))
def test_long_header_reads_only_bit_4_of_flags_and_rejects_types_above_3(flags: int, mtype: int, rest: bytes) -> None:
    """Reserved flag bits are ignored; a message type above 3 is rejected (spec §4.2)."""
    raw = m.MAGIC_BYTES + b"\x00" + bytes([flags]) + rest + bytes([mtype])
    if mtype > 3:
        with pytest.raises(MalformedMessage):
            m.parse_long_header(raw)
    else:
        header = m.parse_long_header(raw)
        assert header.armed == bool(flags & 0x10) and header.message_type == mtype


@PROPERTY
@given(time=u64, child_time=st.integers(1, 2**64 - 1), eps=endpoint_lists(max_size=15))
def test_hello_super_peer_round_trip(time: int, child_time: int, eps: list[tuple[Address, int]]) -> None:
    """time, child_time and up to 15 endpoints come back unchanged."""
    body = m.HelloSuperPeer(time, child_time, _raw(eps)).encode()
    assert len(body) == 16 + 18 * len(eps)
    hello = m.HelloSuperPeer.parse(body)
    assert (hello.time, hello.child_time, hello.endpoints) == (time, child_time, _raw(eps))
    assert _decoded(hello.endpoints) == _expected(eps)


@PROPERTY
@given(time=u64, sid=short_id, extra=st.binary(max_size=40))
def test_hello_node_peer_round_trip_ignores_extra_bytes(time: int, sid: bytes, extra: bytes) -> None:
    """12 bytes are read; anything after them is ignored (spec §4.4)."""
    body = m.HelloNodePeer(time, sid).encode()
    assert len(body) == 12
    assert m.HelloNodePeer.parse(body + extra) == (time, sid)


@PROPERTY
@given(time=u64, extra=st.binary(max_size=40))
def test_ack_round_trip_ignores_extra_bytes(time: int, extra: bytes) -> None:
    """The echoed HELLO time comes back; bytes after the first 8 are ignored."""
    body = m.Ack(time).encode()
    assert len(body) == 8
    assert m.Ack.parse(body + extra).time == time


@PROPERTY
@given(address=key32, eps=endpoint_lists(max_size=16))
def test_unite_round_trip(address: bytes, eps: list[tuple[Address, int]]) -> None:
    """The other peer's key and up to 16 endpoints come back unchanged."""
    body = m.Unite(address, _raw(eps)).encode()
    unite = m.Unite.parse(body)
    assert (unite.address, unite.endpoints) == (address, _raw(eps))
    assert _decoded(unite.endpoints) == _expected(eps)


@PROPERTY
@given(key=key32, ad=st.binary(max_size=100), body=st.binary(max_size=1500), prefix=st.binary(max_size=90), kind=buffer_types)
def test_arm_disarm_round_trip(key: bytes, ad: bytes, body: bytes, prefix: bytes, kind: Any) -> None:
    """disarm(arm(x)) == x with the same key and AD, wherever the armed body starts."""
    armed = crypto.arm(_as(kind, body), key, _as(kind, ad))
    assert len(armed) == crypto.ARM_OVERHEAD + len(body)
    if len(body) >= 16:  # equal by chance with probability 2^-128
        assert bytes(armed[crypto.ARM_OVERHEAD :]) != body
    opened = crypto.disarm(_as(kind, prefix + bytes(armed)), len(prefix), _as(kind, ad), key)
    assert bytes(opened) == body


@PROPERTY
@given(key=key32, other=key32, ad=st.binary(max_size=100), body=st.binary(max_size=200))
def test_disarm_with_another_key_fails(key: bytes, other: bytes, ad: bytes, body: bytes) -> None:
    """The tag depends on the secret session key even though R is the AEGIS key (§3.3)."""
    assume(key != other)
    with pytest.raises(DisarmError):
        crypto.disarm(bytes(crypto.arm(body, key, ad)), 0, ad, other)


@PROPERTY
@given(
    key=key32, recipient=key32, sender=key32, network_id=i32, pow_=i32,
    message_type=st.sampled_from(list(m.MessageType)), body=st.binary(max_size=m.MAX_ARMED_LONG_APP),
    armed=st.booleans(), kind=buffer_types,
)
def test_message_round_trip(
    key: bytes, recipient: bytes, sender: bytes, network_id: int, pow_: int,
    message_type: int, body: bytes, armed: bool, kind: Any,
) -> None:
    """encode_message → parse_long_header → open_body gives back header fields and body."""
    wire = m.encode_message(message_type, network_id, recipient, sender, pow_, body, key if armed else None)
    assert len(wire) == m.LONG_HEADER_LEN + len(body) + (crypto.ARM_OVERHEAD if armed else 0)
    buf = _as(kind, wire)
    header = m.parse_long_header(buf)
    assert header == (0, armed, network_id, recipient, sender, pow_, message_type)
    assert bytes(m.open_body(buf, header, key)) == body


@PROPERTY
@given(key=key32, sid=short_id, payload=st.binary(max_size=m.MAX_ARMED_SHORT_APP), kind=buffer_types)
def test_short_header_round_trip(key: bytes, sid: bytes, payload: bytes, kind: Any) -> None:
    """A short-header APP opens to its payload, armed or not."""
    armed = m.encode_short(sid, payload, key)
    assert armed[:4] == sid and len(armed) == 4 + crypto.ARM_OVERHEAD + len(payload)
    assert bytes(m.open_short(_as(kind, armed), key)) == payload
    assert bytes(m.open_short(_as(kind, m.encode_short(sid, payload, None)), None)) == payload


# --- tampering ---------------------------------------------------------------------------

armed_messages = st.builds(
    lambda key, mtype, nid, rcpt, sndr, pow_, body: (
        key, m.encode_message(mtype, nid, rcpt, sndr, pow_, body, key)
    ),
    key32, st.sampled_from(list(m.MessageType)), i32, key32, key32, i32, st.binary(max_size=300),
)


@PROPERTY
@given(message=armed_messages, data=st.data())
def test_any_bit_flip_after_the_hop_count_fails_authentication(message: tuple[bytes, bytes], data: st.DataObject) -> None:
    """Bytes 5..end (AD, R, tag, ciphertext) are all authenticated (spec §3.3, §4.2)."""
    key, wire = message
    header = m.parse_long_header(wire)
    bit = data.draw(st.integers(5 * 8, len(wire) * 8 - 1), label="bit")
    tampered = bytearray(wire)
    tampered[bit // 8] ^= 1 << (bit % 8)
    tampered = bytes(tampered)
    # with the header as it was sent, the AEAD must catch every flip
    with pytest.raises(DisarmError):
        m.open_body(tampered, header, key)
    # a receiver re-parses the header: then a flip either is rejected by the parser (message
    # type > 3), clears the armed flag (body comes back still encrypted, never the plaintext),
    # or is caught by the AEAD
    reparsed = _drasyl_errors_only(m.parse_long_header, tampered)
    if reparsed is None:
        assert bit // 8 == 78
    elif not reparsed.armed:
        assert bit == 5 * 8 + 4
        assert bytes(m.open_body(tampered, reparsed, key)) == wire[m.LONG_HEADER_LEN :]
    else:
        with pytest.raises(DisarmError):
            m.open_body(tampered, reparsed, key)


@PROPERTY
@given(message=armed_messages, hop=u8)
def test_hop_count_is_not_authenticated(message: tuple[bytes, bytes], hop: int) -> None:
    """The super peer increments byte 4 when relaying; the recipient must still open it."""
    key, wire = message
    body = m.open_body(wire, m.parse_long_header(wire), key)
    relayed = wire[:4] + bytes([hop]) + wire[5:]
    header = m.parse_long_header(relayed)
    assert header.hop_count == hop
    assert m.open_body(relayed, header, key) == body


@PROPERTY
@given(key=key32, sid=short_id, payload=st.binary(max_size=200), data=st.data())
def test_any_bit_flip_in_a_short_header_packet_fails_authentication(
    key: bytes, sid: bytes, payload: bytes, data: st.DataObject
) -> None:
    """The short id is the AD, so even a flip in it is caught."""
    wire = bytearray(m.encode_short(sid, payload, key))
    bit = data.draw(st.integers(0, len(wire) * 8 - 1), label="bit")
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DisarmError):
        m.open_short(bytes(wire), key)


# --- size limits and skipped endpoints ---------------------------------------------------


@PROPERTY
@given(
    time=u64, child_time=st.integers(1, 2**64 - 1),
    eps=endpoint_lists(15, 15), tail=st.binary(min_size=1, max_size=400),
)
def test_hello_super_peer_longer_than_286_is_cut_not_rejected(
    time: int, child_time: int, eps: list[tuple[Address, int]], tail: bytes
) -> None:
    """Java senders may send more than 15 endpoints: the first 286 bytes are used."""
    body = m.HelloSuperPeer(time, child_time, _raw(eps)).encode()
    assert len(body) == m.HELLO_SUPER_PEER_MAX == 286
    hello = m.HelloSuperPeer.parse(body + tail)
    assert (hello.time, hello.child_time, hello.endpoints) == (time, child_time, _raw(eps))


@PROPERTY
@given(body=st.binary(min_size=16, max_size=286).map(lambda b: b[:8] + b"\x00\x00\x00\x00\x00\x00\x00\x01" + b[16:]))
def test_hello_super_peer_length_rule(body: bytes) -> None:
    """Up to 286 bytes, a body is accepted exactly when its length is 16 + 18·n."""
    parsed = _drasyl_errors_only(m.HelloSuperPeer.parse, body)
    assert (parsed is not None) == ((len(body) - 16) % 18 == 0)


@PROPERTY
@given(time=u64, eps=endpoint_lists(max_size=15), tail=st.binary(max_size=100))
def test_hello_super_peer_child_time_zero_is_rejected(time: int, eps: list[tuple[Address, int]], tail: bytes) -> None:
    """child_time must be non-zero (spec §4.4), whatever the rest of the body holds."""
    body = m.HelloSuperPeer(time, 0, _raw(eps)).encode() + tail
    with pytest.raises(MalformedMessage):
        m.HelloSuperPeer.parse(body)


@PROPERTY
@given(time=u64, eps=endpoint_lists(max_size=15, port_zero=True))
def test_hello_super_peer_skips_port_zero_endpoints(time: int, eps: list[tuple[Address, int]]) -> None:
    """Port-0 endpoints are dropped when reading, the others keep their order."""
    hello = m.HelloSuperPeer.parse(m.HelloSuperPeer(time, 1, _raw(eps)).encode())
    kept = [(a, p) for a, p in eps if p != 0]
    assert hello.endpoints == _raw(kept)
    assert _decoded(hello.endpoints) == _expected(kept)


@PROPERTY
@given(address=key32, eps=endpoint_lists(16, 16), tail=st.binary(min_size=1, max_size=400))
def test_unite_longer_than_320_is_cut(address: bytes, eps: list[tuple[Address, int]], tail: bytes) -> None:
    """Only the first 16 endpoints (320 bytes) of a UNITE are read."""
    body = m.Unite(address, _raw(eps)).encode()
    assert len(body) == m.UNITE_MAX == 320
    assert m.Unite.parse(body + tail) == (address, _raw(eps))


@PROPERTY
@given(body=st.binary(max_size=320))
def test_unite_length_rule(body: bytes) -> None:
    """Up to 320 bytes, a UNITE is accepted exactly when its length is 32 + 18·n."""
    parsed = _drasyl_errors_only(m.Unite.parse, body)
    assert (parsed is not None) == (len(body) >= 32 and (len(body) - 32) % 18 == 0)


@PROPERTY
@given(address=key32, eps=endpoint_lists(max_size=16, port_zero=True))
def test_unite_skips_port_zero_endpoints(address: bytes, eps: list[tuple[Address, int]]) -> None:
    """Port-0 endpoints in a UNITE are dropped, like in a HELLO."""
    unite = m.Unite.parse(m.Unite(address, _raw(eps)).encode())
    kept = [(a, p) for a, p in eps if p != 0]
    assert unite == (address, _raw(kept))
