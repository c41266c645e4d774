"""Sans-I/O: a super peer core that shares its registrations with other workers' cores.

With ``DRASYL_WORKERS`` > 1 (:mod:`.workers`) every worker process runs a
:class:`SharedCore`. The kernel steers a node's packets to one worker (``SO_REUSEPORT``
hashes its address), which *owns* the node: it checks the HELLOs and answers them. Every
other worker holds a copy of the registration, learned through :meth:`SharedCore.learn_remote`,
so it can relay APPs to that node from the shared UDP port and send it UNITEs.

A registration travels as a :data:`Record`: what :class:`~.core.Peer` holds but its counters,
with the session keys (deriving them again would cost every worker an X25519 per node; the
channel between workers is trusted, see :mod:`.workers`). The owner announces a registration
when it is new, moved to this worker, or its proto, source or endpoints changed, and refreshes
it every ``hello_timeout`` / 3 (at housekeeping ticks), so a copy's ``hello_time`` lags the
owner's by at most that plus one tick and copies expire with their owner's registration.
Announcements collect in :attr:`SharedCore.announcements`; the I/O layer sends and clears them.

Where this differs from one core: the newest ``hello_time`` wins when two workers claim a node
(its address moved to another worker); ``max_peers`` is checked by each owner against the
table it has, so racing workers may exceed it by the registrations in flight; each worker
rate-limits UNITEs for its own relays, so a pair whose APPs arrive at two workers can get a
UNITE pair from each; the peer counters of a node are split across workers (metrics sum
them).
"""

from __future__ import annotations

from ..messages import _without_port_zero
from ..transmit import Address
from .core import Peer, SuperPeerCore

#: (public key, rx key, tx key, hello_time µs, hello_stamp, proto, local, source, endpoints as sent)
Record = tuple[bytes, "bytes | None", "bytes | None", int, int, int, "Address | None", Address, bytes]
#: What a worker tells the one serving /metrics: (registrations it owns, :meth:`SharedCore.counters`,
#: core drops, I/O drops, STUN answers).
WorkerCounters = tuple[int, list[tuple], dict[str, int], dict[str, int], int]


class SharedCore(SuperPeerCore):
    """A :class:`SuperPeerCore` that announces its registrations and learns the others'."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: Registrations to send to the other workers; the I/O layer drains it.
        self.announcements: list[Record] = []
        self._owned: dict[bytes, int] = {}  # public key -> monotonic µs of its last announcement
        self._refresh_us = self._timeout_us // 3

    def _on_hello(self, data: bytes, flags: int, sender: bytes, pow_: int, mtype: int, proto: int, local,
                  remote, now: int) -> bool:
        peer = self.peers.get(sender)
        before = None if peer is None else (peer.proto, peer.src, peer.hello_endpoints)
        if not super()._on_hello(data, flags, sender, pow_, mtype, proto, local, remote, now):
            return False
        peer = self.peers[sender]
        if sender not in self._owned or before != (peer.proto, peer.src, peer.hello_endpoints):
            self._announce(peer, now)
        return True

    def _announce(self, peer: Peer, now: int) -> None:
        self._owned[peer.public_key] = now
        self.announcements.append((peer.public_key, peer.rx, peer.tx, peer.hello_time, peer.hello_stamp,
                                   peer.proto, peer.local, peer.src, peer.hello_endpoints))

    def handle_timer(self, now: int) -> None:
        """Housekeeping, then refresh the owned registrations not announced for a while."""
        if now < self._next_tick:
            return
        super().handle_timer(now)
        peers = self.peers
        owned = self._owned
        for pk in [pk for pk in owned if pk not in peers]:
            del owned[pk]
        refresh = self._refresh_us
        for pk in [pk for pk, at in owned.items() if now - at >= refresh]:
            self._announce(peers[pk], now)

    def learn_remote(self, records: list[Record], now: int) -> None:
        """Take registrations another worker owns; relay APPs that waited for them."""
        peers = self.peers
        for pk, rx, tx, hello_time, hello_stamp, proto, local, src, endpoints in records:
            peer = peers.get(pk)
            if peer is None:
                peer = peers[pk] = Peer(pk, rx, tx)
            elif hello_time < peer.hello_time:
                continue  # our registration is newer: the node moved here
            self._owned.pop(pk, None)
            peer.hello_time = hello_time
            peer.hello_stamp = max(peer.hello_stamp, hello_stamp)
            peer.proto = proto
            peer.local = local
            peer.src = src
            if endpoints != peer.hello_endpoints:
                peer.hello_endpoints = endpoints
                peer.endpoints = _without_port_zero(endpoints)
            if self._held:
                held = self._held.pop(pk, None)
                if held is not None:
                    self._release(held, now)

    def owned(self) -> int:
        """How many registrations this worker owns."""
        return len(self._owned)

    def counters(self) -> list[tuple]:
        """(hex public key, *:func:`peer_counters`) of the peers this worker counted anything for."""
        return [(pk.hex(), *peer_counters(p)) for pk, p in self.peers.items() if p.hello_rx or p.app_rx or p.app_tx]


def peer_counters(peer: Peer) -> tuple:
    """hello rx, ack tx, app rx, app tx, unite tx, ((dst hex, relayed bytes), ...)."""
    relayed = peer.relayed_bytes
    return (peer.hello_rx, peer.ack_tx, peer.app_rx, peer.app_tx, peer.unite_tx,
            tuple((dst.hex(), n) for dst, n in relayed.items()) if relayed else ())
