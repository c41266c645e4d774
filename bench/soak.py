"""Soak: a real drasyl-sp with 10 000 registered nodes under valid traffic and hostile input for
10 minutes; RSS over time and the share of valid HELLOs answered. RSS must level off.

Not a test (CI never runs it). One load process (the other core) offers, every second:

- valid HELLOs: every node re-registers every 5 s (``--nodes`` / 5 per second), stamped now;
- valid APPs between registered UDP nodes, and to the slow TCP clients below;
- garbage: random bytes, cut HELLOs, HELLOs with bad PoW, and APPs from keys that never
  register (these fill the super peer's hold buffer, which must stay bounded);
- replays: HELLOs captured a minute earlier, sent from another address (must not be ACKed);
- slow TCP clients: nodes that register over TCP and keep sending HELLOs but never read, fed
  with large APPs by a TCP node (their write backlogs must stay capped, each and in total),
  and connections that trickle a frame that never completes (they must lose their slot
  after the registration deadline and reconnect).

Every ``--sample`` seconds a line shows the super peer's RSS, the share of that window's
valid HELLOs that were ACKed and how many replays were (wrongly) ACKed. At the end: RSS of the
first, middle and last third, and the super peer's drop counters.

    python3 bench/soak.py [--duration 600] [--nodes 10000] [--sample 30]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import socket
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simnodes import app_for, cheap_identity  # noqa: E402
from spprocess import SuperPeerProcess  # noqa: E402
from udpload import LoadSocket  # noqa: E402

from drasyl.crypto import session_keys  # noqa: E402
from drasyl.identity import Identity  # noqa: E402
from drasyl.messages import (  # noqa: E402
    ACK,
    APP,
    HELLO,
    LONG_HEADER_LEN,
    HelloSuperPeer,
    encode_endpoints,
    encode_long_header,
    encode_message,
)
from drasyl.net.tcp import frame  # noqa: E402

SOCKETS = 64
TYPE_OFFSET = LONG_HEADER_LEN - 1
HELLO_INTERVAL_S = 5.0
REPLAY_AGE_S = 60.0


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hellos:
    """Armed HELLOs per node, restamped cheaply (the session keys are derived once)."""

    def __init__(self, nodes: list[Identity], sp_public_key: bytes, endpoints: list[tuple[str, int]]) -> None:
        self.nodes = nodes
        self.sp = sp_public_key
        self.tx = [session_keys(n, sp_public_key)[1] for n in nodes]
        self.endpoints = [encode_endpoints([e]) for e in endpoints]

    def stamped(self, i: int, now_us: int) -> bytes:
        node = self.nodes[i]
        body = HelloSuperPeer(now_us, 1, self.endpoints[i]).encode()
        return encode_message(HELLO, 1, self.sp, node.public_key, node.proof_of_work, body, self.tx[i])


class TcpClient:
    """A non-blocking TCP connection to the super peer that keeps frames whole (never blocks)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that does not read
        self.sock.connect(address)
        self.sock.setblocking(False)
        self.pending = bytearray()  # what the socket has not taken yet
        self.closed = False

    def send(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def flush(self) -> None:
        try:
            while self.pending:
                del self.pending[: self.sock.send(self.pending)]
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True

    def drain(self) -> None:
        try:
            while self.sock.recv(65536):
                pass
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True

    def alive(self) -> bool:
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return not self.closed
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def is_ack(data: bytes) -> bool:
    return len(data) > TYPE_OFFSET and data[TYPE_OFFSET] == ACK


def scrape_drops(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    return {m[0]: float(m[1]) for m in re.findall(r'^drasyl_sp_dropped_packets\{reason="(\w+)"\} (\S+)$', text, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between report lines")
    ap.add_argument("--app-rate", type=float, default=1000.0, help="valid APPs per second")
    ap.add_argument("--garbage-rate", type=float, default=2000.0, help="invalid packets per second")
    ap.add_argument("--replay-rate", type=float, default=500.0, help="replayed HELLOs per second")
    ap.add_argument("--slow-readers", type=int, default=300, help="TCP nodes that never read")
    ap.add_argument("--bulk-rate", type=float, default=200.0, help="32 KB APPs per second to the slow readers")
    ap.add_argument("--tricklers", type=int, default=64, help="TCP connections that never complete a frame")
    args = ap.parse_args()

    rng = random.Random(1)
    print(f"building {args.nodes} simulated nodes ...", file=sys.stderr)
    sp_id = cheap_identity()
    nodes = [cheap_identity() for _ in range(args.nodes)]
    readers = [cheap_identity() for _ in range(args.slow_readers)]
    socks = [LoadSocket() for _ in range(SOCKETS)]
    spoofer = LoadSocket()  # replays and garbage come from here
    tcp_port, metrics_port = free_tcp_port(), free_tcp_port()
    sp = SuperPeerProcess(sp_id, extra_env={"DRASYL_TCP4_LISTEN": f"127.0.0.1:{tcp_port}",
                                            "DRASYL_PROMETHEUS_LISTEN": f"127.0.0.1:{metrics_port}"})
    tcp_address = ("127.0.0.1", tcp_port)
    slow: list[TcpClient] = []
    tricklers: list[TcpClient] = []
    bulk: TcpClient | None = None
    try:
        owner = [socks[i % SOCKETS] for i in range(args.nodes)]
        hellos = Hellos(nodes, sp_id.public_key, [s.address for s in owner])
        reader_hellos = Hellos(readers + [nodes[0]], sp_id.public_key, [("127.0.0.1", 1)] * (len(readers) + 1))

        # register every node, paced for the first-HELLO path (PoW check + key derivation)
        t0 = time.monotonic()
        acked = 0
        for i in range(args.nodes):
            owner[i].send(hellos.stamped(i, time.time_ns() // 1000), sp.address)
            if i % 64 == 63:
                time.sleep(64 / 3000)
                acked += sum(s.drain(is_ack) for s in socks)
        deadline = time.monotonic() + 10
        while acked < args.nodes and time.monotonic() < deadline:
            acked += sum(s.drain(is_ack) for s in socks)
            time.sleep(0.05)
        print(f"registered {acked}/{args.nodes} nodes in {time.monotonic() - t0:.1f} s")
        for i in range(len(readers)):
            client = TcpClient(tcp_address)
            client.send(frame(reader_hellos.stamped(i, time.time_ns() // 1000)))
            slow.append(client)
        bulk = TcpClient(tcp_address)  # node 0 moves to TCP and feeds the slow readers
        bulk.send(frame(reader_hellos.stamped(len(readers), time.time_ns() // 1000)))
        bulk_apps = [frame(app_for(nodes[0], r, os.urandom(32_000))) for r in readers]
        tricklers = [TcpClient(tcp_address) for _ in range(args.tricklers)]
        for client in tricklers:
            client.send(b"\xff\xff")

        apps = [app_for(nodes[i], nodes[(i + 1) % args.nodes], os.urandom(1200)) for i in range(0, args.nodes, 97)]
        apps += [app_for(nodes[i], r, os.urandom(1200)) for i, r in enumerate(readers)]
        valid_hello = hellos.stamped(0, time.time_ns() // 1000)
        captured: list[tuple[float, bytes]] = []  # (monotonic s sent, HELLO) for later replays
        stats = dict(hello_sent=0, hello_acked=0, replays=0, replay_acked=0, garbage=0, apps=0, reconnects=0)
        window = dict(stats)

        start = last_sample = time.monotonic()
        rss_samples: list[tuple[float, int]] = [(0.0, sp.rss())]
        print(f"{'t/s':>6} {'RSS MiB':>8} {'HELLO sent':>10} {'ACKed':>7} {'replays ACKed':>13} "
              f"{'garbage':>8} {'APPs':>7} {'reconnects':>10}")
        cursor = 0
        sent_for = {k: 0.0 for k in ("hello", "app", "garbage", "replay", "bulk")}
        rates = {"hello": args.nodes / HELLO_INTERVAL_S, "app": args.app_rate,
                 "garbage": args.garbage_rate, "replay": args.replay_rate, "bulk": args.bulk_rate}
        next_tcp = next_hello = start
        while True:
            now = time.monotonic()
            elapsed = now - start
            if elapsed >= args.duration:
                break
            due = {k: int(rates[k] * elapsed - sent_for[k]) for k in rates}
            stamp = time.time_ns() // 1000
            for _ in range(due["hello"]):
                i = cursor % args.nodes
                cursor += 1
                if i == 0:
                    continue  # node 0 is on TCP (below)
                data = hellos.stamped(i, stamp)
                stats["hello_sent"] += owner[i].send(data, sp.address)
                if i % 50 == 0:
                    captured.append((now, data))
            for _ in range(due["app"]):
                stats["apps"] += socks[rng.randrange(SOCKETS)].send(rng.choice(apps), sp.address)
            for k in range(due["garbage"]):
                kind = k % 4
                if kind == 0:
                    data = rng.randbytes(rng.randrange(0, 300))
                elif kind == 1:
                    data = valid_hello[: rng.randrange(0, len(valid_hello))]
                elif kind == 2:  # bad PoW from a fresh key
                    data = encode_long_header(HELLO, 1, sp_id.public_key, rng.randbytes(32), 0, True) + rng.randbytes(64)
                else:  # an APP from a key that never registers: held, then dropped
                    data = encode_long_header(APP, 1, nodes[rng.randrange(args.nodes)].public_key,
                                              rng.randbytes(32), 0, True) + rng.randbytes(200)
                stats["garbage"] += spoofer.send(data, sp.address)
            for _ in range(due["replay"]):
                while captured and now - captured[0][0] > REPLAY_AGE_S + 1:
                    captured.pop(0)
                if captured and now - captured[0][0] >= REPLAY_AGE_S:
                    stats["replays"] += spoofer.send(captured[rng.randrange(min(len(captured), 200))][1], sp.address)
            for _ in range(due["bulk"]):
                if len(bulk.pending) < 1 << 20:  # the super peer reads it: only a hiccup
                    bulk.send(rng.choice(bulk_apps))
                    stats["apps"] += 1
            bulk.flush()
            bulk.drain()
            for k in due:
                sent_for[k] += due[k]
            if now >= next_hello:  # the TCP nodes register every 5 s
                next_hello += HELLO_INTERVAL_S
                bulk.send(frame(reader_hellos.stamped(len(readers), stamp)))
                for i, client in enumerate(slow):
                    client.send(frame(reader_hellos.stamped(i, stamp)))
                    if client.closed:
                        client.close()
                        slow[i] = TcpClient(tcp_address)
                        slow[i].send(frame(reader_hellos.stamped(i, stamp)))
                        stats["reconnects"] += 1
            if now >= next_tcp:  # once a second: tricklers
                next_tcp = now + 1.0
                for i, client in enumerate(tricklers):
                    if client.alive():
                        client.send(b"x")
                        continue
                    client.close()
                    tricklers[i] = TcpClient(tcp_address)
                    tricklers[i].send(b"\xff\xff")
                    stats["reconnects"] += 1
            stats["hello_acked"] += sum(s.drain(is_ack) for s in socks)
            stats["replay_acked"] += spoofer.drain(is_ack)
            if now - last_sample >= args.sample:
                last_sample = now
                rss = sp.rss()
                rss_samples.append((elapsed, rss))
                d = {k: stats[k] - window[k] for k in stats}
                window = dict(stats)
                share = d["hello_acked"] / d["hello_sent"] if d["hello_sent"] else 0.0
                print(f"{elapsed:6.0f} {rss / 2**20:8.1f} {d['hello_sent']:10,} {share:7.2%} {d['replay_acked']:13,} "
                      f"{d['garbage']:8,} {d['apps']:7,} {d['reconnects']:10,}", flush=True)
            time.sleep(0.002)

        time.sleep(1.0)
        stats["hello_acked"] += sum(s.drain(is_ack) for s in socks)
        stats["replay_acked"] += spoofer.drain(is_ack)
        rss_samples.append((args.duration, sp.rss()))
        thirds = [[r for t, r in rss_samples if lo <= t * 3 / args.duration < lo + 1] or [0] for lo in range(3)]
        means = [sum(x) / len(x) / 2**20 for x in thirds]
        print(f"RSS mean per third: {means[0]:.1f} / {means[1]:.1f} / {means[2]:.1f} MiB; "
              f"last third vs middle: {means[2] - means[1]:+.1f} MiB")
        print(f"valid HELLOs answered: {stats['hello_acked']:,} of {stats['hello_sent']:,} "
              f"({stats['hello_acked'] / max(stats['hello_sent'], 1):.2%}); replays ACKed: "
              f"{stats['replay_acked']} of {stats['replays']:,}; TCP reconnects: {stats['reconnects']:,}")
        drops = scrape_drops(metrics_port)
        print("super peer drops: " + ", ".join(f"{k}={v:,.0f}" for k, v in sorted(drops.items())))
    finally:
        for client in slow + tricklers + ([bulk] if bulk else []):
            client.close()
        sp.stop()


if __name__ == "__main__":
    main()
