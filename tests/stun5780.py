"""A tiny RFC 5780 STUN responder for the NAT lab: ``python stun5780.py IP1 IP2 PORT1 PORT2``.

miniupnpd refuses to map ports while its WAN address is reserved, and every documentation
range is reserved. With ``ext_perform_stun=yes`` it instead asks a STUN server (its
``upnpstun.c``): four Binding requests from four sockets with CHANGE-REQUEST none, change
port, change IP, change IP and port. If all four are answered, each with the socket's own
address and port as the mapped address, it concludes "public address, no filtering" and
maps ports with that address as the external one. coturn did not answer the changed-port
requests in the lab, so the lab runs this: four sockets (IP1/IP2 x PORT1/PORT2), each
request answered from the socket CHANGE-REQUEST names, with XOR-MAPPED-ADDRESS,
RESPONSE-ORIGIN and OTHER-ADDRESS. It prints ``listening`` once all sockets are bound and
one line per answer; it stops at end of stdin.
"""

from __future__ import annotations

import ipaddress
import selectors
import socket
import struct
import sys

from drasyl.stun import MAGIC_COOKIE, _attributes  # noqa: PLC2701 (the lab reuses the codec)

CHANGE_REQUEST = 0x0003
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C
XOR_MAPPED_ADDRESS = 0x0020
CHANGE_IP, CHANGE_PORT = 0x4, 0x2


def _address(kind: int, ip: str, port: int, tid: bytes | None = None) -> bytes:
    packed, xport = ipaddress.IPv4Address(ip).packed, port
    if tid is not None:  # XOR-MAPPED-ADDRESS
        packed = bytes(a ^ b for a, b in zip(packed, MAGIC_COOKIE))
        xport ^= 0x2112
    return struct.pack("!HHBBH", kind, 8, 0, 1, xport) + packed


def change_flags(request: bytes) -> tuple[bytes, int] | None:
    """(transaction id, CHANGE-REQUEST flags) of a Binding request, or None for junk."""
    if len(request) < 20 or request[:2] != b"\x00\x01" or request[4:8] != MAGIC_COOKIE:
        return None
    attributes = _attributes(request)
    if attributes is None:
        return None
    flags = 0
    for kind, value in attributes:
        if kind == CHANGE_REQUEST and len(value) == 4:
            flags = struct.unpack("!I", value)[0] & (CHANGE_IP | CHANGE_PORT)
    return request[8:20], flags


def response(tid: bytes, source: tuple[str, int], origin: tuple[str, int], other: tuple[str, int]) -> bytes:
    body = (_address(XOR_MAPPED_ADDRESS, *source, tid=tid) + _address(RESPONSE_ORIGIN, *origin)
            + _address(OTHER_ADDRESS, *other))
    return struct.pack("!HH", 0x0101, len(body)) + MAGIC_COOKIE + tid + body


def main() -> None:
    ip1, ip2, port1, port2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    socks: dict[tuple[str, int], socket.socket] = {}
    sel = selectors.DefaultSelector()
    for ip in (ip1, ip2):
        for port in (port1, port2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port))
            socks[(ip, port)] = s
            sel.register(s, selectors.EVENT_READ, (ip, port))
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                if not sys.stdin.readline():
                    return
                continue
            ip, port = key.data
            data, source = key.fileobj.recvfrom(2048)
            other_ip, other_port = (ip2 if ip == ip1 else ip1), (port2 if port == port1 else port1)
            parsed = change_flags(data)
            if parsed is None:
                continue
            tid, flags = parsed
            reply_from = (other_ip if flags & CHANGE_IP else ip, other_port if flags & CHANGE_PORT else port)
            socks[reply_from].sendto(response(tid, source, reply_from, (other_ip, other_port)), source)
            print(f"answered {source[0]}:{source[1]} from {reply_from[0]}:{reply_from[1]}", flush=True)


if __name__ == "__main__":
    main()
