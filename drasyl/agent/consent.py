"""What the local user allowed: the one place between what networks ask for and the host.

A network config is written by someone else (whoever runs the network, or anyone on an
``http://`` path) and may only describe its overlay. :func:`decide` takes every enabled
network's :class:`~drasyl.agent.policy.LocalState` in config.toml order, the user's
:class:`~drasyl.agent.config.Consent` per network and the :class:`HostFacts` (the host's own
routes, the addresses that must stay on the underlay, names the host already has) and returns
the states the agent may apply plus, per network, what was refused and why. Rules:

- a network whose ``network`` is shorter than /8, overlaps a route of the host other than the
  default route (a connected LAN, another VPN), contains a protected address (a super peer, a
  config server, an underlay next hop) or overlaps an earlier network is refused as a whole;
- a route (this node not its gateway) is refused when it covers a protected address (always),
  is a default or split-default route (shorter than /8: only with ``exit_node`` naming its
  gateway; the kernel then gets the route minus the protected addresses, cut into the
  prefixes that remain, so those stay on the underlay), overlaps a route of the
  host other than the default one (only with ``accept_routes``), or lies inside an earlier
  network's subnet or accepted route (it would take their addresses over);
- where the config names this node the gateway of a route, the node forwards to it only when
  the destination lies in ``serve_routes``;
- a hostname is refused when it is reserved (``localhost``, ``wpad``, …), this host's own
  name, a name the host already has (hosts file lines drasyl does not manage), or was claimed
  by an earlier network.

- the IPv6 part of a network (its ``network6`` prefix, address, IPv6 rules, routes and names)
  is refused, and the network stays IPv4-only, when the prefix overlaps a route of the host
  (its ULA LAN, another VPN) or an earlier network's prefix; IPv6 names follow their IPv4
  name; a route's ``dest6`` is refused like a ``dest``: when shorter than /16 (no IPv6 exit
  node), covering a super peer's IPv6 address, overlapping a host route without
  ``accept_routes``, or lying inside an earlier network's IPv6 prefix or route; forwarding to
  it needs it in ``serve_routes``.

Earlier means listed earlier in config.toml (``add`` appends: joined first); the URL plays no
part, so a later admin cannot win by choosing one. A refused route also loses its access
rules, so its gateway cannot inject packets from the route's addresses either. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .config import Consent
from .netconfig import NetworkConfig
from .policy import KernelRoute, LocalState, rules6_without

#: Prefixes shorter than this are default or split-default routes (0/0, 0/1 + 128/1, …).
MIN_PREFIX = 8
#: IPv6 routes shorter than this are refused (2000::/3 and the like: no IPv6 exit node).
MIN_PREFIX6 = 16
#: Names no network may claim: they already mean something on every host.
RESERVED_NAMES = frozenset({"localhost", "localdomain", "wpad", "broadcasthost", "ip6-localhost",
                            "ip6-loopback", "ip6-allnodes", "ip6-allrouters", "isatap"})


@dataclass(frozen=True)
class HostFacts:
    """The host as it is without us (read by the host adapter, resolved by the daemon)."""

    #: IPv4 routes of the main table through other devices: (destination, gateway or None).
    routes: tuple[tuple[IPv4Network, IPv4Address | None], ...] = ()
    #: Addresses that must stay on the underlay: super peers, network config servers.
    protected: frozenset[IPv4Address] = frozenset()
    #: Names the host already resolves (own hostname, unmanaged hosts-file lines); lower case.
    names: frozenset[str] = frozenset()
    #: Destinations of the host's own IPv6 routes (no default, no link-local).
    routes6: tuple[IPv6Network, ...] = ()
    #: IPv6 addresses that must stay on the underlay (super peers).
    protected6: frozenset[IPv6Address] = frozenset()

    @property
    def next_hops(self) -> frozenset[IPv4Address]:
        return frozenset(gw for _dest, gw in self.routes if gw is not None)


@dataclass(frozen=True)
class Request:
    """One enabled network as the daemon knows it."""

    key: str
    shown: str  # URL as shown to users (password masked)
    consent: Consent
    state: LocalState
    config: NetworkConfig
    #: The addresses its config server resolved to (protected for every network).
    server: frozenset[IPv4Address] = frozenset()


@dataclass(frozen=True)
class Decision:
    #: Network key → what may be applied (networks refused as a whole are absent).
    states: dict[str, LocalState] = field(default_factory=dict)
    #: Network key → one line per refused thing (the network itself, routes, names, forwarding).
    refused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Claims of a later network on what an earlier one has (also in ``refused``).
    conflicts: tuple[str, ...] = ()


class _Claims:
    """Prefixes and names accepted so far, with the network that claimed them."""

    def __init__(self) -> None:
        self.prefixes: list[tuple[int, int, IPv4Network, str]] = []  # first, last, prefix, network
        self.names: dict[str, str] = {}

    def prefix_owner(self, net: IPv4Network, inside_only: bool = False) -> tuple[IPv4Network, str] | None:
        """The first claim ``net`` overlaps (``inside_only``: lies inside, i.e. would take over)."""
        first, last = _span(net)
        if inside_only:
            return next(((p, o) for lo, hi, p, o in self.prefixes if lo <= first and last <= hi), None)
        return next(((p, o) for lo, hi, p, o in self.prefixes if lo <= last and first <= hi), None)

    def add_prefix(self, net: IPv4Network, owner: str) -> None:
        self.prefixes.append((*_span(net), net, owner))


def decide(requests: Sequence[Request], facts: HostFacts) -> Decision:
    """The states to apply and everything refused (module docstring), first network first."""
    host_routes = [(_span(dest), dest, gw) for dest, gw in facts.routes if dest.prefixlen > 0]
    protected = facts.protected | facts.next_hops | {a for r in requests for a in r.server}
    claims = _Claims()
    claims6: list[tuple[IPv6Network, str]] = []
    decision = Decision()
    conflicts: list[str] = []
    for req in requests:
        refused: list[str] = []
        reason = _network_refusal(req.state.subnet, host_routes, protected, claims)
        if reason is not None:
            refused.append(f"network {req.state.subnet} refused: {reason}")
            if reason.startswith("overlaps network"):
                conflicts.append(f"{req.shown}: {refused[-1]}")
            decision.refused[req.key] = tuple(refused)
            continue
        claims.add_prefix(req.state.subnet, req.shown)
        dropped: set[IPv4Network] = set()
        routes = []
        for route in req.state.routes:
            why, conflict = _route_refusal(route.dest, route.gw, req, host_routes, protected, claims)
            if why is None:
                routes += _around(route, [a for a in protected if a in route.dest])
                claims.add_prefix(route.dest, req.shown)
                continue
            dropped.add(route.dest)
            refused.append(f"route {route.dest} via {route.gw} refused: {why}")
            if conflict:
                conflicts.append(f"{req.shown}: {refused[-1]}")
        served = _consented(req.state.served, req.consent.serve_routes, dropped, refused)
        names = []
        for ip, name in req.state.hostnames:
            folded = name.lower()
            why = _name_refusal(folded, facts.names, claims.names)
            if why is None:
                claims.names[folded] = req.shown
                names.append((ip, name))
                continue
            refused.append(f"name {name!r} ({ip}) refused: {why}")
            if folded in claims.names:
                conflicts.append(f"{req.shown}: {refused[-1]}")
        state = req.state
        if dropped or len(names) != len(state.hostnames) or routes != list(state.routes):
            rules = tuple(r for r in state.access_rules if r.source not in dropped and r.dest not in dropped)
            state = replace(state, routes=tuple(sorted(routes, key=lambda r: r.dest)), served=tuple(served),
                            hostnames=tuple(names), access_rules=rules)
        state = _ipv6_part(req, state, facts, claims6, refused, conflicts)
        decision.states[req.key] = state
        if refused:
            decision.refused[req.key] = tuple(refused)
    return replace(decision, conflicts=tuple(conflicts))


def _ipv6_part(req: Request, state: LocalState, facts: HostFacts, claims6: list[tuple[IPv6Network, str]],
               refused: list[str], conflicts: list[str]) -> LocalState:
    """``state`` with its IPv6 part if the host allows it (module docstring), else without."""
    if state.subnet6 is None:
        return state
    why = None
    overlap = next((dest for dest in facts.routes6 if dest.overlaps(state.subnet6)), None)
    if overlap is not None:
        why = f"overlaps the host's route {overlap} (a LAN or another VPN)"
    owner = next(((p, o) for p, o in claims6 if p.overlaps(state.subnet6)), None)
    if why is None and owner is not None:
        why = f"overlaps network {owner[1]} ({owner[0]}), joined earlier"
    if why is not None:
        refused.append(f"IPv6 network {state.subnet6} refused (IPv4 only): {why}")
        if owner is not None and overlap is None:
            conflicts.append(f"{req.shown}: {refused[-1]}")
        return replace(state, subnet6=None, ip6=None, access_rules6=(), hostnames6=())
    claims6.append((state.subnet6, req.shown))
    accepted = {name.lower() for _ip, name in state.hostnames}
    if len(accepted) != len(state.hostnames6) or any(n.lower() not in accepted for _ip, n in state.hostnames6):
        state = replace(state, hostnames6=tuple(h for h in state.hostnames6 if h[1].lower() in accepted))
    dropped: set[IPv6Network] = set()
    routes6 = []
    for route in state.routes6:
        why = _route6_refusal(route.dest, req, facts, claims6)
        if why is None:
            routes6.append(route)
            claims6.append((route.dest, req.shown))
            continue
        dropped.add(route.dest)
        refused.append(f"route {route.dest} via {route.gw} refused: {why}")
        if "joined earlier" in why:
            conflicts.append(f"{req.shown}: {refused[-1]}")
    served6 = _consented(state.served6, req.consent.serve_routes, dropped, refused)
    if dropped:
        state = replace(state, routes6=tuple(routes6), served6=tuple(served6),
                        access_rules6=rules6_without(state.access_rules6, dropped))
    return state


def _route6_refusal(dest: IPv6Network, req: Request, facts: HostFacts,
                    claims6: list[tuple[IPv6Network, str]]) -> str | None:
    if dest.prefixlen < MIN_PREFIX6:
        return f"shorter than /{MIN_PREFIX6}: IPv6 default or exit routes are not accepted"
    covered = sorted(a for a in facts.protected6 if a in dest)
    if covered:
        return f"it covers {covered[0]}, which must stay on the underlay (a super peer)"
    if not req.consent.accept_routes:
        overlap = next((r for r in facts.routes6 if r.overlaps(dest)), None)
        if overlap is not None:
            return (f"it overlaps the host's route {overlap}; set accept_routes = true for this network "
                    f"in config.toml to allow that")
    owner = next(((p, o) for p, o in claims6 if dest.subnet_of(p)), None)
    if owner is not None:
        return f"it lies inside {owner[0]} of network {owner[1]}, joined earlier"
    return None


def _consented(dests: Iterable[IPv4Network | IPv6Network], serve_routes: Sequence[IPv4Network | IPv6Network],
               dropped: set, refused: list[str]) -> list:
    """The ``dests`` this node forwards to: those inside its ``serve_routes`` (of the same IP
    version); the others are added to ``dropped`` with a line in ``refused``."""
    served = []
    for dest in dests:
        if any(allowed.version == dest.version and dest.subnet_of(allowed) for allowed in serve_routes):
            served.append(dest)
        else:
            dropped.add(dest)
            refused.append(f"forwarding to {dest} refused: this node is its gateway in the network config; "
                           f"add it to serve_routes of this network in config.toml to forward")
    return served


def _around(route: KernelRoute, keep_out: list[IPv4Address]) -> list[KernelRoute]:
    """The route as kernel routes that leave ``keep_out`` (an exit route's protected addresses)
    to the host's other routes: at most 32 more specific prefixes per address."""
    pieces = [route.dest]
    for address in keep_out:
        host = IPv4Network(address)
        pieces = [p for piece in pieces for p in (piece.address_exclude(host) if host.subnet_of(piece) else (piece,))]
    return [KernelRoute(dest, route.gw) for dest in pieces]


def _network_refusal(subnet: IPv4Network, host_routes, protected: Iterable[IPv4Address],
                     claims: _Claims) -> str | None:
    if subnet.prefixlen < MIN_PREFIX:
        return f"shorter than /{MIN_PREFIX}, it would take over the host's default route"
    covered = sorted(a for a in protected if a in subnet)
    if covered:
        return f"contains {covered[0]}, which must stay on the underlay (a super peer, config server or next hop)"
    overlap = _host_overlap(subnet, host_routes)
    if overlap is not None:
        return f"overlaps the host's route {overlap} (a connected LAN or another VPN)"
    owner = claims.prefix_owner(subnet)
    if owner is not None:
        return f"overlaps network {owner[1]} ({owner[0]}), joined earlier"
    return None


def _route_refusal(dest: IPv4Network, gw: IPv4Address, req: Request, host_routes, protected: Iterable[IPv4Address],
                   claims: _Claims) -> tuple[str | None, bool]:
    """(why the route is refused or None, whether it is a conflict with an earlier network)."""
    exit_route = dest.prefixlen < MIN_PREFIX
    if exit_route and not _is_exit_node(req, gw):
        return "a default or split-default route; only accepted with exit_node naming its gateway in config.toml", False
    covered = sorted(a for a in protected if a in dest)
    if covered and not exit_route:
        return f"it covers {covered[0]}, which must stay on the underlay (a super peer, config server or next hop)", False
    if not req.consent.accept_routes and not exit_route:
        overlap = _host_overlap(dest, host_routes)
        if overlap is not None:
            return (f"it overlaps the host's route {overlap}; set accept_routes = true for this network "
                    f"in config.toml to allow that"), False
    owner = claims.prefix_owner(dest, inside_only=True)  # a wider route takes nothing: longest prefix wins
    if owner is not None:
        return f"it lies inside {owner[0]} of network {owner[1]}, joined earlier", True
    return None, False


def _is_exit_node(req: Request, gw: IPv4Address) -> bool:
    chosen = req.consent.exit_node
    if chosen is None:
        return False
    node = next((n for n in req.config.nodes if n.ip == gw), None)
    return node is not None and chosen in (node.pk.hex(), node.hostname.lower())


def _name_refusal(folded: str, host_names: frozenset[str], claimed: dict[str, str]) -> str | None:
    if folded in RESERVED_NAMES:
        return "a reserved name"
    if folded in host_names:
        return "the host already has this name (its own hostname or a line in the hosts file)"
    if folded in claimed:
        return f"network {claimed[folded]}, joined earlier, has this name"
    return None


def _host_overlap(net: IPv4Network, host_routes) -> IPv4Network | None:
    first, last = _span(net)
    return next((dest for (lo, hi), dest, _gw in host_routes if lo <= last and first <= hi), None)


def _span(net: IPv4Network) -> tuple[int, int]:
    first = int(net.network_address)
    return first, first + net.num_addresses - 1
