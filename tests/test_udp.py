"""UdpSocket on real loopback sockets: GSO, and recvmmsg/sendmmsg batching against the plain path.

A failed GSO send costs GSO only when GSO is to blame. The batching tests run twice: with the
batcher (``batched``) and with it switched off (``plain``, the fallback where libc lacks the
functions), and both must give the same outcome.
"""

from __future__ import annotations

import asyncio
import socket
from contextlib import contextmanager
from typing import Awaitable, Callable, Iterator

import pytest

from drasyl.net import mmsg
from drasyl.net.udp import GSO_STRIKES, RECV_SIZE, UdpSocket, bind_udp, send_transmits
from drasyl.transmit import UDP, Address

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


WAIT_S = 5.0
MODES = ["batched", "plain"] if mmsg.available() else ["plain"]


def run(mode: str, host: str, scenario: Callable[[UdpSocket, list], Awaitable[None]], dual_stack: bool = False) -> None:
    """``scenario(udp, received)`` with a UdpSocket on ``host`` whose batches land in ``received``."""

    async def main() -> None:
        received: list[tuple[bytes, Address]] = []
        udp = UdpSocket(bind_udp(host, 0, dual_stack=dual_stack), lambda sock, packets: received.extend(packets))
        if mode == "plain":
            udp.batcher = None
        try:
            await scenario(udp, received)
        finally:
            udp.close()

    asyncio.run(main())


async def wait_for(received: list, count: int) -> None:
    async def enough() -> None:
        while len(received) < count:
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(enough(), WAIT_S)
    except asyncio.TimeoutError:
        raise AssertionError(f"{len(received)} of {count} datagrams arrived within {WAIT_S} s: {received}") from None


@contextmanager
def bound(host: str, count: int) -> Iterator[list[socket.socket]]:
    """``count`` UDP sockets on ``host``, closed afterwards."""
    socks = []
    try:
        socks.extend(bind_udp(host, 0) for _ in range(count))
        yield socks
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_reader_yields_what_recvfrom_would_and_drops_oversize_datagrams_by_count(mode, host):
    async def scenario(udp: UdpSocket, received: list) -> None:
        with bound(host, 3) as senders:
            sizes = [1, 1472, RECV_SIZE, RECV_SIZE + 1, 9000, 100]
            for i, size in enumerate(sizes):
                senders[i % 3].sendto(bytes([i]) * size, udp.local)
            expected = [(bytes([i]) * size, senders[i % 3].getsockname()) for i, size in enumerate(sizes)
                        if size <= RECV_SIZE]
            await wait_for(received, len(expected))
            assert received == expected  # IPv6: (host, port, flowinfo, scope_id) as recvfrom gives
            assert udp.recv_truncated == 2

    run(mode, host, scenario)


@pytest.mark.parametrize("mode", MODES)
def test_dual_stack_reader_names_ipv4_senders_as_v4_mapped_addresses(mode):
    async def scenario(udp: UdpSocket, received: list) -> None:
        with bound("127.0.0.1", 1) as [sender]:
            sender.sendto(b"v4", ("127.0.0.1", udp.local[1]))
            await wait_for(received, 1)
            assert received == [(b"v4", ("::ffff:127.0.0.1", sender.getsockname()[1], 0, 0))]
            udp.send_batch([(b"back", received[0][1])])
            assert sender.recvfrom(64) == (b"back", ("127.0.0.1", udp.local[1]))

    run(mode, "::", scenario, dual_stack=True)


@pytest.mark.parametrize("mode", MODES)
def test_an_icmp_error_on_the_socket_does_not_stop_the_reader(mode):
    async def scenario(udp: UdpSocket, received: list) -> None:
        with bound("127.0.0.1", 1) as [closed]:
            closed_addr = closed.getsockname()
        with bound("127.0.0.1", 1) as [sender]:
            udp.sock.connect(closed_addr)  # Linux reports ICMP errors on connected sockets
            udp.sock.send(b"to nobody")  # port unreachable: the socket's error is set
            udp.sock.connect(("0.0.0.0", 0))  # unconnect (AF_UNSPEC); the error stays pending
            sender.sendto(b"after", udp.local)
            await wait_for(received, 1)
            assert received == [(b"after", sender.getsockname())]

    run(mode, "127.0.0.1", scenario)


