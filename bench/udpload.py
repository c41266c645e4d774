"""A paced UDP load generator for the super peer benchmarks.

Packets are sent one ``sendto`` at a time, round-robin over many sockets, so that the super
peer sees interleaved sources as it would from many real nodes (and cannot batch its replies
to one destination with GSO, which a single flow would allow). Replies are drained without
blocking between sends.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass


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


class SocketGroup:
    """Sockets whose replies are drained together; only those with data are read."""

    def __init__(self, socks: list[LoadSocket], count_if=None) -> None:
        self.socks = socks
        self.count_if = count_if
        self._sel = selectors.EpollSelector()
        for s in socks:
            self._sel.register(s.sock, selectors.EVENT_READ, s)

    def drain(self) -> int:
        count_if = self.count_if
        return sum(key.data.drain(count_if) for key, _ in self._sel.select(0))

    def drain_tail(self, seconds: float = 1.0) -> int:
        """After a step: collect late replies until ``seconds`` have passed."""
        got = self.drain()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready = self._sel.select(max(0.0, deadline - time.monotonic()))
            got += sum(key.data.drain(self.count_if) for key, _ in ready)
        return got


@dataclass
class Step:
    """One rate step against one super peer: what was offered, sent, answered, and who was
    busy. ``gen_cpu`` (the load generator's share of a core while sending) near 100 %, or
    ``sent`` well below ``rate × seconds``, would mean the generator, not the super peer,
    limits the step."""

    rate: float
    asked: float  # seconds of sending asked for
    seconds: float  # seconds of sending it took
    sent: int
    received: int
    sp_cpu: float  # super peer CPU seconds per second of sending
    gen_cpu: float  # load generator CPU seconds per second of sending
    rss: int = 0  # super peer RSS right after the step

    @property
    def ratio(self) -> float:
        return self.received / self.sent if self.sent else 0.0

    @property
    def ok(self) -> bool:
        return self.ratio >= 0.99

    @property
    def send_shortfall(self) -> float:
        """Share of the offered packets the generator did not get out (kernel buffer full)."""
        return 1 - self.sent / (self.rate * self.asked)

    def line(self, unit: str, answered: str) -> str:
        return (f"offered {self.rate:>8,.0f} {unit}: sent {self.sent:>8,} {answered} {self.received:>8,} "
                f"ratio {self.ratio:7.2%}  sp cpu {self.sp_cpu:5.0%}  generator cpu {self.gen_cpu:5.0%}  "
                f"rss {self.rss / 2**20:6.1f} MiB  {'ok' if self.ok else 'LOSS'}")


class Meter:
    """CPU of the super peer and of this process while one step sends."""

    def __init__(self, sp, seconds: float) -> None:
        self.sp = sp
        self.asked = seconds
        self.sp0 = sp.cpu_seconds()
        self.gen0 = time.process_time()
        self.t0 = time.perf_counter()

    def sending_done(self) -> None:
        self.wall = time.perf_counter() - self.t0
        self.sp_cpu = (self.sp.cpu_seconds() - self.sp0) / self.wall
        self.gen_cpu = (time.process_time() - self.gen0) / self.wall

    def step(self, rate: float, sent: int, received: int) -> Step:
        return Step(rate, self.asked, self.wall, sent, received, self.sp_cpu, self.gen_cpu, self.sp.rss())


def paced(rate: float, seconds: float, tick: float = 0.0005):
    """Yield how many packets are due at each tick so that ``rate`` per second is met."""
    start = time.perf_counter()
    sent = 0
    next_tick = start
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            return
        due = int(rate * (now - start)) - sent
        if due > 0:
            sent += due
            yield due
        next_tick += tick
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.perf_counter()
