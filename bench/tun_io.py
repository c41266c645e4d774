"""µs per packet for reading and writing 1345-byte IP packets on a TUN device.

Compares :class:`drasyl.tun.device.TunDevice`'s batch read and batch write with one plain
``os.read``/``os.write`` per packet (issue 7 measured 1.97 and 2.18 µs for those). Runs in a
throw-away network namespace (root needed): the script re-executes itself there with
``ip netns exec`` and deletes the namespace afterwards.

Read: a UDP socket sends a burst of ``--burst`` datagrams to a peer address routed into the
TUN, then only the draining of the TUN is timed. Write: a burst of prebuilt packets addressed
to a UDP socket of this host is written into the TUN, timed; the socket is drained untimed.
Each line shows the median over ``--rounds`` bursts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from ipaddress import IPv4Interface
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drasyl.tun.addresses import DeviceAddresses  # noqa: E402
from drasyl.tun.device import TunDevice  # noqa: E402

PACKET = 1345
ME = IPv4Interface("10.99.0.1/24")
PEER = "10.99.0.2"
PORT = 5001


def ipv4_udp(src: str, dst: str, dport: int, size: int) -> bytes:
    payload = bytes(size - 28)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 17, 0,
                                   socket.inet_aton(src), socket.inet_aton(dst)))
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(header) + struct.pack("!HHHH", 7000, dport, size - 20, 0) + payload


def fill(sender: socket.socket, burst: int) -> None:
    payload = bytes(PACKET - 28)
    for _ in range(burst):
        sender.sendto(payload, (PEER, 9))


def drain_batch(device: TunDevice) -> int:
    total = 0
    while n := device.read_batch():
        total += n
    return total


def drain_os_read(device: TunDevice) -> int:
    fd, total = device.fileno(), 0
    while True:
        try:
            os.read(fd, PACKET + 1)
        except BlockingIOError:
            return total
        total += 1


def bench_read(device: TunDevice, drain, rounds: int, burst: int) -> float:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    per_packet = []
    for _ in range(rounds):
        fill(sender, burst)
        t0 = time.perf_counter_ns()
        n = drain(device)
        elapsed = time.perf_counter_ns() - t0
        if n:
            per_packet.append(elapsed / n / 1000)
    sender.close()
    return statistics.median(per_packet)


def bench_write(device: TunDevice, batch: bool, rounds: int, burst: int) -> float:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
    receiver.bind((str(ME.ip), PORT))
    receiver.setblocking(False)
    packets = [ipv4_udp(PEER, str(ME.ip), PORT, PACKET)] * burst
    fd = device.fileno()
    per_packet = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        if batch:
            device.write_batch(packets)
        else:
            for packet in packets:
                os.write(fd, packet)
        per_packet.append((time.perf_counter_ns() - t0) / burst / 1000)
        try:
            while True:
                receiver.recv(2048)
        except BlockingIOError:
            pass
    receiver.close()
    return statistics.median(per_packet)


def inside(args: argparse.Namespace) -> None:
    device = TunDevice(batch=args.batch)
    try:
        problems = DeviceAddresses(device.index).reconcile([ME])
        assert not problems, problems
        print(f"{PACKET}-byte packets, bursts of {args.burst}, median of {args.rounds} bursts, µs per packet")
        results = [
            (f"read_batch (batch {args.batch})", bench_read(device, drain_batch, args.rounds, args.burst)),
            ("os.read per packet", bench_read(device, drain_os_read, args.rounds, args.burst)),
            ("write_batch", bench_write(device, True, args.rounds, args.burst)),
            ("os.write per packet", bench_write(device, False, args.rounds, args.burst)),
        ]
        for what, us in results:
            print(f"  {what:<24} {us:6.2f}")
        print(f"  drops: {dict(device.drops) or 'none'}")
    finally:
        device.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--burst", type=int, default=256, help="packets per burst (the TUN queue holds 500)")
    parser.add_argument("--batch", type=int, default=64, help="read_batch size")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    ns = f"dpb-{secrets.token_hex(3)}-tun"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", *sys.argv[1:]], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


if __name__ == "__main__":
    main()
