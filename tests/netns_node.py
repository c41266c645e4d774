"""One ``drasyl.Node`` driven by a line protocol, for tests in network namespaces.

Started as ``ip netns exec <ns> python3 tests/netns_node.py --identity FILE --super-peer URL
--addr IP [--port N]`` with the repository on ``PYTHONPATH``. It binds one UDP socket on
``IP`` (``udp_addrs=[IP]``) and keeps the node's default timers.

Commands (stdin, one per line; public keys as hex):

- ``send <pk> <tag> <count> <size>``: send ``count`` messages of ``size`` bytes
  (``"<tag> <seq> "`` padded with ``x``), in batches of :data:`BATCH` with a short pause
  between batches so that a burst does not overrun the receiver's socket buffer; then
  ``sent <tag> <count> route=<route before>/<route after>``.
- ``stream <pk> <tag> <count> <interval_ms> <size>``: the same, one message every
  ``interval_ms`` in the background; ``streamed <tag> <count>`` at the end.
- ``watch <pk>``: print a ``path`` line now and at every route change of that peer
  (``Node.wait_path``).
- ``status <pk>``: print a ``status`` line: route, tx short id, best path, every path.

Output (stdout, one line each; ``at=`` is ``time.monotonic()``, which is the same clock in
every network namespace):

- ``ready sp_rtt_ms=<ms> port=<udp port> at=<t>``: a super peer answered (registered).
- ``unite <pk> endpoints=<ip:port,...> from=<sp ip:port> at=<t>``: a UNITE arrived.
- ``recv <sender pk> <tag> <seq> <len> <kind> <remote ip:port> at=<t>``: a message, with how
  it arrived: ``short`` (short-header APP), ``direct`` (long-header APP, hop count 0),
  ``relayed`` (long-header APP via a super peer, hop count >= 1) or ``tcp``.
- ``path <pk> <route> rtt_ms=<ms|none> remote=<ip:port|none> tx_short_id=<hex|none> at=<t>``.
- ``status <pk> route=<route> tx_short_id=<hex|none> best=<ip:port|none> paths=<...>``.
- ``error <text>`` for a command that failed.

Observation only: the received datagrams are classified by wrapping the core's
``receive_datagram`` (same arguments, same effect). Exits at end of stdin or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections import deque

from drasyl.env import log_level
from drasyl.errors import DrasylError
from drasyl.identity import Identity
from drasyl.messages import (
    APP,
    MAGIC_BYTES,
    SHORT_ID_LEN,
    UNITE,
    Unite,
    decode_endpoints,
    open_body,
    parse_long_header,
)
from drasyl.node import Node
from drasyl.node.__main__ import stdin_lines
from drasyl.node.events import DIRECT, RELAYED, TCP_PATH

BATCH = 20  # messages per send_many call
BATCH_PAUSE_S = 0.002  # pacing between batches (a burst of 200 KB can overrun a socket buffer)
WATCH_TIMEOUT_S = 24 * 3600.0


def say(text: str) -> None:
    print(text, flush=True)


def fmt_addr(addr) -> str:
    return "none" if addr is None else f"{addr[0]}:{addr[1]}"


def payloads(tag: str, start: int, count: int, size: int) -> list[bytes]:
    out = []
    for seq in range(start, start + count):
        head = f"{tag} {seq} ".encode()
        out.append(head + b"x" * max(0, size - len(head)))
    return out


class Driver:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.core = node.core
        self.vias: deque[tuple[str, object]] = deque()  # how each inbox entry arrived, in order
        self.ready = False
        self.tasks: set[asyncio.Task] = set()
        self._observe()

    # --- observation ----------------------------------------------------------------------

    def _observe(self) -> None:
        core = self.core
        receive_datagram = core.receive_datagram
        receive_tcp = core.receive_tcp

        def observed_datagram(data, local, remote, now):
            kind = self._classify(data, remote)
            before = len(core.inbox)
            result = receive_datagram(data, local, remote, now)
            if len(core.inbox) > before:
                self.vias.extend([(kind, remote)] * (len(core.inbox) - before))
            self._check_ready()
            return result

        def observed_tcp(public_key, data, now):
            before = len(core.inbox)
            result = receive_tcp(public_key, data, now)
            if len(core.inbox) > before:
                self.vias.extend([("tcp", None)] * (len(core.inbox) - before))
            self._check_ready()
            return result

        core.receive_datagram = observed_datagram
        core.receive_tcp = observed_tcp

    def _classify(self, data, remote) -> str:
        sid = bytes(data[:SHORT_ID_LEN])
        if sid != MAGIC_BYTES:
            return "short" if sid in self.core.short_ids else "unknown"
        try:
            header = parse_long_header(data)
        except DrasylError:
            return "malformed"
        sp = self.core.super_peers.get(header.sender)
        if sp is not None:
            if header.message_type == UNITE and header.recipient == self.core.public_key:
                try:
                    unite = Unite.parse(open_body(data, header, sp.rx))
                    endpoints = ",".join(fmt_addr(e) for e in decode_endpoints(unite.endpoints))
                    say(f"unite {unite.address.hex()} endpoints={endpoints} from={fmt_addr(remote)} "
                        f"at={time.monotonic():.6f}")
                except DrasylError as exc:
                    say(f"error unparsable UNITE: {exc}")
            return "super_peer"
        if header.message_type == APP:
            return "direct" if header.hop_count == 0 else "relayed"
        return "node_control"

    def _check_ready(self) -> None:
        if self.ready:
            return
        median = self.core.default.median()
        if median is not None:
            self.ready = True
            say(f"ready sp_rtt_ms={median / 1000:.3f} port={self.node.udp_port} at={time.monotonic():.6f}")

    async def print_received(self) -> None:
        while True:
            for sender, payload in await self.node.recv_batch():
                kind, remote = self.vias.popleft() if self.vias else ("?", None)
                parts = payload.split(b" ", 2)
                tag = parts[0].decode(errors="replace") if parts else "-"
                seq = parts[1].decode(errors="replace") if len(parts) > 1 else "-"
                say(f"recv {sender.hex()} {tag} {seq} {len(payload)} {kind} {fmt_addr(remote)} "
                    f"at={time.monotonic():.6f}")

    # --- commands -------------------------------------------------------------------------

    def route(self, pk: bytes) -> str:
        peer = self.core.peers.get(pk)
        return "none" if peer is None else peer.route

    def path_line(self, pk: bytes) -> str:
        peer = self.core.peers.get(pk)
        if peer is None:
            return f"path {pk.hex()} none rtt_ms=none remote=none tx_short_id=none at={time.monotonic():.6f}"
        best = peer.best
        rtt = f"{best.median / 1000:.3f}" if best is not None and best.median is not None else "none"
        sid = peer.tx_short_id.hex() if peer.tx_short_id is not None else "none"
        return (f"path {pk.hex()} {peer.route} rtt_ms={rtt} remote={fmt_addr(best.remote if best else None)} "
                f"tx_short_id={sid} at={time.monotonic():.6f}")

    def status_line(self, pk: bytes) -> str:
        peer = self.core.peers.get(pk)
        if peer is None:
            return f"status {pk.hex()} route=none tx_short_id=none best=none paths="
        paths = ",".join(
            f"{fmt_addr(p.local)}>{fmt_addr(p.remote)}"
            f"/rtt={'none' if p.median is None else f'{p.median / 1000:.3f}'}"
            f"/pending={'yes' if p.unanswered_since else 'no'}"
            for p in peer.paths.values())
        sid = peer.tx_short_id.hex() if peer.tx_short_id is not None else "none"
        return (f"status {pk.hex()} route={peer.route} tx_short_id={sid} "
                f"best={fmt_addr(peer.best.remote if peer.best else None)} paths={paths}")

    async def watch(self, pk: bytes) -> None:
        say(self.path_line(pk))
        while True:
            current = self.route(pk)
            waits = {asyncio.ensure_future(self.node.wait_path(pk, kind, WATCH_TIMEOUT_S))
                     for kind in (DIRECT, RELAYED, TCP_PATH) if kind != current}
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in waits:
                    fut.cancel()
            for fut in done:
                if not fut.cancelled():
                    fut.exception()  # retrieved; a closed node ends the watch below
            if self.route(pk) == current:
                return  # the node closed (or a waiter timed out after a day)
            say(self.path_line(pk))

    async def send(self, pk: bytes, tag: str, count: int, size: int, interval: float | None) -> None:
        before = self.route(pk)
        batch = 1 if interval is not None else BATCH
        for start in range(0, count, batch):
            self.node.send_many(pk, payloads(tag, start, min(batch, count - start), size))
            if start + batch < count:
                await asyncio.sleep(interval if interval is not None else BATCH_PAUSE_S)
        if interval is None:
            say(f"sent {tag} {count} route={before}/{self.route(pk)}")
        else:
            say(f"streamed {tag} {count} route={before}/{self.route(pk)}")

    def spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                say(f"error {t.exception()!r}")

        task.add_done_callback(done)

    async def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        cmd, args = words[0], words[1:]
        try:
            pk = bytes.fromhex(args[0]) if args else b""
            if cmd == "send" and len(args) == 4:
                await self.send(pk, args[1], int(args[2]), int(args[3]), None)
            elif cmd == "stream" and len(args) == 5:
                self.spawn(self.send(pk, args[1], int(args[2]), int(args[4]), int(args[3]) / 1000))
            elif cmd == "watch" and len(args) == 1:
                self.spawn(self.watch(pk))
            elif cmd == "status" and len(args) == 1:
                say(self.status_line(pk))
            else:
                say(f"error unknown command {line!r}")
        except (DrasylError, ValueError) as exc:
            say(f"error {line!r}: {exc}")


async def run(args: argparse.Namespace) -> int:
    identity = Identity.load(args.identity)
    node = await Node.start(identity, [args.super_peer], udp_port=args.port, udp_addrs=[args.addr])
    driver = Driver(node)
    say(f"I am {identity.public_key_hex}")
    driver._check_ready()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    driver.spawn(driver.print_received())
    lines = stdin_lines()

    async def commands() -> None:
        while (line := await lines.get()):
            await driver.command(line)

    reader = asyncio.ensure_future(commands())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for task in (reader, stopper, *driver.tasks):
        task.cancel()
    await node.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identity", required=True, help="identity file (Identity.save format)")
    parser.add_argument("--super-peer", required=True, help="super peer URL")
    parser.add_argument("--addr", required=True, help="local IP to bind the UDP socket to")
    parser.add_argument("--port", type=int, default=None, help="UDP port (default: derived from the key)")
    args = parser.parse_args()
    logging.basicConfig(level=log_level(os.environ, default=logging.WARNING), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
