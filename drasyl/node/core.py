"""Sans-I/O drasyl node (spec §6.2, §7): registration, relaying, hole punching, TCP fallback.

Input: :meth:`NodeCore.receive_datagram`, :meth:`receive_tcp`, :meth:`send`,
:meth:`handle_timer`, and the adapter's reports (local addresses, resolved super peer
addresses, TCP connected/closed), each with ``now`` in monotonic µs; :attr:`NodeCore.wall_offset`
(wall − monotonic µs, kept current by the adapter) turns it into wall time for the wire only
(see :mod:`drasyl.clock`). Output:
:attr:`outbox` (transmit tuples, see :mod:`drasyl.transmit`), :attr:`inbox` (received
``(sender, payload)``) and :attr:`events`. No sockets, clocks, DNS or threads inside.

Same bytes on the wire as drasyl-rs; behaviour improved where drasyl-rs loses data or time:

- a direct path is used as soon as its first ACK arrives (drasyl-rs waits for the next tick);
- a HELLO from a peer on a path where our own HELLO is still unanswered is answered with our
  HELLO again: behind NATs the first of the two HELLOs a UNITE triggers is dropped by the
  other side's NAT, and drasyl-rs retries only at the next tick (up to 5 s later);
- TCP is opened when a super peer has not answered UDP for one HELLO interval at start-up
  (``hello_timeout`` once UDP has worked), UDP keeps being probed, and the first UDP ACK
  moves traffic back (drasyl-rs needs ~30 s and loses what is sent meanwhile);
- relayed APPs sent before any super peer has answered wait in a bounded queue instead of
  being sprayed over unconfirmed paths;
- a path whose HELLOs go unanswered for two intervals stops carrying traffic until it
  answers again, instead of black-holing it until ``hello_timeout``: a direct path hands
  over to the relay, a super peer's UDP path to another super peer (or to the queue until
  the TCP fallback is up);
- packets from senders with invalid PoW, and unarmed packets when arming is on, are dropped
  (drasyl-rs processes the first one and accepts unarmed packets).

Built to run for months among hostile peers:

- timers, expiry and RTTs use the monotonic clock; HELLO timestamps are wall time but strictly
  increasing (a wall clock stepped back never makes them decrease), and received HELLOs are
  aged against wall time;
- an ACK counts only if it echoes one of the last HELLOs sent on that path
  (:class:`~drasyl.path.Path`); others are dropped as ``ack_unmatched``. It echoes our own
  timestamp, so its age and RTT are measured on the monotonic clock from when that HELLO
  left (a wall step in between changes neither);
- a replayed node HELLO gets no more than it brought: from a new source it is answered (and
  a path stored) only if it is newer than the last accepted HELLO of that peer, on a known
  path it gets one ACK, and an unconfirmed path gets at most one extra HELLO per interval;
  an older HELLO never installs its short id (one that differs sends us back to long headers);
- a node peer has at most :data:`MAX_PATHS_PER_PEER` paths: a UNITE tries that many, and a
  fresh HELLO from a new source replaces the unconfirmed path tried longest ago;
- the TCP connection to a super peer is closed only for what the super peer is to blame
  for (a frame that is not a valid long header for us, a non-APP relayed, a bad ACK/UNITE);
  a relayed APP the sending node spoiled is dropped and counted;
- a TCP path unanswered for two intervals is closed and reopened, like a failing UDP path;
- at each tick a super peer that left its previous HELLO unanswered for an interval stops
  relaying if another one answered (failover 5–10 s after it dies, not 10–15 s).
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass
from random import Random
from typing import Iterable

from ..crypto import ARM_OVERHEAD, arm_into, session_keys
from ..errors import CryptoError, DrasylError
from ..identity import DEFAULT_POW_DIFFICULTY, Identity, pow_is_valid
from ..messages import (
    ACK,
    APP,
    HELLO,
    HELLO_MAX_ENDPOINTS,
    AD_START,
    LONG_HEADER_LEN,
    MAGIC_BYTES,
    MAX_ARMED_LONG_APP,
    MTU,
    NO_SHORT_ID,
    SHORT_ID_LEN,
    UNITE,
    Ack,
    HelloNodePeer,
    HelloSuperPeer,
    Unite,
    decode_endpoints,
    encode_endpoints,
    encode_long_header,
    encode_message,
    encode_short,
    open_body,
    open_short,
    parse_long_header,
)
from ..path import Path, best_path
from ..transmit import TCP, UDP, Address, Transmit
from ..urls import SuperPeerUrl, canonical_ip
from . import probing
from .events import (DIRECT, RELAYED, TCP_PATH, CloseProbeSockets, CloseTcp, OpenProbeSockets, OpenTcp,
                     PathChanged, PeerInfo)
from .probing import HARD, MappingObserver, ProbeSession, is_lan


#: Paths per node peer. A UNITE names up to 15 endpoints (spec §6.2.5), tried from every local
#: socket of the same family; 16 covers a dual-stack host with a few LAN addresses on both
#: sides and keeps a peer that forges fresh sources from growing our memory.
MAX_PATHS_PER_PEER = 16

#: The largest APP payload :meth:`NodeCore.send_batch` takes: one armed long-header datagram
#: (1472 − 79 − 48), whatever the route, so a TUN with this MTU never sees a route-dependent
#: limit. It is drasyl-rs' agent MTU. Unarmed nodes (no 48-byte overhead) take up to 1393.
MAX_PAYLOAD = MAX_ARMED_LONG_APP


class PayloadTooLarge(DrasylError):
    """An APP payload does not fit into one datagram of at most 1472 bytes."""


@dataclass(frozen=True)
class NodeConfig:
    """Node settings; defaults are drasyl-rs' (hello_max_age as its example node and agent)."""

    arm_messages: bool = True
    max_peers: int = 8192  # 0 = unlimited
    min_pow_difficulty: int = DEFAULT_POW_DIFFICULTY
    hello_timeout_ms: int = 30_000
    hello_max_age_ms: int = 60_000
    housekeeping_interval_ms: int = 5_000
    direct_link_timeout_ms: int = 60_000
    process_unites: bool = True
    #: Learn our NAT's mapping with STUN at the super peers and probe through one symmetric NAT
    #: (:mod:`drasyl.node.probing`); off: exactly drasyl-rs' behaviour on the wire.
    probing: bool = True
    enforce_tcp: bool = False
    relay_queue_limit: int = 1024  # APPs held while no super peer has answered yet


