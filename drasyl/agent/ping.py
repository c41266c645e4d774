"""``drasyl-agent ping PEER``: the agent sends ICMP echo requests through the overlay and
reports the path each reply took (the issue "An agent that explains itself", item 3).

The agent pings, not the CLI: the CLI often runs unprivileged and must not need a raw
socket, and only the agent knows which peer an address belongs to and which path the node
uses. One probe per ``POST /ping`` (:mod:`drasyl.agent.api`); the CLI loops, paces and
prints.

A probe: :func:`resolve` turns PEER (a hostname, with or without ``.drasyl.network``, an
overlay IP, or a public key in hex, whole or a prefix of at least :data:`MIN_KEY_PREFIX`
characters) into a :class:`Target` in an applied network whose policy lets this node talk
to it, or refuses with the reason (unknown peer, ambiguous key prefix, this node itself,
this node not a member of the network, the network refused by local consent, no policy
allowing the pair, the address claimed by an earlier network). :class:`Pinger` builds an
IPv4 ICMP echo request from this node's overlay IP in that network to the peer's, with an
identifier and an 8-byte payload token drawn once per agent and a sequence number per
probe, and hands it to the node exactly like a packet read from the TUN (the peer's send
handle, :meth:`~drasyl.node.Node.send_batch`). The peer's kernel answers like any ping. The
daemon's receive path offers every packet that passed the policy check and carries
protocol ICMP to :meth:`Pinger.take_reply` (one byte compare for all other traffic), which
consumes echo replies with our identifier and token, instead of writing them to the TUN,
and wakes the waiting probe if the source is the pinged address.

PEER given as an overlay IPv6 address pings over IPv6 (an ICMPv6 echo request from this
node's overlay IPv6 address, taken off the receive path the same way), if the peer has shown
that it takes IPv6 (:mod:`.ipv6`); a name or key pings over IPv4. The answer's ``peer``
carries both addresses and ``family`` (4 or 6).

The answer (JSON of ``POST /ping``)::

    {"success": true, "seq": 7, "reply": true, "rtt_ms": 0.61,   # measured here, send → reply
     "peer": {"public_key": "<64 hex>", "hostname": "bob", "ip": "10.77.0.2", "network": "<url>",
              "ip6": "fd6e:90bb:803a:0:626f:4f19:203b:1c2c" | null, "family": 4 | 6},
     "path": "direct" | "relayed" | "tcp",                       # the node's peer table at reply
     "endpoint": "203.0.113.10:22527" | null,                    # (or timeout) time: the path
     "via": "<super peer public key hex>" | null}                # our packets take to the peer

``reply`` false: ``rtt_ms`` null, the rest as above. A refusal is ``{"success": false,
"message": "<reason>"}``. The path is this node's view (where it sends); the reply may have
come back another way, e.g. relayed while the peer has not confirmed the direct path yet.
"""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from ..urls import format_host_port
from .api import AgentError
from .config import mask_url
from .netconfig import NetworkConfig, Node
from .policy import allowed

if TYPE_CHECKING:
    from .daemon import Agent

PROTO_ICMP = 1
ECHO_REPLY, ECHO_REQUEST = 0, 8
PROTO_ICMPV6 = 58
ECHO6_REQUEST, ECHO6_REPLY = 128, 129
MIN_KEY_PREFIX = 8
#: A probe's wait is bounded below the CLI's 10 s request timeout.
MAX_TIMEOUT_S = 8.0
NAME_SUFFIX = ".drasyl.network"
TTL = 64
DONT_FRAGMENT = 0x4000
TOKEN_BYTES = 8
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct("!BBHHH")
_U16 = struct.Struct("!H")


def checksum(data: bytes | bytearray) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_packet(kind: int, src: IPv4Address, dst: IPv4Address, ident: int, seq: int, payload: bytes) -> bytes:
    """An IPv4 packet (DF, TTL 64, IP id = ``seq``) with an ICMP echo request or reply."""
    icmp = bytearray(_ICMP_ECHO.pack(kind, 0, 0, ident, seq) + payload)
    _U16.pack_into(icmp, 2, checksum(icmp))
    header = bytearray(_IPV4.pack(0x45, 0, _IPV4.size + len(icmp), seq, DONT_FRAGMENT, TTL, PROTO_ICMP, 0,
                                  src.packed, dst.packed))
    _U16.pack_into(header, 10, checksum(header))
    return bytes(header + icmp)


_IPV6 = struct.Struct("!IHBB16s16s")


