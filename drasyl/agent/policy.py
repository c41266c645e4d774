"""What a network config means for this node (agent.md §3 "Semantics") and the per-packet
policy lookups of the data path (§4 "Packet path", "Multiple networks").

:func:`desired_state` turns one validated config into this node's :class:`LocalState`: its
overlay address, the effective access rules (only ALLOW is enforced; DENY is shown in status),
the kernel routes, the destinations it is the gateway of and the hostnames it may resolve —
what the network asks for; :mod:`drasyl.agent.consent` decides what of it the host allows.
LocalState compares by value, so the reconciler can ask "current == desired?".

:class:`PolicyTables` merges the ALLOW rules of every network into two two-level
longest-prefix tables: TX (destination → source → peer) and RX (source → destination →
expected sender). Lookups take IPv4 addresses as ints straight from the packet; /32 entries
(every overlay peer) are one dict lookup, shorter prefixes (routed subnets) are searched by
prefix length, longest first. As in drasyl-rs only the longest matching outer prefix is
consulted (no fallback to a shorter one).

Deliberate differences from drasyl-rs:
- [bug] two effective rules with the same (direction, source, dest) raise
  :class:`NetworkConfigError` naming both origins (drasyl-rs panics and stops the agent);
- [bug] identical prefixes from several networks are merged per (outer, inner) prefix pair
  instead of overwriting each other; if two networks map the same pair to different peers,
  the network given first (listed first in config.toml: joined first) wins — never the one
  whose URL sorts first, which a later admin could choose — and the conflict is listed in
  ``PolicyTables.conflicts``, as are overlapping subnets and an overlay IP used twice
  (:mod:`drasyl.agent.consent` refuses those before they get here).
IPv6: every member has an overlay IPv6 address too (:mod:`.netconfig`); the rules are
mirrored for it (``access_rules6``: ``me/128 <-> peer/128``, allowed exactly when the IPv4
pair is, and for a route's ``dest6`` as for its ``dest``), with ``routes6`` (``dest6`` via the
gateway's IPv6 address) and ``served6``; :meth:`PolicyTables.egress6` and
:meth:`PolicyTables.ingress6_ok` check them with the 128-bit addresses as ints, the same
two-level longest-prefix match as IPv4.
Pure: no I/O, no logging; a lookup builds no objects (only the masked int of a routed prefix).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Generic, NamedTuple, TypeVar

from .netconfig import ALL_GROUPS, NetworkConfig, NetworkConfigError, Node, Policy, Route

OUT = "OUT"
IN = "IN"


class AccessRule(NamedTuple):  # a tuple: 20 000 of them are made for a 10 000-node config
    direction: str  # OUT: we send source → dest to pk; IN: pk may send source → dest to us
    source: IPv4Network
    dest: IPv4Network
    pk: bytes
    allow: bool

    @property
    def action(self) -> str:
        return "ALLOW" if self.allow else "DENY"

    def __str__(self) -> str:
        peer = "via" if self.direction == OUT else "from"
        return f"{self.direction} {self.source} -> {self.dest} {peer} {self.pk.hex()} {self.action}"


@dataclass(frozen=True)
class KernelRoute:
    dest: IPv4Network
    gw: IPv4Address


@dataclass(frozen=True)
class LocalState:
    """This node's desired state in one network; tuples in a fixed order so ``==`` is by value."""

    subnet: IPv4Network
    ip: IPv4Address
    access_rules: tuple[AccessRule, ...]  # OUT before IN, then by source, then by dest
    routes: tuple[KernelRoute, ...]  # by dest
    served: tuple[IPv4Network, ...]  # destinations of routes this node is the gateway of, by dest
    hostnames: tuple[tuple[IPv4Address, str], ...]  # by IP; includes this node
    subnet6: IPv6Network | None = None
    ip6: IPv6Address | None = None
    access_rules6: tuple[AccessRule, ...] = ()  # me/128 <-> peer/128, OUT before IN, by address
    hostnames6: tuple[tuple[IPv6Address, str], ...] = ()  # the names of ``hostnames``, by IPv6 address
    routes6: tuple[KernelRoute, ...] = ()  # ``dest6`` via the gateway's IPv6 address, by dest
    served6: tuple[IPv6Network, ...] = ()  # ``dest6`` of routes this node is the gateway of


def allowed(cfg: NetworkConfig, a: bytes, b: bytes) -> bool:
    """May nodes a and b talk? Policies are undirected; a node may always talk to itself."""
    if a == b:
        return True
    node_a, node_b = cfg.node(a), cfg.node(b)
    if node_a is None or node_b is None:
        return False
    return any(_matches(p, node_a.groups, node_b.groups) or _matches(p, node_b.groups, node_a.groups)
               for p in cfg.policies)


