"""recvmmsg/sendmmsg batching on real loopback sockets, checked against the plain path.

Every test runs twice: with the batcher (``batched``) and with it switched off (``plain``,
the fallback where libc lacks the functions), and both must give the same outcome.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Awaitable, Callable

import pytest

from drasyl.net import mmsg
from drasyl.net.udp import RECV_SIZE, UdpSocket, bind_udp, send_transmits
from drasyl.transmit import UDP, Address

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


def drain(sock: socket.socket) -> list[tuple[bytes, Address]]:
    out = []
    try:
        while True:
            out.append(sock.recvfrom(4096))
    except BlockingIOError:
        return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_reader_yields_what_recvfrom_would_and_drops_oversize_datagrams_by_count(mode, host):
    async def scenario(udp: UdpSocket, received: list) -> None:
        senders = [bind_udp(host, 0) for _ in range(3)]
        try:
            sizes = [1, 1472, RECV_SIZE, RECV_SIZE + 1, 9000, 100]
            for i, size in enumerate(sizes):
                senders[i % 3].sendto(bytes([i]) * size, udp.local)
            expected = [(bytes([i]) * size, senders[i % 3].getsockname()) for i, size in enumerate(sizes)
                        if size <= RECV_SIZE]
            await wait_for(received, len(expected))
            assert received == expected  # IPv6: (host, port, flowinfo, scope_id) as recvfrom gives
            assert udp.recv_truncated == 2
        finally:
            for sock in senders:
                sock.close()

    run(mode, host, scenario)


@pytest.mark.parametrize("mode", MODES)
def test_dual_stack_reader_names_ipv4_senders_as_v4_mapped_addresses(mode):
    async def scenario(udp: UdpSocket, received: list) -> None:
        sender = bind_udp("127.0.0.1", 0)
        try:
            sender.sendto(b"v4", ("127.0.0.1", udp.local[1]))
            await wait_for(received, 1)
            assert received == [(b"v4", ("::ffff:127.0.0.1", sender.getsockname()[1], 0, 0))]
            udp.send_batch([(b"back", received[0][1])])
            assert sender.recvfrom(64) == (b"back", ("127.0.0.1", udp.local[1]))
        finally:
            sender.close()

    run(mode, "::", scenario, dual_stack=True)


@pytest.mark.parametrize("mode", MODES)
def test_an_icmp_error_on_the_socket_does_not_stop_the_reader(mode):
    async def scenario(udp: UdpSocket, received: list) -> None:
        closed = bind_udp("127.0.0.1", 0)
        closed_addr = closed.getsockname()
        closed.close()
        sender = bind_udp("127.0.0.1", 0)
        try:
            udp.sock.connect(closed_addr)  # Linux reports ICMP errors on connected sockets
            udp.sock.send(b"to nobody")  # port unreachable: the socket's error is set
            udp.sock.connect(("0.0.0.0", 0))  # unconnect (AF_UNSPEC); the error stays pending
            sender.sendto(b"after", udp.local)
            await wait_for(received, 1)
            assert received == [(b"after", sender.getsockname())]
        finally:
            sender.close()

    run(mode, "127.0.0.1", scenario)


COUNT = 700


def payload(i: int) -> bytes:
    return i.to_bytes(2, "big") * (1 + i % 300)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_send_batch_reaches_many_destinations_in_order_and_skips_only_refused_datagrams(mode, host):
    async def scenario(udp: UdpSocket, received: list) -> None:
        receivers = [bind_udp(host, 0) for _ in range(4)]
        # refused at once (IPv4: EINVAL from a loopback-bound socket; IPv6: a v4-mapped address
        # on an IPV6_V6ONLY socket): sendmmsg sends the datagrams before it, fails on it, and
        # must go on with the rest
        bad = ("192.0.2.1", 9) if host == "127.0.0.1" else ("::ffff:192.0.2.1", 9)
        try:
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
                got = [data for data, _ in drain(sock)]
                expected = [payload(i) for i in range(r, COUNT, 4)]
                assert got[:len(expected)] == expected, r
                assert got[len(expected):] == ([b"resolved"] if r == 0 and host == "127.0.0.1" else []), r
        finally:
            for sock in receivers:
                sock.close()

    run(mode, host, scenario)


@pytest.mark.parametrize("mode", MODES)
def test_send_transmits_keeps_the_order_between_gso_runs_and_batched_datagrams(mode):
    async def scenario(udp: UdpSocket, received: list) -> None:
        a, b = bind_udp("127.0.0.1", 0), bind_udp("127.0.0.1", 0)
        try:
            to_a, to_b = a.getsockname(), b.getsockname()
            out = [(b"a0", UDP, udp.local, to_a), (b"b0", UDP, udp.local, to_b)]
            out += [(b"A" * 100, UDP, udp.local, to_a)] * 3  # a GSO run
            out += [(b"a1", UDP, udp.local, to_a), (b"gone", UDP, ("127.0.0.1", 1), to_a),
                    (b"b1", UDP, udp.local, to_b)]
            assert send_transmits(out, {udp.local: udp}, lambda data, remote: None) == 1
            assert [data for data, _ in drain(a)] == [b"a0"] + [b"A" * 100] * 3 + [b"a1"]
            assert [data for data, _ in drain(b)] == [b"b0", b"b1"]
            assert udp.send_drops == 0
        finally:
            a.close()
            b.close()

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
