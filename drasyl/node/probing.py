"""Direct paths through one symmetric NAT: learn our own NAT's mapping, then probe (birthday).

A UNITE hole punch fails when one side (the *hard* side) sits behind a NAT whose mapping
depends on the destination (a symmetric NAT): its HELLO towards the other side leaves from a
port nobody announced, and a filtering NAT on the other (*easy*) side drops it. Tailscale's
answer, used here: the hard side opens :data:`HARD_SOCKETS` extra UDP sockets and sends one
HELLO from each towards the easy side's public endpoint, creating that many NAT mappings,
each of which lets in exactly that endpoint; the easy side sends :data:`EASY_PROBES` HELLOs to
random ports of the hard side's public address. With 256 mappings among ~64 500 ports and
1024 probes, one probe meets an open mapping with probability 1 − (1 − 256/64 512)^1024 ≈ 98 %.
The meeting HELLO is authenticated like any other; it creates a path, the usual HELLO/ACK
exchange confirms it, and the sockets that did not win are closed.

Who is which side: each node learns its own mapping behaviour with STUN Binding requests from
its drasyl socket to the super peers (ours answer STUN; drasyl-rs' do not, so with them the
behaviour stays unknown and nothing is probed). The same public port towards two super peers
on different addresses, or no translation at all, is *easy*; different ports are *hard*. A
node that knows it is hard opens sockets, one that knows it is easy sprays; both only after a
UNITE's punch has not produced a direct path within :data:`START_AFTER_US`, and only while
traffic wants the peer (an APP sent within :data:`ACTIVE_US`). Two hard sides cannot meet
(that needs ~65 000 sockets): they stay relayed, and status says why.

Bounds, so that this never looks like a port scan: :data:`PROBE_PPS` packets per second (both
roles), :data:`EASY_PROBES` probes to one address per session (the hard side sends
:data:`HARD_SOCKETS` × :data:`HARD_ROUNDS` HELLOs to one endpoint), one session at a time,
then a back-off doubling from :data:`BACKOFF_US` up to :data:`BACKOFF_MAX_US` per peer. STUN
asks each super peer once per :data:`STUN_INTERVAL_US` (every :data:`STUN_QUIET_US` after
:data:`STUN_GIVE_UP` unanswered requests, so a drasyl-rs super peer gets ~6 stray datagrams an
hour). Pure: no sockets, clocks or randomness of its own (the core passes its RNG).
"""

from __future__ import annotations

import ipaddress
from random import Random

from ..stun import MAGIC_COOKIE, binding_request, parse_binding_response
from ..transmit import Address

HARD_SOCKETS = 256
HARD_ROUNDS = 2  # the second round re-opens mappings the easy side's probes reached too early
HARD_ROUND_GAP_US = 8_000_000
EASY_PROBES = 1024
PROBE_PPS = 100
START_AFTER_US = 3_000_000  # after a UNITE: the ordinary punch takes milliseconds
#: The easy side waits until the hard side's sockets exist: a probe to a port that is not
#: mapped yet is lost.
EASY_DELAY_US = HARD_SOCKETS * 1_000_000 // PROBE_PPS
SESSION_US = 22_000_000  # the whole session, the HELLO/ACK exchange after the meeting included
ACTIVE_US = 10_000_000
BACKOFF_US = 60_000_000
BACKOFF_MAX_US = 900_000_000
STUN_INTERVAL_US = 60_000_000
STUN_QUIET_US = 600_000_000
STUN_GIVE_UP = 3
PORTS = (1024, 65535)  # Linux masquerade's range for ports ≥ 1024, and every home router's

HARD, EASY = "hard", "easy"

_LOCAL_NETS = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/3", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8")]


