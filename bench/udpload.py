"""A paced UDP load generator for the super peer benchmarks.

Packets are sent one ``sendto`` at a time, round-robin over many sockets, so that the super
peer sees interleaved sources as it would from many real nodes (and cannot batch its replies
to one destination with GSO, which a single flow would allow). Replies are drained without
blocking between sends.
"""

from __future__ import annotations

import socket
import time


class LoadSocket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    def send(self, data: bytes, dest: tuple[str, int]) -> bool:
        try:
            self.sock.sendto(data, dest)
            return True
        except BlockingIOError:
            return False

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
    """Yield how many packets are due at each tick so that ``rate`` per second is met."""
    start = time.perf_counter()
    sent = 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return
        due = int(rate * elapsed) - sent
        if due > 0:
            sent += due
            yield due
        else:
            yield 0
            time.sleep(tick / 2)
