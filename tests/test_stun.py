"""STUN for ``drasyl-agent netcheck``: the codec (RFC 5769 vectors), the super peer core
answering or ignoring Binding requests, its UDP server in-process, and the mapping verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import socket
import struct
import zlib

import pytest
from fakeclock import T0

from drasyl.agent.netcheck import ENDPOINT_DEPENDENT, ENDPOINT_INDEPENDENT, NO_NAT, UNKNOWN, classify
from drasyl.identity import Identity
from drasyl.messages import HELLO, encode_message
from drasyl.stun import (
    MAX_REQUEST_LEN,
    binding_request,
    binding_response,
    is_binding_request,
    parse_binding_request,
    parse_binding_response,
)
from drasyl.superpeer.config import DaemonConfig, ListenAddress
from drasyl.superpeer.core import STUN_PER_SOURCE, SuperPeerConfig, SuperPeerCore
from drasyl.superpeer.server import SuperPeerServer
from drasyl.transmit import TCP, UDP

# RFC 5769 §2.1-2.3, typed in from the RFC; short-term password of all three samples:
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e" "20746573" "7420636c" "69656e74"  # SOFTWARE "STUN test client"
    "00240004" "6e0001ff"  # PRIORITY
    "80290008" "932ff9b1" "51263b36"  # ICE-CONTROLLED
    "00060009" "6576746a" "3a683676" "59202020"  # USERNAME "evtj:h6vY" + padding
    "00080014" "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"  # MESSAGE-INTEGRITY
    "80280004" "e57a3bcf")  # FINGERPRINT
RESPONSE_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"  # SOFTWARE "test vector"
    "00200008" "0001a147" "e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "00080014" "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004" "c07d4c96")
RESPONSE_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200014" "0002a147" "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"  # [2001:db8:1234:5678:11:2233:4455:6677]:32853
    "00080014" "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004" "c8fb0b4c")


@pytest.mark.parametrize("message", [REQUEST, RESPONSE_V4, RESPONSE_V6], ids=["request", "ipv4", "ipv6"])
def test_vectors_are_typed_in_right(message):
    """Their FINGERPRINT and MESSAGE-INTEGRITY check out, so no byte was mistyped."""
    assert zlib.crc32(message[:-8]) ^ 0x5354554E == struct.unpack("!I", message[-4:])[0]
    integrity = len(message) - 8 - 24
    signed = message[:2] + struct.pack("!H", integrity + 24 - 20) + message[4:integrity]
    assert hmac.new(PASSWORD, signed, hashlib.sha1).digest() == message[integrity + 4 : integrity + 24]


def test_rfc5769_request_is_a_binding_request():
    assert is_binding_request(REQUEST)
    assert parse_binding_request(REQUEST) == TRANSACTION_ID


@pytest.mark.parametrize("message, mapped", [(RESPONSE_V4, ("192.0.2.1", 32853)),
                                             (RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853))],
                         ids=["ipv4", "ipv6"])
def test_rfc5769_responses_parse_and_our_encoding_matches_their_xor_mapped_address(message, mapped):
    assert parse_binding_response(message, TRANSACTION_ID) == mapped
    assert parse_binding_response(message, bytes(12)) is None  # another transaction
    ours = binding_response(TRANSACTION_ID, mapped)
    attribute = ours[20:]
    assert attribute in message  # the same XOR-MAPPED-ADDRESS bytes as the RFC's
    assert struct.unpack("!HH", ours[:4]) == (0x0101, len(attribute)) and ours[4:20] == message[4:20]
    assert parse_binding_response(ours, TRANSACTION_ID) == mapped


def test_ipv4_mapped_source_of_a_dual_stack_socket_is_answered_as_ipv4():
    response = binding_response(TRANSACTION_ID, ("::ffff:192.0.2.1", 32853, 0, 0))
    assert parse_binding_response(response, TRANSACTION_ID) == ("192.0.2.1", 32853)
    assert len(response) == 32


def test_our_request_leaves_room_for_an_ipv6_answer():
    request, tid = binding_request()
    assert parse_binding_request(request) == tid and len(tid) == 12
    assert len(binding_response(tid, ("2001:db8::1", 1))) <= len(request) + 12


@pytest.mark.parametrize("data", [
    REQUEST[:-1],  # length field does not match
    REQUEST[:2] + b"\x00\x57" + REQUEST[4:-1],  # length not a multiple of 4
    REQUEST[:20] + b"\x80\x22\x00\x40" + REQUEST[24:],  # an attribute runs past the end
    b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 8,  # header cut short
], ids=["length", "unaligned", "attribute-overrun", "short"])
def test_malformed_requests_are_refused(data):
    assert parse_binding_request(data) is None


def test_drasyl_datagrams_are_never_binding_requests(ids, sp_id):
    msg = encode_message(HELLO, 0x21, sp_id.public_key, ids["id_1"].public_key, 0, b"x", None)
    assert not is_binding_request(msg)
    assert not is_binding_request(bytearray(b"\x1e\x3f\x50\x01\x21\x12\xa4\x42") + bytes(80))


# --- the super peer core ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_id() -> Identity:
    return Identity.generate(0)


SRC = ("192.0.2.7", 40000)
LOCAL = ("198.51.100.10", 22527)


def test_core_answers_a_binding_request_with_the_observed_address(sp_id):
    core = SuperPeerCore(sp_id, now=T0)
    request, tid = binding_request()
    assert core.receive(request, UDP, LOCAL, SRC, T0)
    [(data, proto, local, remote)] = core.outbox
    assert (proto, local, remote) == (UDP, LOCAL, SRC)
    assert parse_binding_response(data, tid) == SRC
    assert len(data) <= len(request) + 12
    assert core.stun_answered == 1 and not core.drops and not core.peers


def test_core_answers_the_rfc_sample_request(sp_id):
    core = SuperPeerCore(sp_id, now=T0)
    core.receive(REQUEST, UDP, LOCAL, ("2001:db8::7", 1234, 0, 0), T0)
    assert parse_binding_response(core.outbox[0][0], TRANSACTION_ID) == ("2001:db8::7", 1234)


@pytest.mark.parametrize("data, reason", [
    (REQUEST[:-1], "stun_malformed"),
    (binding_request()[0][:2] + struct.pack("!H", MAX_REQUEST_LEN - 20 + 4) + binding_request()[0][4:20]
     + b"\x80\x22" + struct.pack("!H", MAX_REQUEST_LEN - 20) + bytes(MAX_REQUEST_LEN - 20), "stun_oversize"),
], ids=["malformed", "oversized"])
def test_core_ignores_bad_requests(sp_id, data, reason):
    core = SuperPeerCore(sp_id, now=T0)
    assert len(data) > MAX_REQUEST_LEN or reason == "stun_malformed"
    assert not core.receive(data, UDP, LOCAL, SRC, T0)
    assert not core.outbox and core.drops == {reason: 1} and core.stun_answered == 0


def test_core_ignores_other_stun_messages_and_stun_over_tcp(sp_id):
    core = SuperPeerCore(sp_id, now=T0)
    request, tid = binding_request()
    core.receive(binding_response(tid, SRC), UDP, LOCAL, SRC, T0)  # a response, not a request
    core.receive(b"\x00\x11" + request[2:], UDP, LOCAL, SRC, T0)  # an indication
    assert not core.receive(request, TCP, None, SRC, T0)
    assert not core.outbox and core.stun_answered == 0 and core.drops == {"malformed": 3}


def test_core_never_answers_more_than_12_bytes_beyond_the_request(sp_id):
    core = SuperPeerCore(sp_id, now=T0)
    bare = struct.pack("!HH", 1, 0) + b"\x21\x12\xa4\x42" + bytes(12)  # 20 bytes: room for IPv4 only
    core.receive(bare, UDP, LOCAL, SRC, T0)
    core.receive(bare, UDP, LOCAL, ("2001:db8::7", 1234, 0, 0), T0)
    assert [len(t[0]) for t in core.outbox] == [32]
    assert core.drops == {"stun_request_too_short": 1}


def test_core_rate_limits_per_source_ip_until_housekeeping(sp_id):
    core = SuperPeerCore(sp_id, now=T0)
    for port in range(STUN_PER_SOURCE + 5):
        core.receive(binding_request()[0], UDP, LOCAL, (SRC[0], 1000 + port), T0)
    core.receive(binding_request()[0], UDP, LOCAL, ("192.0.2.8", 1), T0)
    assert core.stun_answered == STUN_PER_SOURCE + 1 and core.drops == {"stun_rate_limited": 5}
    core.handle_timer(core.next_timer())
    core.receive(binding_request()[0], UDP, LOCAL, SRC, core.next_timer())
    assert core.stun_answered == STUN_PER_SOURCE + 2


def test_core_with_stun_off_answers_nothing(sp_id):
    core = SuperPeerCore(sp_id, SuperPeerConfig(stun=False), now=T0)
    core.receive(binding_request()[0], UDP, LOCAL, SRC, T0)
    assert not core.outbox and core.drops == {"stun_disabled": 1}


def test_drasyl_stun_variable():
    assert DaemonConfig.from_env({}).core_config().stun is True
    assert DaemonConfig.from_env({"DRASYL_STUN": "false"}).core_config().stun is False


def test_server_answers_on_its_udp_socket(sp_id):
    """In-process super peer on loopback: a Binding request gets our address back."""
    base = DaemonConfig.from_env({"DRASYL_MIN_POW_DIFFICULTY": "0"})
    config = dataclasses.replace(base, udp4_listen=ListenAddress("127.0.0.1", 0), udp6_listen=None,
                                 tcp4_listen=None, tcp6_listen=None, prometheus_listen=None)

    async def main() -> tuple:
        server = SuperPeerServer(sp_id, config)
        await server.start()
        try:
            port = server.listeners[0].address.port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                request, tid = binding_request()
                s.sendto(request, ("127.0.0.1", port))
                data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 2048), 5)
                return parse_binding_response(data, tid), s.getsockname(), server.core.stun_answered
        finally:
            await server.close()

    mapped, local, answered = asyncio.run(main())
    assert mapped == local and answered == 1


# --- the verdict --------------------------------------------------------------------------------


LOCAL_SOCKET = ("10.1.0.2", 40000)


@pytest.mark.parametrize("mapped, verdict", [
    ([], UNKNOWN),
    ([("198.51.100.21", 40000)], UNKNOWN),  # one destination cannot tell
    ([LOCAL_SOCKET, LOCAL_SOCKET], NO_NAT),
    ([LOCAL_SOCKET], NO_NAT),
    ([("198.51.100.21", 40000), ("198.51.100.21", 40000)], ENDPOINT_INDEPENDENT),
    ([("198.51.100.21", 40000), ("198.51.100.21", 51234)], ENDPOINT_DEPENDENT),
    ([("198.51.100.21", 40000), ("198.51.100.99", 40000)], ENDPOINT_DEPENDENT),
], ids=["none-answered", "one", "public-two", "public-one", "cone", "symmetric-port", "symmetric-ip"])
def test_classify(mapped, verdict):
    got, summary = classify(LOCAL_SOCKET, mapped)
    assert got == verdict
    if verdict == ENDPOINT_DEPENDENT:
        assert "symmetric NAT" in summary and "expect relaying" in summary
    if verdict == ENDPOINT_INDEPENDENT:
        assert "hole punching works" in summary
    if len(mapped) == 1 and verdict == UNKNOWN:
        assert "cannot tell (one destination)" in summary