def echo6_packet(kind: int, src: IPv6Address, dst: IPv6Address, ident: int, seq: int, payload: bytes) -> bytes:
    """An IPv6 packet (hop limit 64) with an ICMPv6 echo request or reply (RFC 4443)."""
    icmp = bytearray(_ICMP_ECHO.pack(kind, 0, 0, ident, seq) + payload)
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    _U16.pack_into(icmp, 2, checksum(pseudo + icmp))
    return _IPV6.pack(6 << 28, len(icmp), PROTO_ICMPV6, TTL, src.packed, dst.packed) + bytes(icmp)


@dataclass(frozen=True)
class Target:
    """A peer to ping and from where: ``src`` is this node's overlay IP in ``network``;
    ``ip6``/``src6`` set when the ping goes over IPv6."""

    pk: bytes
    ip: IPv4Address
    src: IPv4Address
    hostname: str
    network: str  # the config URL as shown (password masked)
    ip6: IPv6Address | None = None  # the peer's overlay IPv6 address
    src6: IPv6Address | None = None  # ours, when the ping goes over IPv6


def resolve(agent: Agent, peer: str) -> Target:
    """The first usable match of ``peer`` in config.toml order (as the hosts file and the
    policy tables resolve conflicts); :class:`AgentError` with the first match's reason when
    none is usable."""
    text = peer.strip().lower()
    name = text.removesuffix(NAME_SUFFIX)
    try:
        ip: IPv4Address | None = IPv4Address(text)
    except ValueError:
        ip = None
    try:
        ip6: IPv6Address | None = IPv6Address(text)
    except ValueError:
        ip6 = None
    prefix = text if MIN_KEY_PREFIX <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text) else None
    found: list[tuple[str, str, NetworkConfig, Node]] = []  # (network key, shown URL, config, node)
    for entry in agent.config.networks:
        member = agent.memberships.get(entry.key)
        if entry.disabled or member is None or member.config is None:
            continue
        found += [(entry.key, mask_url(entry.config_url), member.config, node) for node in member.config.nodes
                  if node.hostname.lower() == name or node.ip == ip or (ip6 is not None and node.ip6 == ip6)
                  or (prefix is not None and node.pk.hex().startswith(prefix))]
    if not found:
        raise AgentError(f"unknown peer {peer!r}: no hostname, overlay IP or public key (at least "
                         f"{MIN_KEY_PREFIX} hex digits) in this agent's networks matches it")
    keys = {node.pk for *_, node in found}
    if prefix is not None and len(keys) > 1:
        raise AgentError(f"{peer!r} is ambiguous: it begins the keys " + ", ".join(sorted(k.hex() for k in keys)))
    reasons = [_unusable(agent, *match) or (_unusable6(agent, key, node) if ip6 is not None else "")
               for match in found for key, node in [(match[0], match[3])]]
    for (key, shown, _cfg, node), why in zip(found, reasons):
        if not why:
            state = agent.decision.states[key]
            return Target(node.pk, node.ip, state.ip, node.hostname, shown, node.ip6,
                          state.ip6 if ip6 is not None else None)
    node = found[0][3]
    raise AgentError(f"cannot ping {node.hostname} ({node.ip}): {reasons[0]}")


def _unusable(agent: Agent, key: str, shown: str, cfg: NetworkConfig, node: Node) -> str:
    """Why ``node`` of network ``key`` cannot be pinged; empty when it can."""
    my_pk = agent.config.identity.public_key
    if node.pk == my_pk:
        return "that is this node"
    me = cfg.node(my_pk)
    if me is None:
        return f"this node is not a member of network {shown}"
    state = agent.decision.states.get(key)
    if state is None:
        refused = agent.decision.refused.get(key, ())
        return f"network {shown} is not applied" + (f" ({refused[0]})" if refused else "")
    if not allowed(cfg, my_pk, node.pk):
        return (f"no [[policy]] of network {shown} lets this node (groups: {_groups(me.groups)}) talk "
                f"to {node.hostname} (groups: {_groups(node.groups)})")
    if agent.tables.egress(int(state.ip), int(node.ip)) != node.pk:
        return f"packets to {node.ip} go to another peer: an earlier network claims that address"
    if node.pk not in agent.handles:
        return "the node cannot send to it (see the agent's log)"
    return ""