def _matches(policy: Policy, src: frozenset[str], dst: frozenset[str]) -> bool:
    return ((ALL_GROUPS in policy.source_groups or not policy.source_groups.isdisjoint(src))
            and (ALL_GROUPS in policy.destination_groups or not policy.destination_groups.isdisjoint(dst)))


def may_use(route: Route, node: Node) -> bool:
    """A route without groups is for everyone; else for members of one of its groups."""
    return not route.groups or not route.groups.isdisjoint(node.groups)


def desired_state(cfg: NetworkConfig, my_pk: bytes) -> LocalState | None:
    """This node's state in ``cfg``, or None when it is not a member (→ teardown)."""
    me = cfg.node(my_pk)
    if me is None:
        return None
    talks = {n.pk for n in cfg.nodes if allowed(cfg, my_pk, n.pk)}
    routes = sorted((KernelRoute(r.dest, cfg.node(r.gw).ip) for r in cfg.routes  # type: ignore[union-attr]
                     if r.gw != my_pk and may_use(r, me)), key=lambda r: r.dest)
    hostnames = sorted(((n.ip, n.hostname) for n in cfg.nodes if n.pk in talks), key=lambda h: (int(h[0]), h[1]))
    hostnames6 = sorted(((n.ip6, n.hostname) for n in cfg.nodes if n.pk in talks and n.ip6 is not None),
                        key=lambda h: (int(h[0]), h[1]))
    return LocalState(
        subnet=cfg.subnet,
        ip=me.ip,
        access_rules=_access_rules(cfg, me, talks),
        routes=tuple(routes),
        served=tuple(sorted(r.dest for r in cfg.routes if r.gw == my_pk)),
        hostnames=tuple(hostnames),
        subnet6=cfg.subnet6 if me.ip6 is not None else None,
        ip6=me.ip6,
        access_rules6=_access_rules6(cfg, me, talks),
        hostnames6=tuple(hostnames6),
        routes6=tuple(sorted((KernelRoute(r.dest6, cfg.node(r.gw).ip6) for r in cfg.routes  # type: ignore[union-attr]
                              if r.dest6 is not None and r.gw != my_pk and may_use(r, me)),
                             key=lambda r: int(r.dest.network_address))) if me.ip6 is not None else (),
        served6=tuple(sorted((r.dest6 for r in cfg.routes if r.dest6 is not None and r.gw == my_pk),
                             key=lambda d: int(d.network_address))) if me.ip6 is not None else (),
    )


def _access_rules6(cfg: NetworkConfig, me: Node, talks: set[bytes]) -> tuple[AccessRule, ...]:
    """:func:`_access_rules` for IPv6: nodes' /128 addresses and routes' ``dest6``."""
    if me.ip6 is None:
        return ()
    mine = IPv6Network((me.ip6, 128))
    others = [(n, IPv6Network((n.ip6, 128))) for n in cfg.nodes if n.pk != me.pk and n.ip6 is not None]
    pairs: list[tuple[IPv6Network, IPv6Network, bytes, bool, tuple[Route | None, Node | None]]] = [
        (mine, net, n.pk, n.pk in talks, (None, n)) for n, net in others]
    for route in cfg.routes:
        if route.dest6 is None:
            continue
        if route.gw != me.pk:
            pairs.append((mine, route.dest6, route.gw, may_use(route, me), (route, None)))
        else:
            pairs += [(route.dest6, net, n.pk, may_use(route, n), (route, n)) for n, net in others]
    rules: dict[tuple[bool, int, int, int, int], tuple[AccessRule, tuple]] = {}
    for direction in (OUT, IN):
        for local, remote, pk, allow, origin in pairs:
            source, dest = (local, remote) if direction == OUT else (remote, local)
            key = (direction == IN, int(source.network_address), source.prefixlen,
                   int(dest.network_address), dest.prefixlen)
            if key in rules:
                raise NetworkConfigError(cfg.source, f"duplicate route: {direction} {source} -> {dest} comes from "
                                                     f"{_origin(*rules[key][1])} and from {_origin(*origin)}")
            rules[key] = (AccessRule(direction, source, dest, pk, allow), origin)
    return tuple(rules[key][0] for key in sorted(rules))