COUNT = 700


def payload(i: int) -> bytes:
    return i.to_bytes(2, "big") * (1 + i % 300)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_send_batch_reaches_many_destinations_in_order_and_skips_only_refused_datagrams(mode, host):
    async def scenario(udp: UdpSocket, received: list) -> None:
        # refused at once (IPv4: EINVAL from a loopback-bound socket; IPv6: a v4-mapped address
        # on an IPV6_V6ONLY socket): sendmmsg sends the datagrams before it, fails on it, and
        # must go on with the rest
        bad = ("192.0.2.1", 9) if host == "127.0.0.1" else ("::ffff:192.0.2.1", 9)
        with bound(host, 4) as receivers:
            batch: list[tuple[bytes, Address]] = []
            for i in range(COUNT):  # more than one sendmmsg call carries (the socket's batch)
                if i in (5, 6, COUNT - 1):
                    batch.append((b"bad", bad))
                port = receivers[i % 4].getsockname()[1]
                addr = (host, port) if i % 2 else receivers[i % 4].getsockname()  # 2- or 4-tuples
                batch.append((payload(i), addr))
            if host == "127.0.0.1":  # a name, not an address: sendto resolves it, in its place
                batch.append((b"resolved", ("localhost", receivers[0].getsockname()[1])))
            udp.send_batch(batch)
            assert udp.send_drops == 3
            for r, sock in enumerate(receivers):
                got = drain(sock)
                expected = [payload(i) for i in range(r, COUNT, 4)]
                assert got[:len(expected)] == expected, r
                assert got[len(expected):] == ([b"resolved"] if r == 0 and host == "127.0.0.1" else []), r

    run(mode, host, scenario)


@pytest.mark.parametrize("mode", MODES)
def test_send_transmits_keeps_the_order_between_gso_runs_and_batched_datagrams(mode):
    async def scenario(udp: UdpSocket, received: list) -> None:
        with bound("127.0.0.1", 2) as [a, b]:
            to_a, to_b = a.getsockname(), b.getsockname()
            out = [(b"a0", UDP, udp.local, to_a), (b"b0", UDP, udp.local, to_b)]
            out += [(b"A" * 100, UDP, udp.local, to_a)] * 3  # a GSO run
            out += [(b"a1", UDP, udp.local, to_a), (b"gone", UDP, ("127.0.0.1", 1), to_a),
                    (b"b1", UDP, udp.local, to_b)]
            assert send_transmits(out, {udp.local: udp}, lambda data, remote: None) == 1
            assert drain(a) == [b"a0"] + [b"A" * 100] * 3 + [b"a1"]
            assert drain(b) == [b"b0", b"b1"]
            assert udp.send_drops == 0

    run(mode, "127.0.0.1", scenario)


@pytest.mark.skipif(not mmsg.available(), reason="libc has no recvmmsg/sendmmsg")
def test_address_cache_is_bounded_and_round_trips(monkeypatch):
    monkeypatch.setattr(mmsg, "CACHE_LIMIT", 4)
    cache = mmsg.AddressCache(socket.AF_INET6)
    addrs = [(f"2001:db8::{i + 1:x}", 1000 + i, 0, 0) for i in range(10)]
    raws = [cache.raw_of(addr) for addr in addrs]
    assert all(raw is not None and len(raw) == 28 for raw in raws)
    assert [cache.tuple_of(raw) for raw in raws] == addrs
    assert len(cache.raws) <= 4
    assert cache.raw_of(("192.0.2.1", 9)) is None  # not an IPv6 address: left to sendto
