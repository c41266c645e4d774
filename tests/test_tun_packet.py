"""The IPv4 helpers of the TUN data path: version/header checks, addresses, drasyl's own traffic."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from drasyl.messages import MAGIC_BYTES
from drasyl.tun.packet import ADDRESSES, dst_ip, is_drasyl_control, is_ipv4, src_dst, src_ip

SRC, DST = IPv4Address("10.1.0.1"), IPv4Address("10.1.0.2")


def ipv4(proto: int, payload: bytes, options: bytes = b"", fragment_offset: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 1, fragment_offset,
                         64, proto, 0, SRC.packed, DST.packed)
    return header + options + payload


def udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 22527, 22527, 8 + len(payload), 0) + payload


def test_addresses_are_read_as_ints():
    pkt = memoryview(bytearray(ipv4(1, b"ping")))
    assert src_ip(pkt) == int(SRC) and dst_ip(pkt) == int(DST)
    assert src_dst(pkt) == (int(SRC), int(DST)) == ADDRESSES.unpack_from(pkt, 12)


def test_ipv4_needs_version_4_and_a_whole_header():
    assert is_ipv4(ipv4(1, b""))
    assert not is_ipv4(ipv4(1, b"")[:19])
    ipv6 = bytes([0x60]) + bytes(39)
    assert not is_ipv4(ipv6)
    bad_ihl = bytes([0x44]) + ipv4(1, b"")[1:]
    assert not is_ipv4(bad_ihl)
    options_missing = bytes([0x46]) + ipv4(1, b"")[1:]  # IHL 6 claims 24 header bytes, 20 present
    assert not is_ipv4(options_missing)


def test_udp_with_the_magic_is_drasyl_control_traffic():
    assert is_drasyl_control(ipv4(17, udp(MAGIC_BYTES + b"rest of a HELLO")))
    assert is_drasyl_control(memoryview(ipv4(17, udp(MAGIC_BYTES))))


def test_the_magic_is_found_after_ip_options():
    options = b"\x01\x01\x01\x00"  # NOP NOP NOP END
    assert is_drasyl_control(ipv4(17, udp(MAGIC_BYTES), options))
    # Bytes 28-31 hold the magic (in the UDP length and checksum), the payload does not: an
    # IHL-blind check would match there.
    fake = struct.pack("!HHHH", 22527, 22527, 0x1E3F, 0x5001) + b"\x00" * 4
    assert ipv4(17, fake, options)[28:32] == MAGIC_BYTES
    assert not is_drasyl_control(ipv4(17, fake, options))


def test_other_traffic_is_not_control_traffic():
    assert not is_drasyl_control(ipv4(6, udp(MAGIC_BYTES)))  # TCP whose bytes look the same
    assert not is_drasyl_control(ipv4(17, udp(b"\x1e\x3f\x50\x02")))
    assert not is_drasyl_control(ipv4(17, udp(MAGIC_BYTES[:3])))  # payload too short
    assert not is_drasyl_control(ipv4(17, b"\x00" * 8 + MAGIC_BYTES, fragment_offset=185))  # not the first fragment