def _access_rules(cfg: NetworkConfig, me: Node, talks: set[bytes]) -> tuple[AccessRule, ...]:
    """§3 "Effective access rules", in drasyl-rs' order so a duplicate names the same pair;
    returned OUT before IN, then by source, then by destination. Prefixes are compared as
    (int, length) keys made once per prefix: a config may have 16 384 nodes."""
    def keyed(net: IPv4Network) -> tuple[IPv4Network, tuple[int, int]]:
        return net, (int(net.network_address), net.prefixlen)

    mine = keyed(IPv4Network((int(me.ip), 32)))
    others = [(n, keyed(IPv4Network((int(n.ip), 32)))) for n in cfg.nodes if n.pk != me.pk]
    # (local, remote, peer, allow, origin): OUT local -> remote via peer, IN remote -> local from peer
    pairs: list[tuple[Any, Any, bytes, bool, tuple[Route | None, Node | None]]] = [
        (mine, net, n.pk, n.pk in talks, (None, n)) for n, net in others]
    for route in cfg.routes:
        dest = keyed(route.dest)
        if route.gw != me.pk:
            pairs.append((mine, dest, route.gw, may_use(route, me), (route, None)))
        else:
            pairs += [(dest, net, n.pk, may_use(route, n), (route, n)) for n, net in others]
    keyed_rules: dict[tuple[bool, tuple[int, int], tuple[int, int]], tuple[AccessRule, tuple]] = {}
    for direction in (OUT, IN):
        for local, remote, pk, allow, origin in pairs:
            (source, skey), (dest, dkey) = (local, remote) if direction == OUT else (remote, local)
            key = (direction == IN, skey, dkey)
            if key in keyed_rules:
                raise NetworkConfigError(cfg.source, f"duplicate route: {direction} {source} -> {dest} comes from "
                                                     f"{_origin(*keyed_rules[key][1])} and from {_origin(*origin)}")
            keyed_rules[key] = (AccessRule(direction, source, dest, pk, allow), origin)
    return tuple(keyed_rules[key][0] for key in sorted(keyed_rules))


def _origin(route: Route | None, node: Node | None) -> str:
    """Where an access rule comes from, for the duplicate-rule message."""
    if route is None:
        return f"node {node.hostname!r}"  # type: ignore[union-attr]
    if node is None:
        return f"route {route.dest}"
    return f"route {route.dest} (this node is its gateway) to node {node.hostname!r}"


def rules6_without(rules: tuple[AccessRule, ...], dropped: set[IPv6Network]) -> tuple[AccessRule, ...]:
    """``rules`` without those of the refused IPv6 destinations ``dropped`` (consent)."""
    return tuple(r for r in rules if r.source not in dropped and r.dest not in dropped)


V = TypeVar("V")


class _Lpm(Generic[V]):
    """Longest-prefix match on int addresses of ``bits`` bits (32: IPv4, 128: IPv6): host
    entries in one dict, then each shorter length."""

    __slots__ = ("hosts", "routed")

    def __init__(self, entries: Mapping[tuple[int, int], V], bits: int = 32) -> None:
        self.hosts: dict[int, V] = {net: v for (net, length), v in entries.items() if length == bits}
        by_length: dict[int, dict[int, V]] = {}
        for (net, length), value in entries.items():
            if length < bits:
                by_length.setdefault(length, {})[net] = value
        full = (1 << bits) - 1
        self.routed = tuple(((full << (bits - length)) & full, table)
                            for length, table in sorted(by_length.items(), reverse=True))

    def get(self, addr: int) -> V | None:
        value = self.hosts.get(addr)
        if value is None:
            for mask, table in self.routed:
                value = table.get(addr & mask)
                if value is not None:
                    break
        return value


_Prefix = tuple[int, int]  # (network as int, prefix length)


def _prefix(net: IPv4Network | IPv6Network) -> _Prefix:
    return int(net.network_address), net.prefixlen


