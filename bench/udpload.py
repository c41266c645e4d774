"""A paced UDP load generator that is cheap per packet: UDP GSO sends up to 64 datagrams of
equal size with one syscall, and replies are drained without blocking between batches."""

from __future__ import annotations

import socket
import time

UDP_SEGMENT = 103  # linux/udp.h
GSO_MAX_SEGMENTS = 64


class LoadSocket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    def send_same_size(self, packets: list[bytes], dest: tuple[str, int]) -> int:
        """Send packets of one size as GSO batches; returns how many the kernel took."""
        sent = 0
        size = len(packets[0])
        cmsg = [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, "little"))]
        per_call = max(1, min(GSO_MAX_SEGMENTS, 65000 // size))  # a GSO send is at most 64 KiB
        for i in range(0, len(packets), per_call):
            chunk = packets[i : i + per_call]
            try:
                if len(chunk) == 1:
                    self.sock.sendto(chunk[0], dest)
                else:
                    self.sock.sendmsg([b"".join(chunk)], cmsg, 0, dest)
                sent += len(chunk)
            except BlockingIOError:
                pass
        return sent

    def drain(self, count_if=None) -> int:
        """Read every datagram waiting; count those for which ``count_if(data)`` holds."""
        n = 0
        recv = self.sock.recv
        try:
            while True:
                data = recv(4096)
                if count_if is None or count_if(data):
                    n += 1
        except BlockingIOError:
            return n


def paced(rate: float, seconds: float, tick: float = 0.002):
    """Yield the number of packets to send at each tick so that ``rate`` per second is met."""
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter()
        elapsed = now - start
        if elapsed >= seconds:
            return
        due = int(rate * elapsed) - sent
        if due > 0:
            sent += due
            yield due
        else:
            yield 0
            time.sleep(tick / 2)
