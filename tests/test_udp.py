"""UDP GSO on real sockets: a failed GSO send costs GSO only when GSO is to blame."""

from __future__ import annotations

import asyncio
import socket

from drasyl.net.udp import GSO_STRIKES, UdpSocket, bind_udp

LOCALHOST = "127.0.0.1"
SEGMENT = 100


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    try:
        while True:
            out.append(sock.recv(2048))
    except BlockingIOError:
        return out


def test_gso_survives_send_errors_that_plain_sends_share_and_stops_after_repeated_gso_failures():
    async def scenario() -> None:
        udp = UdpSocket(bind_udp(LOCALHOST, 0), lambda sock, packets: None)
        receiver = bind_udp(LOCALHOST, 0)
        try:
            assert udp.gso, "this kernel/Python has no UDP_SEGMENT: nothing to test"
            batch = [bytes([i]) * SEGMENT for i in range(4)]
            # from a loopback-bound socket to a non-local address: EINVAL for GSO and plain
            # sends alike (nothing leaves the host); not GSO's fault
            for _ in range(2 * GSO_STRIKES):
                udp.send_segments(batch, SEGMENT, ("192.0.2.1", 9))
            assert udp.gso and udp.send_drops == 2 * GSO_STRIKES * len(batch)
            udp.send_segments(batch, SEGMENT, receiver.getsockname())
            assert drain(receiver) == batch  # loopback delivers within the send call
            # more segments than one GSO send may carry: GSO fails (EINVAL), plain sends work
            too_many = [bytes([i % 256]) * SEGMENT for i in range(200)]
            for strike in range(1, GSO_STRIKES + 1):
                udp.send_segments(too_many, SEGMENT, receiver.getsockname())
                assert drain(receiver) == too_many, strike  # nothing lost meanwhile
                assert udp.gso is (strike < GSO_STRIKES), strike
        finally:
            udp.close()
            receiver.close()

    asyncio.run(scenario())