class PolicyTables:
    """The ALLOW rules of all networks, merged, for the per-packet checks (module docstring)."""

    __slots__ = ("_tx", "_rx", "_tx_hosts", "_rx_hosts", "_tx6", "_rx6", "peers", "peers6", "conflicts")

    def __init__(self, states: Mapping[str, LocalState] | None = None) -> None:
        """``states``: network URL (as shown to users, without password) → its LocalState, in
        config.toml order (the first network wins a conflict)."""
        ordered = list((states or {}).items())
        conflicts: list[str] = _address_conflicts(ordered)
        tx, rx = _rule_tables(ordered, "access_rules", conflicts)
        tx6, rx6 = _rule_tables(ordered, "access_rules6", conflicts)
        self._tx6 = _freeze(tx6, 128)
        self._rx6 = _freeze(rx6, 128)
        self.peers6: frozenset[bytes] = frozenset(pk for slot in tx6.values() for pk, _url in slot.values())
        """Peers this node may send IPv6 to (if they can take it: the daemon learns that)."""
        self._tx = _freeze(tx)
        self._rx = _freeze(rx)
        # The common case, a /32 peer address, inlined in egress/ingress_ok: one dict lookup per level.
        self._tx_hosts = self._tx.hosts
        self._rx_hosts = self._rx.hosts
        self.peers: frozenset[bytes] = frozenset(pk for slot in tx.values() for pk, _url in slot.values())
        """Peers this node may send to: the ones the data path needs a send handle for."""
        self.conflicts: tuple[str, ...] = tuple(conflicts)

    def egress(self, src_ip: int, dst_ip: int) -> bytes | None:
        """The peer to send a TUN packet src → dst to, or None if no policy allows it."""
        inner = self._tx_hosts.get(dst_ip) or self._tx.get(dst_ip)
        if inner is None:
            return None
        return inner.hosts.get(src_ip) or inner.get(src_ip)

    def ingress_ok(self, sender_pk: bytes, src_ip: int, dst_ip: int) -> bool:
        """May ``sender_pk`` deliver a packet src → dst into our TUN? (Anti-spoofing.)"""
        inner = self._rx_hosts.get(src_ip) or self._rx.get(src_ip)
        return inner is not None and (inner.hosts.get(dst_ip) or inner.get(dst_ip)) == sender_pk


    def host_pairs(self) -> tuple[list[tuple[int, int, bytes]], list[tuple[int, int, bytes]]]:
        """The /32 × /32 entries, the case :meth:`egress` and :meth:`ingress_ok` answer with one
        dict lookup per level: ``(dst, src, peer)`` for TX and ``(src, dst, sender)`` for RX.
        A lookup that hits one of them gets that answer; any other goes on to shorter prefixes.
        For the native data path (:mod:`drasyl.agent.fast`), which answers only these."""
        return ([(dst, src, pk) for dst, inner in self._tx_hosts.items() for src, pk in inner.hosts.items()],
                [(src, dst, pk) for src, inner in self._rx_hosts.items() for dst, pk in inner.hosts.items()])

    def egress6(self, src_ip: int, dst_ip: int) -> bytes | None:
        """The peer to send an IPv6 TUN packet src → dst to (128-bit ints), or None."""
        tx6 = self._tx6
        inner = tx6.hosts.get(dst_ip) or tx6.get(dst_ip)
        if inner is None:
            return None
        return inner.hosts.get(src_ip) or inner.get(src_ip)

    def ingress6_ok(self, sender_pk: bytes, src_ip: int, dst_ip: int) -> bool:
        """May ``sender_pk`` deliver an IPv6 packet src → dst into our TUN? (Anti-spoofing.)"""
        rx6 = self._rx6
        inner = rx6.hosts.get(src_ip) or rx6.get(src_ip)
        return inner is not None and (inner.hosts.get(dst_ip) or inner.get(dst_ip)) == sender_pk


_RuleTable = dict[_Prefix, dict[_Prefix, tuple[bytes, str]]]


def _rule_tables(ordered: list[tuple[str, LocalState]], attr: str,
                 conflicts: list[str]) -> tuple[_RuleTable, _RuleTable]:
    """The allow rules in each state's ``attr`` (``access_rules`` or ``access_rules6``) as
    (tx, rx): outer prefix (tx: destination, rx: source) → inner prefix → (peer, network URL).
    The first network wins a slot; a later one that wants it for another peer is a conflict."""
    tx: _RuleTable = {}
    rx: _RuleTable = {}
    for url, state in ordered:
        for rule in getattr(state, attr):
            if not rule.allow:
                continue
            table, outer, inner = ((tx, rule.dest, rule.source) if rule.direction == OUT
                                   else (rx, rule.source, rule.dest))
            first = table.setdefault(_prefix(outer), {}).setdefault(_prefix(inner), (rule.pk, url))
            if first[0] != rule.pk:
                conflicts.append(f"{url}: rule {rule} conflicts with network {first[1]} "
                                 f"(peer {first[0].hex()}), which wins")
    return tx, rx


def _freeze(table: Mapping[_Prefix, Mapping[_Prefix, tuple[bytes, str]]], bits: int = 32) -> _Lpm[_Lpm[bytes]]:
    return _Lpm({outer: _Lpm({inner: pk for inner, (pk, _url) in slot.items()}, bits)
                 for outer, slot in table.items()}, bits)


def _address_conflicts(ordered: Iterable[tuple[str, LocalState]]) -> list[str]:
    """Overlapping subnets and a shared overlay IP across networks (drasyl-rs merges silently)."""
    out = []
    seen: list[tuple[str, LocalState]] = []
    for url, state in ordered:
        for other_url, other in seen:
            if other.ip6 is not None and other.ip6 == state.ip6:
                out.append(f"{url}: this node's IPv6 address {state.ip6} is also its address in network {other_url}")
            if other.ip == state.ip:
                out.append(f"{url}: this node's IP {state.ip} is also its IP in network {other_url}")
            elif other.subnet.overlaps(state.subnet):
                out.append(f"{url}: subnet {state.subnet} overlaps {other.subnet} of network {other_url}; "
                           f"packets go to the longest matching prefix of either")
        seen.append((url, state))
    return out