def _check_size(payload: bytes, limit: int) -> None:
    if len(payload) > limit:
        raise PayloadTooLarge(f"APP payload of {len(payload)} bytes is too large (max {limit})")


def _seconds(now: int | None, then: int) -> float | None:
    """Seconds from monotonic µs ``then`` (0: never) to ``now``; None without either."""
    return round((now - then) / 1e6, 3) if now is not None and then else None


def _family(addr: Address) -> bool:
    """True for IPv6."""
    return ":" in addr[0]


class SuperPeer:
    """A configured super peer: its UDP paths, TCP state and keys."""

    __slots__ = ("url", "public_key", "rx", "tx", "addresses", "paths", "best_udp",
                 "udp_answered", "tcp", "tcp_path")

    def __init__(self, url: SuperPeerUrl, rx: bytes | None, tx: bytes | None) -> None:
        self.url = url
        self.public_key = url.public_key
        self.rx = rx
        self.tx = tx
        self.addresses: list[Address] = []
        self.paths: dict[tuple[Address, Address], Path] = {}
        self.best_udp: Path | None = None
        self.udp_answered = False  # has UDP ever worked? decides the TCP fallback delay
        self.tcp: str | None = None  # None, "connecting" or "up"
        self.tcp_path = Path(None, ())

    def forget_tcp(self) -> None:
        self.tcp = None
        self.tcp_path = Path(None, ())

    def median(self) -> int | None:
        if self.tcp == "up":
            return self.tcp_path.median
        return self.best_udp.median if self.best_udp is not None else None


class NodePeer:
    """Another node: keys, short ids, direct paths and traffic times."""

    __slots__ = ("public_key", "rx", "tx", "pow_ok", "rx_short_id", "tx_short_id", "hello_rx", "hello_stamp",
                 "paths", "best", "created", "app_tx", "app_rx", "route", "app_header", "held",
                 "bytes_in", "bytes_out", "unite_rx", "unite_endpoints", "probe_not_before", "probe_tries")

    def __init__(self, public_key: bytes, rx: bytes | None, tx: bytes | None, short_id: bytes, now: int) -> None:
        self.public_key = public_key
        self.rx = rx
        self.tx = tx
        self.pow_ok: bool | None = None
        self.rx_short_id = short_id
        self.tx_short_id: bytes | None = None
        self.hello_rx = 0  # when its last HELLO arrived (which told us tx_short_id)
        self.hello_stamp = 0  # wire timestamp of its newest HELLO accepted
        self.paths: dict[tuple[Address, Address], Path] = {}
        self.best: Path | None = None
        self.created = now
        self.app_tx = 0
        self.app_rx = 0
        self.route = RELAYED  # last reported PathChanged kind
        self.app_header = b""  # the long header of our APPs to it, built once
        self.held = 0  # send handles the application holds: the entry is kept while > 0
        self.bytes_in = 0  # APP payload bytes received from / sent to it
        self.bytes_out = 0
        self.unite_rx = 0  # when the last UNITE about it arrived: a hole punch started (0: never)
        self.unite_endpoints: list[Address] = []  # of the last UNITE: self-reported, then observed
        self.probe_not_before = 0  # back-off after a failed probing session
        self.probe_tries = 0