def _unusable6(agent: Agent, key: str, node: Node) -> str:
    """Why ``node`` cannot be pinged over IPv6 (it can over IPv4); empty when it can."""
    state = agent.decision.states[key]
    if state.ip6 is None or agent.tun is None or not agent.tun.ipv6:
        return "IPv6 is off for this network on this host (see status)"
    if agent.tables.egress6(int(state.ip6), int(node.ip6)) != node.pk:
        return f"IPv6 packets to {node.ip6} go to another peer: an earlier network claims that address"
    if node.pk not in agent.ipv6.capable:
        return ("it has not shown that it takes IPv6 (a drasyl-rs or older agent, or not up yet); "
                f"ping it by name or {node.ip} for IPv4")
    return ""


def _groups(groups: frozenset[str]) -> str:
    return ", ".join(sorted(groups)) or "none"


class Pinger:
    """The agent's ICMP echo identity and the probes waiting for their reply."""

    def __init__(self) -> None:
        self.ident = secrets.randbits(16)
        self.token = secrets.token_bytes(TOKEN_BYTES)
        self._seq = secrets.randbits(16)
        self._waiting: dict[int, tuple[int, asyncio.Future[float]]] = {}  # seq → (source as int, reply time)

    def take_reply(self, pkt: bytes | bytearray) -> bool:
        """Is this IPv4/ICMP packet (policy-checked by the caller) a reply to one of our
        probes? Then it is consumed (also when late) and its probe woken."""
        return self._take(pkt, (pkt[0] & 0x0F) * 4, ECHO_REPLY, 12, 16)

    def take_reply6(self, pkt: bytes | bytearray) -> bool:
        """:meth:`take_reply` for an IPv6/ICMPv6 packet (no extension headers)."""
        return pkt[6] == PROTO_ICMPV6 and self._take(pkt, 40, ECHO6_REPLY, 8, 24)

    def _take(self, pkt: bytes | bytearray, at: int, reply: int, src: int, src_end: int) -> bool:
        """The ICMP message at ``at``: an echo reply of type ``reply`` with our ident and token,
        from the address in ``pkt[src:src_end]`` the probe went to."""
        if (len(pkt) < at + _ICMP_ECHO.size + TOKEN_BYTES or pkt[at] != reply
                or _U16.unpack_from(pkt, at + 4)[0] != self.ident
                or pkt[at + _ICMP_ECHO.size:at + _ICMP_ECHO.size + TOKEN_BYTES] != self.token):
            return False
        waiting = self._waiting.get(_U16.unpack_from(pkt, at + 6)[0])
        if waiting is not None and waiting[0] == int.from_bytes(pkt[src:src_end], "big") and not waiting[1].done():
            waiting[1].set_result(time.monotonic())
        return True

    async def ping(self, agent: Agent, peer: str, timeout: float) -> dict[str, Any]:
        """One probe to ``peer``, waiting up to ``timeout`` seconds (module docstring)."""
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise AgentError(f"the timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} s")
        target = resolve(agent, peer)
        self._seq = seq = (self._seq + 1) & 0xFFFF
        reply: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        v6 = target.src6 is not None
        self._waiting[seq] = (int(target.ip6 if v6 else target.ip), reply)
        try:
            sent = time.monotonic()
            packet = (echo6_packet(ECHO6_REQUEST, target.src6, target.ip6, self.ident, seq, self.token) if v6
                      else echo_packet(ECHO_REQUEST, target.src, target.ip, self.ident, seq, self.token))
            agent.node.send_batch([(agent.handles[target.pk], packet)])
            try:
                rtt_ms: float | None = (await asyncio.wait_for(reply, timeout) - sent) * 1000
            except TimeoutError:
                rtt_ms = None
        finally:
            del self._waiting[seq]
        return {"success": True, "seq": seq, "reply": rtt_ms is not None,
                "rtt_ms": None if rtt_ms is None else round(rtt_ms, 3),
                "peer": {"public_key": target.pk.hex(), "hostname": target.hostname, "ip": str(target.ip),
                         "network": target.network, "ip6": str(target.ip6) if target.ip6 else None,
                         "family": 6 if v6 else 4},
                **_path(agent, target.pk)}


def _path(agent: Agent, pk: bytes) -> dict[str, str | None]:
    """How the node reaches ``pk`` now: direct to an endpoint, or via the relaying super peer."""
    node = agent.node
    row = next((r for r in node.peers() if r.role == "node" and r.public_key == pk), None)
    path = row.path if row is not None else None
    if path == "direct":
        endpoint = format_host_port(str(row.remote[0]), row.remote[1]) if row.remote else None
        return {"path": path, "endpoint": endpoint, "via": None}
    return {"path": path, "endpoint": None, "via": node.core.default.public_key.hex()}
