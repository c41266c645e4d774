"""Sans-I/O super peer (spec §6.1, §6.3): ACKs HELLOs, keeps the peer table, relays, UNITEs.

:meth:`SuperPeerCore.receive` takes one datagram or TCP frame with ``now`` in monotonic µs
and appends what to send to :attr:`SuperPeerCore.outbox`; :meth:`handle_timer` runs
housekeeping. Expiry, UNITE windows and ticks run on ``now``; only the age check of a
received HELLO uses wall time, ``now + wall_offset`` (see :mod:`drasyl.clock`), so a wall
clock step neither stalls nor bursts anything. No sockets, clocks, threads or logging inside,
so every rule is testable with a fake clock and a benchmark can drive many thousands of
simulated nodes.

Same bytes on the wire as drasyl-rs, with these deliberate differences:

- only APPs whose *sender* holds a current registration are relayed (no open relay). An APP
  whose sender or recipient is not registered (yet) is *held*, not relayed, and relayed with
  the usual UNITE as soon as the missing HELLO arrives: a node's first APP often overtakes
  its first HELLO. Held APPs live at most one housekeeping interval, at most
  :data:`HOLD_PER_PEER` per missing peer and :data:`HOLD_MAX_PACKETS` /
  :data:`HOLD_MAX_BYTES` in total; what expires or does not fit is dropped and counted
  (drasyl-rs drops APPs to unregistered recipients at once);
- the peer table only holds senders whose HELLO authenticated: a flood of HELLOs with bad
  PoW or bad tags cannot fill it and lock out real nodes (drasyl-rs stores them first);
- a HELLO whose timestamp is older than the newest one accepted from that peer, arriving
  from another source (proto, address) while the registration is current, is dropped
  without an ACK: a replayed HELLO cannot move a registration or reflect an ACK to a
  spoofed source. From the same source it is accepted (the node's clock stepped back);
- UNITE rate limiting checks both registrations *before* recording the attempt and expires
  records after ``send_unites`` ms (drasyl-rs compares µs with ms, see spec §6.3);
- a peer's relayed-bytes counters forget recipients that left the table;
- it answers STUN Binding requests over UDP (:mod:`drasyl.stun`; ``DRASYL_STUN=false`` turns
  this off): drasyl never tells a node its observed address, and ``drasyl-agent netcheck``
  needs it to tell a cone NAT from a symmetric one. A Binding request (type ``00 01`` and the
  cookie at offset 4) cannot be a drasyl datagram (magic ``1e 3f 50 01``). Only well-formed
  requests of at most 548 bytes are answered, with one XOR-MAPPED-ADDRESS and never more than
  12 bytes beyond the request's size (a 20-byte request from IPv6 gets no answer), at most
  :data:`STUN_PER_SOURCE` per source IP per housekeeping interval and from at most
  :data:`STUN_MAX_SOURCES` sources; the rest is counted in ``drops`` (``stun_*``), the
  answers in :attr:`SuperPeerCore.stun_answered`.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

from ..crypto import Scratch, session_keys
from ..errors import CryptoError, DrasylError, MalformedMessage
from ..identity import DEFAULT_POW_DIFFICULTY, Identity, pow_is_valid
from ..messages import (
    _HEADER,
    ACK,
    APP,
    FLAG_ARMED,
    HELLO,
    HELLO_SUPER_PEER_MAX,
    HELLO_SUPER_PEER_MIN,
    HOP_COUNT_OFFSET,
    LONG_HEADER_LEN,
    MAGIC,
    MAX_HOP_COUNT,
    UNITE,
    Unite,
    _without_port_zero,
    encode_endpoint,
    encode_long_header,
    encode_message,
)
from ..stun import MAX_GROWTH, MAX_REQUEST_LEN, binding_response, is_binding_request, parse_binding_request
from ..transmit import UDP, Address, Transmit

_HELLO_TIME = struct.Struct(">QQ")  # a HELLO body's time and child_time
_U64 = struct.Struct(">Q")
_RECIPIENT = slice(10, 42)  # where a long header holds the recipient's public key

HOUSEKEEPING_INTERVAL_MS = 5_000
HOLD_PER_PEER = 32
HOLD_MAX_PACKETS = 1024
HOLD_MAX_BYTES = 1536 * 1024
#: STUN answers per source IP per housekeeping interval (a netcheck sends a few).
STUN_PER_SOURCE = 64
#: Distinct STUN sources answered per housekeeping interval: bounds the rate-limit table.
STUN_MAX_SOURCES = 4096


@dataclass(frozen=True)
class SuperPeerConfig:
    """Protocol settings; names and defaults are those of drasyl-sp (spec §8.1)."""

    network_id: int = 1
    arm_messages: bool = True
    send_unites_ms: int = 5_000  # < 0: never, 0: after every relayed APP
    max_peers: int = 8192
    min_pow_difficulty: int = DEFAULT_POW_DIFFICULTY
    hello_timeout_ms: int = 30_000
    hello_max_age_ms: int = 300_000
    housekeeping_interval_ms: int = HOUSEKEEPING_INTERVAL_MS
    stun: bool = True  # answer STUN Binding requests (ours only; DRASYL_STUN)


class Peer:
    """One registered node: where its last HELLO came from and what it reported."""

    __slots__ = (
        "public_key", "rx", "tx", "hello_time", "proto", "local", "src", "endpoints",
        "hello_rx", "ack_tx", "app_rx", "app_tx", "unite_tx", "relayed_bytes", "hello_stamp",
        "hello_endpoints",
    )

    def __init__(self, public_key: bytes, rx: bytes | None, tx: bytes | None) -> None:
        self.public_key = public_key
        self.rx = rx
        self.tx = tx
        self.hello_time = 0  # monotonic µs of the last accepted HELLO (our clock)
        self.hello_stamp = 0  # newest timestamp accepted in its HELLOs (its wall clock)
        self.proto = UDP
        self.local: Address | None = None
        self.src: Address = ()
        self.endpoints = b""  # reported endpoints, those with port 0 left out
        self.hello_endpoints = b""  # as the last HELLO had them: spares the filter when unchanged
        self.hello_rx = self.ack_tx = self.app_rx = self.app_tx = self.unite_tx = 0
        self.relayed_bytes: dict[bytes, int] | None = None  # recipient -> bytes, lazily

    def contact_candidates(self) -> bytes:
        """Reported endpoints, plus the observed UDP source (drasyl-rs appends it as is)."""
        if self.proto == UDP:
            return self.endpoints + encode_endpoint(self.src)
        return self.endpoints


class SuperPeerCore:
    """The super peer's protocol state. Feed it packets and timer ticks, drain ``outbox``."""

    def __init__(self, identity: Identity, config: SuperPeerConfig | None = None, now: int = 0) -> None:
        self.identity = identity
        self.config = cfg = config or SuperPeerConfig()
        self.public_key = identity.public_key
        self.peers: dict[bytes, Peer] = {}
        self.outbox: list[Transmit] = []
        #: Packets dropped, by reason. Never logged per packet; exported as metrics.
        self.drops: Counter[str] = Counter()
        self._keys: dict[bytes, tuple[bytes | None, bytes | None]] = {}  # PoW ok, not yet registered
        self._unites: dict[tuple[bytes, bytes], int] = {}
        self._timeout_us = cfg.hello_timeout_ms * 1000
        self._max_age_us = cfg.hello_max_age_ms * 1000
        self._unite_us = cfg.send_unites_ms * 1000
        self._interval_us = cfg.housekeeping_interval_ms * 1000
        self._next_tick = now
        #: wall − monotonic µs; the adapter refreshes it (see :mod:`drasyl.clock`).
        self.wall_offset = 0
        #: missing peer -> [(monotonic µs received, APP, drop reason)], see the module docstring.
        self._held: dict[bytes, list[tuple[int, bytes, str]]] = {}
        self._held_packets = 0
        self._held_bytes = 0
        #: STUN Binding requests answered (see the module docstring).
        self.stun_answered = 0
        self._stun_sources: dict[str, int] = {}  # source IP -> answers this interval
        self._network_id = cfg.network_id
        self._armed = FLAG_ARMED if cfg.arm_messages else 0
        #: buffers for HELLO -> ACK; ``out`` holds the ACK header but for its recipient
        self._scratch = scratch = Scratch()
        scratch.out[:LONG_HEADER_LEN] = encode_long_header(
            ACK, cfg.network_id, bytes(32), self.public_key, identity.proof_of_work, cfg.arm_messages)

    def ack_header(self) -> bytes:
        """The 79-byte long header of this super peer's ACKs, recipient all zeros (an armed
        core's; :mod:`._fast` writes the recipient in, as :meth:`_on_hello` does)."""
        return bytes(self._scratch.out[:LONG_HEADER_LEN])

    # --- input -------------------------------------------------------------------------

    def receive(self, data: bytes, proto: int, local: Address | None, remote: Address, now: int) -> bool:
        """Handle one datagram/frame. False means invalid input (a TCP stream should close)."""
        try:
            if len(data) < LONG_HEADER_LEN:
                return self._not_drasyl(data, proto, local, remote)
            # the long header (spec §4.2), unpacked once and passed on as values
            magic, hop, flags, network_id, recipient, sender, pow_, mtype = _HEADER.unpack_from(data)
            if magic != MAGIC:
                return self._not_drasyl(data, proto, local, remote)
            if mtype > 3:
                raise MalformedMessage(f"unknown message type {mtype}")
            if network_id != self._network_id:
                self.drops["network_id"] += 1
                return False
            if recipient == self.public_key:
                return self._on_hello(data, flags, sender, pow_, mtype, proto, local, remote, now)
            return self._relay(data, hop, mtype, sender, recipient, now)
        except DrasylError:
            self.drops["malformed"] += 1
            return False

    def _not_drasyl(self, data: bytes, proto: int, local: Address | None, remote: Address) -> bool:
        """Too short for a long header, or a wrong magic number: a STUN request, or malformed."""
        if proto == UDP and is_binding_request(data):
            return self._on_stun(data, local, remote)
        self.drops["malformed"] += 1
        return False

    def handle_timer(self, now: int) -> None:
        """Housekeeping: expire peers, held APPs and UNITE records, forget unregistered keys."""
        if now < self._next_tick:
            return
        self._next_tick = now + self._interval_us
        timeout = self._timeout_us
        peers = self.peers
        gone = [pk for pk, p in peers.items() if now - p.hello_time > timeout]
        for pk in gone:
            del peers[pk]
        if gone:
            for p in peers.values():
                relayed = p.relayed_bytes
                if relayed:
                    for pk in [pk for pk in relayed if pk not in peers]:
                        del relayed[pk]
        if self._held:
            self._expire_held(now)
        if self._unites:
            window = self._unite_us
            self._unites = {k: t for k, t in self._unites.items() if now - t < window}
        self._keys.clear()
        self._stun_sources.clear()

    def next_timer(self) -> int:
        return self._next_tick

    # --- STUN ------------------------------------------------------------------------

    def _on_stun(self, data: bytes, local: Address | None, remote: Address) -> bool:
        """Tell the sender of a Binding request its address as we see it (bounded, see above)."""
        drops = self.drops
        if not self.config.stun:
            drops["stun_disabled"] += 1
            return False
        if len(data) > MAX_REQUEST_LEN:
            drops["stun_oversize"] += 1
            return False
        transaction_id = parse_binding_request(data)
        if transaction_id is None:
            drops["stun_malformed"] += 1
            return False
        sources = self._stun_sources
        answered = sources.get(remote[0], 0)
        if answered >= STUN_PER_SOURCE or (not answered and len(sources) >= STUN_MAX_SOURCES):
            drops["stun_rate_limited"] += 1
            return True
        response = binding_response(transaction_id, remote)
        if len(response) > len(data) + MAX_GROWTH:
            drops["stun_request_too_short"] += 1
            return True
        sources[remote[0]] = answered + 1
        self.outbox.append((response, UDP, local, remote))
        self.stun_answered += 1
        return True

    # --- HELLO -> ACK ------------------------------------------------------------------

    def _on_hello(self, data: bytes, flags: int, sender: bytes, pow_: int, mtype: int, proto: int, local,
                  remote, now: int) -> bool:
        armed = flags & FLAG_ARMED
        if armed != self._armed:
            self.drops["armed_mismatch"] += 1
            return False
        if mtype != HELLO:
            self.drops["unexpected_type"] += 1
            return False
        cfg = self.config
        peer = self.peers.get(sender)
        if peer is not None:
            rx = peer.rx
        else:
            keys = self._keys.get(sender)
            if keys is None:
                if not pow_is_valid(sender, pow_, cfg.min_pow_difficulty):
                    self.drops["pow_invalid"] += 1
                    return False
                try:
                    keys = session_keys(self.identity, sender) if armed else (None, None)
                except CryptoError:
                    self.drops["bad_key"] += 1
                    return False
                self._keys[sender] = keys
            rx = keys[0]
        # the HELLO body (spec §4.4): time ‖ child_time ‖ endpoints, disarmed into scratch
        scratch = self._scratch
        body: bytes | bytearray
        if armed:
            if rx is None:
                raise MalformedMessage("armed message but no session key")
            n = scratch.open_long(data, rx)
            body = scratch.plain
        else:
            body = data[LONG_HEADER_LEN:]
            n = len(body)
        if n < HELLO_SUPER_PEER_MIN:
            raise MalformedMessage("HELLO body shorter than 16 bytes")
        if n > HELLO_SUPER_PEER_MAX:  # cut, not rejected: Java senders may send more
            n = HELLO_SUPER_PEER_MAX
        if (n - HELLO_SUPER_PEER_MIN) % 18:
            raise MalformedMessage("HELLO endpoints are not a multiple of 18 bytes")
        time, child_time = _HELLO_TIME.unpack_from(body)
        if child_time == 0:
            raise MalformedMessage("HELLO child_time is 0")
        if now + self.wall_offset - time > self._max_age_us:  # future timestamps are accepted
            self.drops["hello_too_old"] += 1
            return False
        current = False
        if peer is not None and now - peer.hello_time <= self._timeout_us:
            current = True
            if time < peer.hello_stamp and (proto != peer.proto or remote != peer.src):
                self.drops["hello_replayed"] += 1  # may not move the registration, gets no ACK
                return False
        if peer is None:
            if len(self.peers) >= cfg.max_peers:
                self.drops["max_peers"] += 1
                return False
            rx, tx = self._keys.pop(sender)
            peer = self.peers[sender] = Peer(sender, rx, tx)
        if time > peer.hello_stamp or not current:
            peer.hello_stamp = time
        peer.hello_time = now
        peer.proto = proto
        peer.local = local
        peer.src = remote
        sent = peer.hello_endpoints  # as the last HELLO had them: mostly unchanged, then not copied
        if n - HELLO_SUPER_PEER_MIN != len(sent) or not body.startswith(sent, HELLO_SUPER_PEER_MIN):
            peer.hello_endpoints = sent = bytes(body[HELLO_SUPER_PEER_MIN:n])
            peer.endpoints = _without_port_zero(sent)
        peer.hello_rx += 1
        peer.ack_tx += 1
        # the ACK echoes the HELLO's time: the body's first 8 bytes, armed from where they are
        ack: bytes | bytearray
        if armed:
            scratch.out[_RECIPIENT] = sender
            ack = scratch.seal_long(8, peer.tx)  # type: ignore[arg-type]  # armed: keys exist
        else:
            ack = encode_long_header(ACK, cfg.network_id, sender, self.public_key, self.identity.proof_of_work,
                                     False) + _U64.pack(time)
        self.outbox.append((ack, proto, local, remote))
        if self._held:
            held = self._held.pop(sender, None)
            if held is not None:
                self._release(held, now)
        return True

    # --- relay and UNITE ---------------------------------------------------------------

    def _relay(self, data: bytes, hop: int, mtype: int, sender: bytes, recipient: bytes, now: int,
               since: int | None = None) -> bool:
        if mtype != APP:
            self.drops["unexpected_type"] += 1
            return False
        if sender == recipient:
            self.drops["loopback"] += 1
            return False
        if hop > MAX_HOP_COUNT:
            self.drops["hop_limit"] += 1
            return True
        timeout = self._timeout_us
        src = self.peers.get(sender)
        if src is None or now - src.hello_time > timeout:
            self._hold(sender, data, "unregistered_sender", now if since is None else since)
            return True
        dst = self.peers.get(recipient)
        if dst is None or now - dst.hello_time > timeout:
            self._hold(recipient, data, "unknown_recipient", now if since is None else since)
            return True
        packet = bytearray(data)
        packet[HOP_COUNT_OFFSET] = hop + 1
        self.outbox.append((packet, dst.proto, dst.local, dst.src))
        src.app_rx += 1
        dst.app_tx += 1
        relayed = src.relayed_bytes
        if relayed is None:
            relayed = src.relayed_bytes = {}
        relayed[recipient] = relayed.get(recipient, 0) + len(data)
        window = self._unite_us
        if window > 0:  # at most one UNITE pair per ``send_unites`` (checked here: once per APP)
            key = (sender, recipient) if sender < recipient else (recipient, sender)
            last = self._unites.get(key)
            if last is None or now - last >= window:
                self._unites[key] = now
                self._unite(src, dst)
        elif window == 0:
            self._unite(src, dst)
        return True

    # --- APPs waiting for a registration ----------------------------------------------------

    def _hold(self, missing: bytes, data: bytes, reason: str, since: int) -> None:
        """Keep an APP until ``missing`` registers; drop it if that would exceed a bound."""
        queue = self._held.get(missing)
        if (self._held_packets >= HOLD_MAX_PACKETS or self._held_bytes + len(data) > HOLD_MAX_BYTES
                or (queue is not None and len(queue) >= HOLD_PER_PEER)):
            self.drops["hold_full"] += 1
            return
        if queue is None:
            queue = self._held[missing] = []
        queue.append((since, bytes(data), reason))  # a copy if the adapter reuses its buffers
        self._held_packets += 1
        self._held_bytes += len(data)

    def _release(self, held: list[tuple[int, bytes, str]], now: int) -> None:
        """Relay what waited for a peer that just registered (or hold it for the other side)."""
        window = self._interval_us
        for since, data, reason in held:
            self._held_packets -= 1
            self._held_bytes -= len(data)
            if now - since >= window:
                self.drops[reason] += 1
            else:
                _, hop, _, _, recipient, sender, _, mtype = _HEADER.unpack_from(data)
                self._relay(data, hop, mtype, sender, recipient, now, since)

    def _expire_held(self, now: int) -> None:
        """Drop (and count) held APPs that waited one housekeeping interval."""
        window = self._interval_us
        for missing, queue in list(self._held.items()):
            keep = []
            for entry in queue:
                since, data, reason = entry
                if now - since < window:
                    keep.append(entry)
                else:
                    self.drops[reason] += 1
                    self._held_packets -= 1
                    self._held_bytes -= len(data)
            if keep:
                self._held[missing] = keep
            else:
                del self._held[missing]

    # --- UNITE -----------------------------------------------------------------------------

    def _unite(self, a: Peer, b: Peer) -> None:
        """Introduce a and b to each other (the caller applied the ``send_unites`` limit)."""
        cfg = self.config
        for to, about in ((a, b), (b, a)):
            body = Unite(about.public_key, about.contact_candidates()).encode()
            msg = encode_message(UNITE, cfg.network_id, to.public_key, self.public_key,
                                 self.identity.proof_of_work, body, to.tx)
            self.outbox.append((msg, to.proto, to.local, to.src))
            to.unite_tx += 1