class NodeCore:
    """The node's protocol state. Feed it input, then drain outbox, inbox and events."""

    def __init__(self, identity: Identity, super_peers: list[SuperPeerUrl],
                 config: NodeConfig | None = None, now: int = 0, wall_offset: int = 0) -> None:
        if not super_peers:
            raise DrasylError("at least one super peer is required")
        if len({u.network_id for u in super_peers}) > 1:
            raise DrasylError("all super peers must have the same networkId")
        self.identity = identity
        self.wall_offset = wall_offset  # wall − monotonic µs: the adapter keeps it current
        self._stamp = 0  # the last HELLO timestamp sent
        self.config = cfg = config or NodeConfig()
        self.public_key = identity.public_key
        self.network_id = super_peers[0].network_id
        self.super_peers: dict[bytes, SuperPeer] = {}
        for url in super_peers:
            keys = session_keys(identity, url.public_key) if cfg.arm_messages else (None, None)
            self.super_peers[url.public_key] = SuperPeer(url, *keys)
        self.default: SuperPeer = next(iter(self.super_peers.values()))
        self.peers: dict[bytes, NodePeer] = {}
        self.short_ids: dict[bytes, NodePeer] = {}
        self.locals: list[Address] = []
        self.outbox: list[Transmit] = []
        #: Received APPs as ``(sender, payload)``; a payload is a fresh buffer the receiver owns.
        self.inbox: list[tuple[bytes, bytes | bytearray]] = []
        self.events: deque = deque()
        self.drops: Counter[str] = Counter()
        self._relay_queue: deque[tuple[NodePeer, bytes]] = deque()
        self._hello_endpoints = b""
        #: Endpoints announced before the local addresses (a router's port mapping): the adapter's
        self.advertised: list[Address] = []
        self.mapping = MappingObserver()
        self.probe: ProbeSession | None = None
        self.probe_locals: set[Address] = set()  # the adapter's extra probing sockets
        self.probe_stats: Counter[str] = Counter()
        self._probe_wake = now
        self._rng = Random(os.urandom(16))
        self._interval = cfg.housekeeping_interval_ms * 1000
        self._timeout = cfg.hello_timeout_ms * 1000
        self._max_age = cfg.hello_max_age_ms * 1000
        self._direct_timeout = cfg.direct_link_timeout_ms * 1000
        self._path_failing = 2 * self._interval
        self._next_tick = now
        self._arm = cfg.arm_messages
        overhead = ARM_OVERHEAD if self._arm else 0  # largest APP payloads per datagram:
        self._max_short = MTU - SHORT_ID_LEN - overhead  # 1420 armed
        self._max_long = MTU - LONG_HEADER_LEN - overhead  # 1345 armed

    @property
    def send_limit(self) -> int:
        """The largest payload :meth:`send_batch` takes (1345 armed); larger ones are dropped."""
        return self._max_long

    # --- adapter reports ------------------------------------------------------------------

    def set_local_addresses(self, locals_: list[Address]) -> None:
        """The bound UDP sockets' addresses; paths via vanished sockets are dropped."""
        self.locals = [(canonical_ip(a[0]), a[1]) for a in locals_]
        self._encode_hello_endpoints()
        for sp in self.super_peers.values():
            self._sync_super_peer_paths(sp)
        alive = set(self.locals) | self.probe_locals
        for peer in self.peers.values():
            for key in [k for k in peer.paths if k[0] not in alive]:
                del peer.paths[key]
            peer.best = best_path(peer.paths.values(), self._path_failing, 0)

    def set_advertised(self, endpoints: list[Address], now: int) -> None:
        """Public endpoints to announce before the local addresses in HELLOs to super peers
        (a port mapping on the router): the super peers pass them on in UNITEs, so peers try
        them too (drasyl-rs nodes included). A change is announced at once, not at the next tick."""
        advertised = [(canonical_ip(a[0]), a[1]) for a in endpoints]
        if advertised == self.advertised:
            return
        self.advertised = advertised
        self._encode_hello_endpoints()
        for sp in self.super_peers.values():
            if sp.paths:
                self._udp_hellos(sp, now)

    def _encode_hello_endpoints(self) -> None:
        ours = list(dict.fromkeys(self.advertised + self.locals))
        self._hello_endpoints = encode_endpoints(ours[:HELLO_MAX_ENDPOINTS])

    def set_super_peer_addresses(self, public_key: bytes, addresses: list[Address]) -> None:
        """Resolved UDP addresses of a super peer (kept as they are when resolution fails)."""
        sp = self.super_peers[public_key]
        sp.addresses = [(canonical_ip(a[0]), a[1]) for a in addresses]
        self._sync_super_peer_paths(sp)

    def _sync_super_peer_paths(self, sp: SuperPeer) -> None:
        """One UDP path per local socket to the first super peer address of its family."""
        wanted: set[tuple[Address, Address]] = set()
        for local in self.locals:
            remote = next((a for a in sp.addresses if _family(a) == _family(local)), None)
            if remote is not None:
                wanted.add((local, remote))
        for key in [k for k in sp.paths if k not in wanted]:
            del sp.paths[key]
        for key in wanted:
            if key not in sp.paths:
                sp.paths[key] = Path(*key)
        if sp.best_udp is not None and (sp.best_udp.local, sp.best_udp.remote) not in sp.paths:
            sp.best_udp = best_path(sp.paths.values(), self._path_failing, 0)

    def set_super_peers(self, urls: list[SuperPeerUrl], now: int) -> None:
        """Replace the configured super peers (a reload): unchanged ones keep their paths,
        RTTs and TCP connection; removed or changed ones lose theirs. The network id is every
        header's, so it cannot change while running (:class:`DrasylError`: restart instead).
        Registration with the new set starts at the next :meth:`handle_timer` (due at once);
        the adapter resolves the new addresses.
        """
        if not urls:
            raise DrasylError("at least one super peer is required")
        if {u.network_id for u in urls} != {self.network_id}:
            raise DrasylError(f"super peers must keep networkId {self.network_id}; restart to change it")
        if any(u.public_key in self.peers for u in urls):
            raise DrasylError("a node peer cannot become a super peer while running; restart instead")
        kept: dict[bytes, SuperPeer] = {}
        for url in urls:
            sp = self.super_peers.get(url.public_key)
            if sp is None or sp.url != url:
                keys = session_keys(self.identity, url.public_key) if self._arm else (None, None)
                sp = SuperPeer(url, *keys)
                self._sync_super_peer_paths(sp)
            kept[url.public_key] = sp
        for pk, sp in self.super_peers.items():
            if kept.get(pk) is not sp and sp.tcp is not None:
                self._close_tcp(sp)
        self.super_peers = kept
        if kept.get(self.default.public_key) is not self.default:
            self.default = next(iter(kept.values()))
            self._choose_default()
        self._next_tick = now
        self._update_routes(now)

    def tcp_connected(self, public_key: bytes, now: int) -> None:
        sp = self.super_peers[public_key]
        sp.tcp = "up"
        stamp = self._next_stamp(now)
        self.outbox.append((self._hello_for(sp, stamp), TCP, None, public_key))
        sp.tcp_path.hello_sent(now, stamp)
        self._update_routes(now)

    def tcp_closed(self, public_key: bytes, now: int) -> None:
        self.super_peers[public_key].forget_tcp()
        self._update_routes(now)

    def _close_tcp(self, sp: SuperPeer) -> None:
        """Ask the adapter to close the connection; routes are the caller's business."""
        sp.forget_tcp()
        self.events.append(CloseTcp(sp.public_key))

    # --- sending --------------------------------------------------------------------------

    def send(self, recipient: bytes, payload: bytes, now: int) -> None:
        """Send one APP: direct if a path is confirmed, else relayed via the default super peer.

        A refused payload (too large, bad recipient) raises and leaves no state behind.
        """
        peer = self.peers.get(recipient)
        if peer is None:
            _check_size(payload, self._max_long)
            peer = self._add_peer(recipient, now)
        elif peer.best is not None and peer.tx_short_id is not None:
            _check_size(payload, self._max_short)  # a short header leaves room for more
        else:
            _check_size(payload, self._max_long)
        self._send_app(peer, payload, now)

    def handle(self, public_key: bytes, now: int, keys: tuple[bytes, bytes] | None = None) -> NodePeer:
        """A send handle for :meth:`send_batch`: the peer's entry, kept while a handle is held.

        Like drasyl-rs' ``SendHandle``: an application that means to talk to a peer (the agent,
        for every peer its policies allow) keeps the entry, its short ids and keys alive even
        while no traffic flows. Raises :class:`DrasylError` for a key we cannot talk to.
        ``keys``: the peer's :func:`~drasyl.crypto.session_keys`, if the caller computed them
        already (the agent does, for thousands of peers, off its event loop).
        """
        peer = self.peers.get(public_key)
        if peer is None:
            peer = self._add_peer(public_key, now, keys)
        peer.held += 1
        return peer

    def release(self, peer: NodePeer) -> None:
        """Give a handle back; the entry then expires like any other."""
        if peer.held > 0:
            peer.held -= 1

    def send_batch(self, items: Iterable[tuple[NodePeer, bytes | bytearray | memoryview]], now: int) -> int:
        """Send APPs to held peers; payloads of up to :data:`MAX_PAYLOAD` bytes (1393 unarmed,
        drasyl-rs' unarmed agent MTU).

        The data path's seam: no exception per packet (an oversize payload is dropped and
        counted, the number dropped is returned), the long header is prebuilt per peer, and
        payloads may be views into a reused read buffer (they are encrypted into a new datagram
        before this returns).
        """
        dropped = 0
        send, limit = self._send_app, self._max_long
        for peer, payload in items:
            if len(payload) > limit:
                dropped += 1
            else:
                send(peer, payload, now)
        if dropped:
            self.drops["payload_too_large"] += dropped
        return dropped

    def _send_app(self, peer: NodePeer, payload, now: int) -> None:
        peer.app_tx = now
        peer.bytes_out += len(payload)
        path = peer.best
        if path is None:
            self._relay(peer, self._app(peer, payload))
            return
        sid = peer.tx_short_id
        data = encode_short(sid, payload, peer.tx) if sid is not None else self._app(peer, payload)
        self.outbox.append((data, UDP, path.local, path.remote))

    def _app(self, peer: NodePeer, payload) -> bytes | bytearray:
        """A long-header APP on the peer's prebuilt header (the caller checked the size)."""
        header = peer.app_header
        if peer.tx is None:
            return header + payload
        out = bytearray(LONG_HEADER_LEN + ARM_OVERHEAD + len(payload))
        out[:LONG_HEADER_LEN] = header
        arm_into(out, LONG_HEADER_LEN, payload, peer.tx, AD_START)
        return out

    def _relay(self, peer: NodePeer, data: bytes) -> None:
        sp = self.default
        if sp.tcp == "up" and sp.tcp_path.median is not None:
            self.outbox.append((data, TCP, None, sp.public_key))
        elif sp.best_udp is not None:
            self.outbox.append((data, UDP, sp.best_udp.local, sp.best_udp.remote))
        else:
            queue = self._relay_queue
            if len(queue) >= self.config.relay_queue_limit:
                queue.popleft()
                self.drops["relay_queue_full"] += 1
            queue.append((peer, data))

    def _flush_relay_queue(self) -> None:
        queue, self._relay_queue = self._relay_queue, deque()
        for peer, data in queue:
            if peer.best is not None and peer.best.median is not None:
                # a direct path came up meanwhile; the long-header APP works there too
                self.outbox.append((data, UDP, peer.best.local, peer.best.remote))
            else:
                self._relay(peer, data)

    # --- receiving ------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, local: Address, remote: Address, now: int) -> None:
        """One UDP datagram that arrived on the socket bound to ``local`` from ``remote``."""
        sid = data[:SHORT_ID_LEN]
        peer = self.short_ids.get(sid if type(sid) is bytes else bytes(sid))
        if peer is not None:
            try:
                payload = open_short(data, peer.rx)
            except DrasylError:
                self.drops["bad_short_app"] += 1
                return
            peer.app_rx = now
            peer.bytes_in += len(payload)
            self.inbox.append((peer.public_key, payload))
            return
        if self.mapping.pending and data[:1] == b"\x01" and self.mapping.on_datagram(data, local, tuple(remote[:2])):
            return  # a STUN answer (0x0101): a drasyl datagram starts with 0x1e
        self._receive_long(data, UDP, local, remote, now)

    def receive_tcp(self, public_key: bytes, data: bytes, now: int) -> bool:
        """One frame from the TCP connection to a super peer.

        False only when the super peer itself misbehaved (close the connection): what another
        node spoiled in an APP the super peer relayed is dropped and counted, so no node can
        cut another one's TCP fallback.
        """
        return self._receive_long(data, TCP, None, public_key, now)

    def _receive_long(self, data: bytes, proto: int, local: Address | None, remote, now: int) -> bool:
        """A long-header message; False if the super peer that sent/relayed it is to blame."""
        try:
            header = parse_long_header(data)
        except DrasylError:
            self.drops["malformed"] += 1
            return False
        if header.network_id != self.network_id or header.recipient != self.public_key:
            self.drops["not_for_us"] += 1
            return False
        sp = self.super_peers.get(header.sender)
        if sp is not None:
            if self._arm and not header.armed:
                self.drops["unarmed"] += 1
                return False
            try:
                return self._from_super_peer(sp, data, header, proto, local, remote, now)
            except DrasylError:
                self.drops["malformed"] += 1
                return False
        if proto == TCP:
            if header.message_type != APP:  # super peers relay APPs only (spec §6.1.4)
                self.drops["unexpected"] += 1
                return False
            local = remote = None
        if self._arm and not header.armed:
            self.drops["unarmed"] += 1
            return True
        try:
            self._from_node(data, header, local, remote, now)
        except DrasylError:
            self.drops["malformed"] += 1
        return True

    def _from_super_peer(self, sp: SuperPeer, data, header, proto, local, remote, now: int) -> bool:
        mtype = header.message_type
        if mtype == ACK:
            ack = Ack.parse(open_body(data, header, sp.rx))
            self._on_super_peer_ack(sp, ack.time, proto, local, remote, now)
            return True
        if mtype == UNITE:
            self._on_unite(Unite.parse(open_body(data, header, sp.rx)), now)
            return True
        self.drops["unexpected"] += 1
        return False

    def _on_super_peer_ack(self, sp: SuperPeer, stamp: int, proto, local, remote, now: int) -> None:
        if proto == UDP:
            key = (local, tuple(remote[:2]))
            path = sp.paths.get(key)
        else:
            path = sp.tcp_path if sp.tcp == "up" else None
        sent = self._matched_ack(path, stamp, now)
        if sent is None:
            return
        path.ack_received(now, sent)
        if proto == UDP:
            sp.udp_answered = True
            sp.best_udp = best_path(sp.paths.values(), self._path_failing, now)
            if sp.tcp is not None and not self.config.enforce_tcp:
                self._close_tcp(sp)
                self._update_routes(now)
                # the HELLO sent over TCP alongside the answered UDP one may reach the SP
                # last and leave us registered on the connection we now close: register
                # again over the UDP path that just answered
                stamp = self._next_stamp(now)
                self.outbox.append((self._hello_for(sp, stamp), UDP, local, key[1]))
                path.hello_sent(now, stamp)
        if self.default.median() is None:
            self._choose_default()
        if self._relay_queue:
            self._flush_relay_queue()

    def _choose_default(self, now: int | None = None) -> None:
        """The relaying super peer: lowest median RTT among those with samples.

        At a tick (``now`` given), one whose previous HELLO is still unanswered after a whole
        interval loses to any that answered: a dead super peer stops relaying one interval
        after its last answer (5–10 s) instead of after two (10–15 s, when its path counts as
        failing). A single lost HELLO just moves relaying for one interval.
        """
        best = None
        for sp in self.super_peers.values():
            m = sp.median()
            if m is None:
                continue
            rank = (now is not None and self._silent(sp, now), m)
            if best is None or rank < best[0]:
                best = (rank, sp)
        if best is not None:
            self.default = best[1]

    def _silent(self, sp: SuperPeer, now: int) -> bool:
        """Its relaying path (TCP when up, else its best UDP path) left a HELLO unanswered
        for at least one interval."""
        path = sp.tcp_path if sp.tcp == "up" else sp.best_udp
        return path is None or path.unanswered_for(now) >= self._interval

    def _matched_ack(self, path: Path | None, stamp: int, now: int) -> int | None:
        """Monotonic send time of the HELLO an ACK echoes, or None (counted) if it echoes none."""
        sent = path.sent_at(stamp) if path is not None else None
        if sent is None:
            self.drops["ack_unmatched"] += 1
        elif now - sent > self._max_age:  # our own stamp: aged on the clock that cannot step
            self.drops["ack_too_old"] += 1
            sent = None
        return sent

    def _on_unite(self, unite: Unite, now: int) -> None:
        if not self.config.process_unites:
            return
        peer = self.peers.get(unite.address)
        if peer is None:
            return
        peer.unite_rx = now
        endpoints = peer.unite_endpoints = decode_endpoints(unite.endpoints)
        if self.config.probing and self.probe is None and self.nat_role() is not None:
            self._probe_wake = min(self._probe_wake, now + probing.START_AFTER_US)
        known = {p.remote for p in peer.paths.values()}
        observed = endpoints[-1] if endpoints else None  # the super peer appends what it saw
        for endpoint in endpoints:
            if endpoint in known:
                continue
            known.add(endpoint)
            if is_lan(endpoint[0]):
                origin = "lan"
            else:
                origin = "punch" if endpoint == observed else "mapping"
            for local in self.locals:
                if _family(local) == _family(endpoint):
                    if len(peer.paths) >= MAX_PATHS_PER_PEER:
                        self.drops["path_limit"] += 1
                        continue
                    self._punch(peer, local, endpoint, now, origin)

    def _punch(self, peer: NodePeer, local: Address, remote: Address, now: int, origin: str = "punch") -> None:
        path = peer.paths[(local, remote)] = Path(local, remote, origin)
        self._node_hello(peer, path, now)

    def _make_room(self, peer: NodePeer) -> bool:
        """Room for one more path: forget the unconfirmed path tried longest ago if full."""
        paths = peer.paths
        if len(paths) < MAX_PATHS_PER_PEER:
            return True
        self.drops["path_limit"] += 1
        oldest = min((p for p in paths.values() if p.median is None),
                     key=lambda p: p.unanswered_since, default=None)
        if oldest is None:
            return False  # all confirmed: they stay
        del paths[(oldest.local, oldest.remote)]
        return True

    def _next_stamp(self, now: int) -> int:
        """Wall µs for a HELLO, above every stamp sent before (the wall clock may step back)."""
        stamp = now + self.wall_offset
        if stamp <= self._stamp:
            stamp = self._stamp + 1
        self._stamp = stamp
        return stamp

    def _node_hello(self, peer: NodePeer, path: Path, now: int) -> None:
        path.hello_sent(now, self._hello_to(peer, path.local, path.remote, now))

    def _hello_to(self, peer: NodePeer, local: Address, remote: Address, now: int) -> int:
        """Queue a HELLO to ``peer`` at ``remote`` from ``local``; its wire timestamp."""
        stamp = self._next_stamp(now)
        body = HelloNodePeer(stamp, peer.rx_short_id).encode()
        msg = encode_message(HELLO, self.network_id, peer.public_key, self.public_key,
                             self.identity.proof_of_work, body, peer.tx)
        self.outbox.append((msg, UDP, local, remote))
        return stamp

    def _from_node(self, data: bytes, header, local: Address | None, remote: Address | None, now: int) -> None:
        """A packet from another node: over UDP from ``remote``, or (None, None) relayed over TCP."""
        sender = header.sender
        peer = self.peers.get(sender)
        if peer is None or peer.pow_ok is None:
            if not pow_is_valid(sender, header.proof_of_work, self.config.min_pow_difficulty):
                self.drops["pow_invalid"] += 1
                return
        fresh = peer is None
        if fresh:
            peer = self._add_peer(sender, now)
        try:
            body = open_body(data, header, peer.rx)
        except DrasylError:
            if fresh:
                self._remove_peer(peer)  # unauthenticated packets never create entries
            raise
        peer.pow_ok = True
        mtype = header.message_type
        if mtype == APP:
            peer.app_rx = now
            peer.bytes_in += len(body)
            self.inbox.append((sender, body))
        elif mtype == HELLO:
            self._on_node_hello(peer, HelloNodePeer.parse(body), local, tuple(remote[:2]), now)
        elif mtype == ACK:
            self._on_node_ack(peer, Ack.parse(body).time, local, tuple(remote[:2]), now)
        else:
            self.drops["unexpected"] += 1

    def _on_node_hello(self, peer: NodePeer, hello: HelloNodePeer, local, remote, now: int) -> None:
        if now + self.wall_offset - hello.time > self._max_age:
            self.drops["hello_too_old"] += 1
            return
        path = peer.paths.get((local, remote))
        newer = hello.time > peer.hello_stamp
        if path is None and not newer:
            # a HELLO we have seen before, now from another source: a replay, perhaps with
            # a spoofed source; answering would reflect traffic and store a path per source
            self.drops["hello_replayed"] += 1
            return
        if newer:
            peer.hello_stamp = hello.time
            if hello.short_id != NO_SHORT_ID:
                peer.tx_short_id = hello.short_id
                peer.hello_rx = now
        elif hello.short_id != peer.tx_short_id:
            # an older HELLO never installs its short id: it is a replay, or the peer restarted
            # with its clock set back. Either way long-header APPs reach it until a newer one
            peer.tx_short_id = None
        ack = encode_message(ACK, self.network_id, peer.public_key, self.public_key,
                             self.identity.proof_of_work, Ack(hello.time).encode(), peer.tx)
        self.outbox.append((ack, UDP, local, remote))
        if path is None:
            # probably a NAT mapping the UNITE did not know: answering completes the punch
            if self._make_room(peer):
                probe = self.probe
                if probe is not None and probe.peer is peer:
                    origin = "probe"
                elif is_lan(remote[0]):
                    origin = "lan"
                else:
                    origin = "mapping" if self.advertised else "punch"
                self._punch(peer, local, remote, now, origin)
        elif newer and (path.median is None or path.unanswered_since) and now - path.rehello_at >= self._interval:
            # our HELLO on this path is unanswered: after a UNITE both sides punch at once, and
            # the first HELLO reaches the other NAT before that side's own HELLO has opened it,
            # so the NAT drops it (likewise after a NAT rebound our port: the peer's NAT drops
            # HELLOs from the new port until the peer sends to it). The peer's HELLO got
            # through, so the way is open now: send ours again instead of waiting for the next
            # tick (up to 5 s); once per interval, so replays of that HELLO get no more than an
            # ACK each
            path.rehello_at = now
            self._node_hello(peer, path, now)

    def _on_node_ack(self, peer: NodePeer, stamp: int, local, remote, now: int) -> None:
        path = peer.paths.get((local, remote))
        sent = self._matched_ack(path, stamp, now)
        if sent is None:
            return
        path.ack_received(now, sent)
        self._update_peer_route(peer, now)  # use the direct path at once

    # --- peers ----------------------------------------------------------------------------

    def _add_peer(self, public_key: bytes, now: int, keys: tuple[bytes, bytes] | None = None) -> NodePeer:
        if public_key in self.super_peers:
            raise DrasylError("cannot send APP messages to a super peer")
        if public_key == self.public_key:
            raise DrasylError("cannot send to oneself")
        if self.config.max_peers and len(self.peers) >= self.config.max_peers:
            self.drops["max_peers"] += 1
            raise DrasylError("peer table is full")
        if len(public_key) != 32:
            raise DrasylError("a public key is 32 bytes")
        try:
            rx, tx = (keys or session_keys(self.identity, public_key)) if self._arm else (None, None)
        except CryptoError:
            raise DrasylError("not a valid public key") from None
        short_id = os.urandom(SHORT_ID_LEN)
        while short_id in (NO_SHORT_ID, MAGIC_BYTES) or short_id in self.short_ids:
            short_id = os.urandom(SHORT_ID_LEN)
        peer = self.peers[public_key] = NodePeer(public_key, rx, tx, short_id, now)
        peer.app_header = encode_long_header(APP, self.network_id, public_key, self.public_key,
                                             self.identity.proof_of_work, self._arm)
        peer.route = TCP_PATH if self.default.tcp == "up" else RELAYED
        self.short_ids[short_id] = peer
        return peer

    def _remove_peer(self, peer: NodePeer) -> None:
        del self.peers[peer.public_key]
        del self.short_ids[peer.rx_short_id]
        if self.probe is not None and self.probe.peer is peer:
            self._end_probe(peer.created, won=False)

    def _update_peer_route(self, peer: NodePeer, now: int) -> None:
        peer.best = best_path(peer.paths.values(), self._path_failing, now, prefer_ipv6=True)
        if peer.best is not None:
            kind, rtt = DIRECT, peer.best.median
        else:
            kind = TCP_PATH if self.default.tcp == "up" else RELAYED
            rtt = None
        if kind != peer.route:
            peer.route = kind
            self.events.append(PathChanged(peer.public_key, kind, rtt))

    def _update_routes(self, now: int) -> None:
        for peer in self.peers.values():
            self._update_peer_route(peer, now)

    # --- housekeeping ---------------------------------------------------------------------

    def next_timer(self) -> int:
        wake = min(self._next_tick, self._probe_wake) if self.config.probing else self._next_tick
        probe = self.probe
        if probe is not None:
            wake = min(wake, probe.deadline, probe.next_send() or wake)
        return wake

    def handle_timer(self, now: int) -> None:
        """Every ``housekeeping_interval``: register, fall back to TCP, keep paths alive;
        in between, the pacing of a probing session."""
        if now >= self._next_tick:
            self._next_tick = now + self._interval
            for sp in self.super_peers.values():
                self._super_peer_tick(sp, now)
            self._choose_default(now)
            for peer in list(self.peers.values()):
                self._node_peer_tick(peer, now)
            if self.config.probing:
                self._probe_wake = now  # peers whose back-off ended are looked at below
                self._close_probe_sockets()
        if self.config.probing:
            self._probe_step(now)

    # --- probing through one symmetric NAT (drasyl.node.probing) ------------------------

    def nat_role(self) -> str | None:
        """Our NAT's mapping towards the super peers from the relaying socket: ``easy``,
        ``hard`` or None (unknown: fewer than two STUN answers from different addresses)."""
        local = self._probe_local()
        return self.mapping.role(local) if local is not None else None

    def _probe_local(self) -> Address | None:
        path = self.default.best_udp
        return path.local if path is not None and not _family(path.local) else None

    def _stun_requests(self, sp: SuperPeer, now: int) -> None:
        for path in sp.paths.values():
            if not _family(path.local):  # IPv4: where NATs are
                data = self.mapping.requests(now, sp.public_key, path.local, path.remote)
                if data is not None:
                    self.outbox.append((data, UDP, path.local, path.remote))
                return

    def _probe_step(self, now: int) -> None:
        probe = self.probe
        if probe is not None:
            peer = probe.peer
            if peer.best is not None or now >= probe.deadline:
                self._end_probe(now, won=peer.best is not None)
            else:
                for local, remote in probe.due(now):
                    self._hello_to(peer, local, remote, now)
                    self.probe_stats["hellos"] += 1
        if self.probe is None and now >= self._probe_wake:
            self._probe_wake = self._next_tick
            self._start_probe(now)

    def _start_probe(self, now: int) -> None:
        local = self._probe_local()
        role = self.mapping.role(local) if local is not None else None
        if role is None:
            return
        for peer in self.peers.values():
            if (not peer.unite_rx or peer.best is not None or now < peer.probe_not_before
                    or now - peer.unite_rx < probing.START_AFTER_US
                    or now - peer.app_tx > probing.ACTIVE_US):
                continue
            public = [e for e in peer.unite_endpoints if not _family(e) and not is_lan(e[0])]
            if not public:
                continue
            target = public[-1]
            self.probe = ProbeSession(peer, role, target, local, now, self._rng)
            self.probe_stats[f"sessions_{role}"] += 1
            if role == HARD:
                self.events.append(OpenProbeSockets(local[0], probing.HARD_SOCKETS))
            return

    def probe_sockets_opened(self, locals_: list[Address], now: int) -> None:
        """The adapter's answer to :class:`OpenProbeSockets`: the sockets it could bind."""
        self.probe_locals.update(locals_)
        probe = self.probe
        if probe is not None and probe.role == HARD and not probe.sockets:
            probe.sockets = list(locals_)
            probe.next_round = now
        self._close_probe_sockets()

    def _end_probe(self, now: int, won: bool) -> None:
        probe, self.probe = self.probe, None
        peer = probe.peer
        if won:
            peer.probe_tries = 0
            self.probe_stats["won"] += 1
        else:
            peer.probe_tries += 1
            peer.probe_not_before = now + probing.backoff(peer.probe_tries)
            self.probe_stats["failed"] += 1
        self._close_probe_sockets()

    def _close_probe_sockets(self) -> None:
        """Close the probing sockets no path uses (all but the winner once a session ends)."""
        if not self.probe_locals:
            return
        keep = set(self.probe.sockets) if self.probe is not None else set()
        for peer in self.peers.values():
            for path in peer.paths.values():
                if path.local in self.probe_locals:
                    keep.add(path.local)
        close = self.probe_locals - keep
        if close:
            self.probe_locals = keep & self.probe_locals
            self.events.append(CloseProbeSockets(tuple(close)))

    def _super_peer_tick(self, sp: SuperPeer, now: int) -> None:
        if sp.tcp == "up" and sp.tcp_path.unanswered_for(now) >= self._path_failing:
            # half-dead: the kernel still holds the connection, the super peer no longer
            # answers on it. Give it up like a failing UDP path, and open a new one below
            self._close_tcp(sp)
        if sp.tcp is None and (self.config.enforce_tcp or self._udp_failing(sp, now)):
            sp.tcp = "connecting"
            self.events.append(OpenTcp(sp.public_key, sp.url.host, sp.url.tcp_port))
        sp.best_udp = best_path(sp.paths.values(), self._path_failing, now)
        if self.config.probing:
            self._stun_requests(sp, now)
        stamp, hello = self._udp_hellos(sp, now)
        if sp.tcp == "up":
            self.outbox.append((hello, TCP, None, sp.public_key))
            sp.tcp_path.hello_sent(now, stamp)

    def _udp_hellos(self, sp: SuperPeer, now: int) -> tuple[int, bytes]:
        """One HELLO to a super peer on each of its UDP paths; (its stamp, the HELLO)."""
        stamp = self._next_stamp(now)
        hello = self._hello_for(sp, stamp)
        for path in sp.paths.values():
            self.outbox.append((hello, UDP, path.local, path.remote))
            path.hello_sent(now, stamp)
        return stamp, hello

    def _udp_failing(self, sp: SuperPeer, now: int) -> bool:
        """No UDP path, or none answered within one interval (start) / hello_timeout (later)."""
        limit = self._timeout if sp.udp_answered else self._interval
        return all(p.unanswered_for(now) >= limit for p in sp.paths.values())

    def _hello_for(self, sp: SuperPeer, stamp: int) -> bytes:
        body = HelloSuperPeer(stamp, 1, self._hello_endpoints).encode()
        return encode_message(HELLO, self.network_id, sp.public_key, self.public_key,
                              self.identity.proof_of_work, body, sp.tx)

    def _node_peer_tick(self, peer: NodePeer, now: int) -> None:
        active = now - max(peer.app_tx, peer.app_rx) <= self._direct_timeout
        if active:
            timeout = self._timeout
            for key in [k for k, p in peer.paths.items() if p.unanswered_for(now) > timeout]:
                del peer.paths[key]
            for path in peer.paths.values():
                self._node_hello(peer, path, now)
        else:
            peer.paths.clear()
        if now - peer.hello_rx > self._timeout and not any(
            now - p.last_ack <= self._timeout for p in peer.paths.values() if p.last_ack
        ):  # unreachable and silent: forget its short id (drasyl-rs forgets it even if it just came)
            peer.tx_short_id = None
        self._update_peer_route(peer, now)
        if not active and not peer.held and now - peer.created >= self._timeout:
            self._remove_peer(peer)

    # --- views ----------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Relayed APPs held back until some super peer answers."""
        return len(self._relay_queue)

    def peer_list(self, now: int | None = None, nodes: bool = True) -> list[PeerInfo]:
        """Super peers, then node peers (unless ``nodes`` is false); ``now`` (monotonic µs) adds
        the time since each node peer's last APP and last UNITE, and how long each super peer's
        UDP has gone unanswered."""
        rows: list[PeerInfo] = []
        for sp in self.super_peers.values():
            if sp.tcp == "up" and sp.tcp_path.median is not None:  # connected is not yet answered
                kind, path = TCP_PATH, None
            elif sp.tcp == "up":
                kind, path = "none", None
            else:
                path = sp.best_udp
                kind = "udp" if path is not None else "none"
            m = sp.median()
            oldest = min((p.unanswered_since for p in sp.paths.values() if p.unanswered_since), default=0)
            rows.append(PeerInfo(sp.public_key, "super_peer", kind, None if m is None else m / 1000,
                                 path.remote if path is not None else None,
                                 silent_s=_seconds(now, oldest)))
        probe = self.probe
        for peer in self.peers.values() if nodes else ():
            best = peer.best
            rtt = best.median / 1000 if best is not None and best.median is not None else None
            rows.append(PeerInfo(peer.public_key, "node", peer.route, rtt,
                                 best.remote if best is not None else None,
                                 peer.bytes_in, peer.bytes_out, _seconds(now, peer.app_rx),
                                 unite_s=_seconds(now, peer.unite_rx), app_tx_s=_seconds(now, peer.app_tx),
                                 via=best.origin if best is not None else None,
                                 probing=probe.role if probe is not None and probe.peer is peer else None))
        return rows