def is_lan(ip: str) -> bool:
    """An address that only means something inside one site: RFC 1918, CGNAT, link-local, ULA.

    Documentation ranges are *not* LAN here (the NAT lab's internet uses them)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _LOCAL_NETS if net.version == addr.version)


class MappingObserver:
    """Our NAT's mapping behaviour per local socket, from STUN answers of the super peers."""

    def __init__(self) -> None:
        self.pending: dict[bytes, tuple[bytes, Address, int]] = {}  # transaction id → (sp, local, sent µs)
        self.mapped: dict[tuple[Address, bytes], tuple[Address, Address]] = {}  # (local, sp) → (sp addr, public)
        self.unanswered: dict[bytes, int] = {}  # super peer → requests in a row without an answer
        self._next: dict[bytes, int] = {}

    def requests(self, now: int, sp_key: bytes, local: Address, remote: Address) -> bytes | None:
        """A Binding request to send to a super peer now, or None when it is not due."""
        if now < self._next.get(sp_key, 0):
            return None
        for tid, (sp, _, sent) in list(self.pending.items()):
            if sp == sp_key and now - sent >= STUN_INTERVAL_US // 2:
                del self.pending[tid]  # lost or never to be answered
                self.unanswered[sp_key] = self.unanswered.get(sp_key, 0) + 1
        quiet = self.unanswered.get(sp_key, 0) >= STUN_GIVE_UP
        self._next[sp_key] = now + (STUN_QUIET_US if quiet else STUN_INTERVAL_US)
        data, tid = binding_request()
        self.pending[tid] = (sp_key, local, now)
        return data

    def on_datagram(self, data: bytes, local: Address, remote: Address) -> bool:
        """Consume a STUN answer to one of our requests; False if it is not one."""
        if len(data) < 20 or data[4:8] != MAGIC_COOKIE:
            return False
        tid = bytes(data[8:20])
        entry = self.pending.get(tid)
        if entry is None or entry[1] != local:
            return False
        public = parse_binding_response(data, tid)
        if public is None:
            return False
        sp_key = entry[0]
        del self.pending[tid]
        self.unanswered[sp_key] = 0
        self.mapped[(local, sp_key)] = (remote, (public[0], public[1]))
        return True

    def forget(self, sp_key: bytes) -> None:
        for key in [k for k in self.mapped if k[1] == sp_key]:
            del self.mapped[key]

    def role(self, local: Address) -> str | None:
        """``easy`` (endpoint-independent or no NAT), ``hard`` (endpoint-dependent), or None."""
        seen = [(sp_addr, public) for (loc, _), (sp_addr, public) in self.mapped.items() if loc == local]
        if any(public == local for _, public in seen):
            return EASY  # a public address: nothing translates
        by_ip: dict[str, int] = {}
        for sp_addr, public in seen:
            by_ip.setdefault(sp_addr[0], public[1])
        if len(by_ip) < 2:
            return None
        ports = {public[1] for _, public in seen}
        return HARD if len(ports) > 1 else EASY


class ProbeSession:
    """One birthday-probing attempt towards one peer (see the module docstring)."""

    __slots__ = ("peer", "role", "target", "local", "started", "sockets", "sent", "ports", "rounds", "next_round")

    def __init__(self, peer, role: str, target: Address, local: Address, now: int, rng: Random) -> None:
        self.peer = peer
        self.role = role
        self.target = target  # hard: the easy side's public endpoint; easy: the hard side's (ip, any)
        self.local = local  # easy: the socket that sprays; hard: the address the sockets bind to
        self.started = now
        self.sockets: list[Address] = []
        self.sent = 0
        self.rounds = 0
        self.next_round = now
        low, high = PORTS
        self.ports = rng.sample(range(low, high + 1), EASY_PROBES) if role == EASY else []

    @property
    def deadline(self) -> int:
        return self.started + SESSION_US

    def due(self, now: int) -> list[tuple[Address, Address]]:
        """(local, remote) pairs to send a HELLO on now, paced at :data:`PROBE_PPS`."""
        if self.role == EASY:
            begin = self.started + EASY_DELAY_US
            if now < begin:
                return []
            allowed = min(EASY_PROBES, (now - begin) * PROBE_PPS // 1_000_000 + 1)
            out = [(self.local, (self.target[0], port)) for port in self.ports[self.sent:allowed]]
        else:
            if not self.sockets or self.rounds >= HARD_ROUNDS or now < self.next_round:
                return []
            n = len(self.sockets)
            allowed = min(n, (now - self.next_round) * PROBE_PPS // 1_000_000 + 1)
            out = [(local, self.target) for local in self.sockets[self.sent:allowed]]
            if allowed >= n:
                self.rounds += 1
                self.next_round = now + HARD_ROUND_GAP_US
                self.sent = 0
                return out
        self.sent += len(out)
        return out

    def next_send(self) -> int | None:
        """Monotonic µs when :meth:`due` next has something, or None (waiting or done)."""
        step = 1_000_000 // PROBE_PPS
        if self.role == EASY:
            begin = self.started + EASY_DELAY_US
            return None if self.sent >= EASY_PROBES else max(begin, begin + self.sent * step)
        if not self.sockets or self.rounds >= HARD_ROUNDS:
            return None
        return self.next_round + self.sent * step


def backoff(tries: int) -> int:
    """µs to wait before probing a peer again after ``tries`` failed sessions."""
    return min(BACKOFF_MAX_US, BACKOFF_US << max(0, tries - 1))
