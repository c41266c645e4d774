"""One worker process of a super peer with ``DRASYL_WORKERS`` > 1 (see :mod:`.workers`).

:class:`WorkerServer` is a :class:`~.server.SuperPeerServer` that binds with ``SO_REUSEPORT``
and runs a :class:`~.shared.SharedCore`, plus the :class:`~.mesh.Mesh` to the other workers:

- after every batch it broadcasts the core's announcements, *before* it sends the batch's
  ACKs: a node that got its ACK is known to every worker as soon as they read their mesh;
- a relay or UNITE to a node registered over TCP at another worker is handed to that worker,
  which holds the connection (UDP goes out of our own socket on the shared port);
- worker 0 serves ``/metrics``: at each scrape it asks the others for their counters and adds
  them (waiting at most :data:`COUNTERS_TIMEOUT_S`), so a scrape shows every packet counted
  before it, as with one process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections import Counter
from typing import Any

from ..clock import monotonic_us, wall_offset_us
from ..identity import Identity
from ..transmit import TCP, Address
from .config import DaemonConfig
from .mesh import Mesh
from .server import SuperPeerServer
from .shared import Record, SharedCore, WorkerCounters

log = logging.getLogger(__name__)

#: How long a scrape waits for the other workers' counters.
COUNTERS_TIMEOUT_S = 2.0

# message kinds on the mesh
LEARN = "learn"  # (LEARN, [Record, ...]): registrations the sender owns
RELAY = "relay"  # (RELAY, [(frame, TCP address), ...]): send these on your TCP connections
ASK = "ask"  # (ASK, request id): send me your counters
COUNTERS = "counters"  # (COUNTERS, request id, WorkerCounters)


class WorkerServer(SuperPeerServer):
    """Worker ``index``'s sockets and core; ``links`` are its mesh sockets by peer index."""

    core_class = SharedCore
    reuse_port = True
    core: SharedCore

    def __init__(self, identity: Identity, config: DaemonConfig, index: int, links: dict[int, socket.socket]) -> None:
        super().__init__(identity, config)
        self.index = index
        self.mesh = Mesh(index, links, self._on_message)
        self._tcp_owners: dict[Address, tuple[int, bytes]] = {}  # TCP address -> (worker, public key)
        self._handoffs: dict[int, list[tuple[bytes, Address]]] = {}
        self._requests = itertools.count()
        self._answers: dict[int, tuple[asyncio.Future[None], list[tuple[int, WorkerCounters]]]] = {}

    async def start(self) -> None:
        await self.mesh.open()
        await super().start()

    async def close(self) -> None:
        await super().close()
        self.mesh.close()

    def io_drops(self) -> Counter[str]:
        drops = super().io_drops()
        drops["worker_backlog_full"] += self.mesh.dropped
        return drops

    # --- the mesh ------------------------------------------------------------------------

    def _on_message(self, sender: int, message: tuple) -> None:
        kind = message[0]
        try:
            if kind == LEARN:
                self._learn(sender, message[1])
            elif kind == RELAY:
                for data, remote in message[1]:
                    super()._send_tcp(data, remote)
            elif kind == ASK:
                self.mesh.send(sender, (COUNTERS, message[1], self._counters()))
            elif kind == COUNTERS:
                self._answer(sender, message[1], message[2])
        except Exception:
            self._faults.report(f"processing a {kind} message from worker {sender}")

    def _learn(self, sender: int, records: list[Record]) -> None:
        sockets = self._udp
        owners = self._tcp_owners
        for i, record in enumerate(records):
            if record[5] == TCP:
                owners[record[7]] = (sender, record[0])
            else:  # our socket's own address tuple: the send path compares those by identity
                sock = sockets.get(record[6])  # type: ignore[arg-type]
                if sock is not None:
                    records[i] = (*record[:6], sock.local, *record[7:])
        core = self.core
        core.wall_offset = wall_offset_us()
        core.learn_remote(records, monotonic_us())
        self._send_outbox()

    def _counters(self) -> WorkerCounters:
        core = self.core
        return core.owned(), core.counters(), dict(core.drops), dict(self.io_drops()), core.stun_answered

    def _answer(self, sender: int, request: int, counters: WorkerCounters) -> None:
        waiting = self._answers.get(request)
        if waiting is None:
            return  # too late: the scrape went on without it
        done, answers = waiting
        answers.append((sender, counters))
        if len(answers) == len(self.mesh.peers) and not done.done():
            done.set_result(None)

    async def _metrics_snapshot(self) -> Any:
        request = next(self._requests)
        done = asyncio.get_running_loop().create_future()
        answers: list[tuple[int, WorkerCounters]] = []
        self._answers[request] = (done, answers)
        try:
            self.mesh.broadcast((ASK, request))
            await asyncio.wait_for(done, COUNTERS_TIMEOUT_S)
        except TimeoutError:  # the scrape shows what arrived (a scrape at most every few s: no flood)
            missing = sorted(set(self.mesh.peers) - {sender for sender, _ in answers})
            log.warning("/metrics without the counters of worker(s) %s: no answer within %.0f s",
                        missing, COUNTERS_TIMEOUT_S)
        finally:
            del self._answers[request]
        owned = {self.index: self.core.owned(), **{sender: counters[0] for sender, counters in answers}}
        return self.metrics.snapshot([counters for _, counters in answers], owned)  # type: ignore[union-attr]

    # --- output ----------------------------------------------------------------------------

    def _send_outbox(self) -> None:
        core = self.core
        if core.announcements:
            self.mesh.broadcast((LEARN, core.announcements))
            core.announcements = []
        super()._send_outbox()
        if self._handoffs:
            for owner, frames in self._handoffs.items():
                self.mesh.send(owner, (RELAY, frames))
            self._handoffs = {}

    def _send_tcp(self, data: bytes | bytearray, remote: Address) -> None:
        owner = None if remote in self._connections else self._tcp_owners.get(remote)
        if owner is None:
            super()._send_tcp(data, remote)
        else:
            self._handoffs.setdefault(owner[0], []).append((bytes(data), remote))

    def _check_connections(self) -> None:
        """Also forget TCP owners of registrations that expired or moved."""
        super()._check_connections()
        peers = self.core.peers
        self._tcp_owners = {
            address: owner for address, owner in self._tcp_owners.items()
            if (peer := peers.get(owner[1])) is not None and peer.proto == TCP and peer.src == address
        }
