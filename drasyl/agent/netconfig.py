"""Network configs (agent.md §3): TOML text → a validated, immutable :class:`NetworkConfig`.

Checks run in drasyl-rs' order and the first failure wins: TOML syntax, types and required
keys; duplicate public key, IP address, hostname (per node, in document order), duplicate
route destination; then per node "not in network", "reserved" (broadcast − 1), "invalid
hostname"; per route "is a host address", "gateway not found". The messages contain
drasyl-rs' wording and add the config's source, the ``[[node]]``/``[[route]]`` number and the
offending value. Unknown keys are ignored, as in drasyl-rs.

Deliberate differences (every config drasyl-rs loads still loads, except the last item):
- [bug] ``duplicate hostname`` names the hostname, not the IP;
- warnings (``NetworkConfig.warnings``, for the daemon to log) where drasyl-rs silently accepts
  something that rarely works: ``network`` with host bits set, a node IP equal to the network
  or broadcast address, a route destination overlapping the overlay subnet (its kernel route
  or policy entry captures overlay traffic), route/policy groups that no node has;
- rejected: a hostname with non-ASCII letters that Unicode lower-casing turns into ASCII
  (e.g. the Kelvin sign "K"), which drasyl-rs would accept and write into /etc/hosts;
- limits (a network config is untrusted input; drasyl-rs has none): the text at most
  :data:`MAX_TEXT_BYTES`, at most :data:`MAX_NODES` nodes, :data:`MAX_ROUTES` routes,
  :data:`MAX_POLICIES` policies, :data:`MAX_GROUPS` groups per entry of at most
  :data:`MAX_GROUP_LEN` characters, and a ``name`` of at most :data:`MAX_NAME_LEN` printable
  characters; the counts are checked before any entry is validated. Any failure of the TOML
  parser, a ``RecursionError`` from absurdly nested arrays included, is this config's error.
IPv6 (our addition; drasyl-rs ignores the two keys, so a shared config keeps working there):
every member also gets an overlay IPv6 address. An optional top-level ``network6`` (a ULA
prefix inside ``fc00::/7``, /48 to /120) and per-node ``ip6`` assign them; without
``network6`` the network gets the /64 :func:`derived_network6` (``fd`` + 40 bits of
SHA-256 over the IPv4 ``network`` as normalised CIDR, subnet id 0, RFC 4193), and every node
without ``ip6`` gets :func:`derived_ip6`: the prefix plus the leading bits of SHA-256 over its
public key as interface id. So every agent computes the same addresses from the config alone
and no admin has to assign them. The name is not hashed: renaming a network must not
renumber it. ``ip6`` is checked like ``ip`` (inside ``network6``, unique, not the network
address); a derived address that collides (only likely in a long ``network6`` prefix) is an
error asking for an explicit ``ip6``.
Pure: no I/O here (fetching is :mod:`drasyl.agent.fetch`, semantics :mod:`drasyl.agent.policy`).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from ..errors import ConfigError, CryptoError
from ..identity import parse_public_key

ALL_GROUPS = "ALL"
"""In a policy's groups, matches every node (also nodes without groups); no meaning in routes."""

MAX_TEXT_BYTES = 4 << 20
MAX_NODES = 16384
MAX_ROUTES = 1024
MAX_POLICIES = 1024
MAX_GROUPS = 64
MAX_GROUP_LEN = 64
MAX_NAME_LEN = 64

_CIDR = re.compile(r"([0-9.]+)/([0-9]{1,2})")
#: ``network6`` must be a unique local prefix (RFC 4193): the overlay never claims global addresses.
ULA = IPv6Network("fc00::/7")
MIN_PREFIX6, MAX_PREFIX6 = 48, 120
_HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME_RULE = "1-63 letters, digits or '-', not starting or ending with '-'"


class NetworkConfigError(ConfigError):
    """A network config does not parse or validate; ``str()`` names the source and the value."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"network config {source}: {reason}")
        self.source = source
        self.reason = reason


class _Invalid(Exception):
    """Raised inside the parser with the reason; wrapped with the source at the top."""


@dataclass(frozen=True)
class Node:
    pk: bytes
    ip: IPv4Address
    hostname: str
    groups: frozenset[str] = frozenset()
    #: Set for every node of a validated config (derived if not written). Not compared: a
    #: node is equal by its drasyl-rs fields (its address follows from them or from ``ip6``).
    ip6: IPv6Address | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Route:
    dest: IPv4Network
    gw: bytes
    groups: frozenset[str] = frozenset()
    """Empty: every node may use the route; else only members of one of these groups."""
    dest6: IPv6Network | None = None
    """The IPv6 prefix behind the same gateway, for the same groups (``dest6``; drasyl-rs ignores it)."""


@dataclass(frozen=True)
class Policy:
    source_groups: frozenset[str]
    destination_groups: frozenset[str]


@dataclass(frozen=True)
class NetworkConfig:
    subnet: IPv4Network
    name: str | None
    nodes: tuple[Node, ...]
    routes: tuple[Route, ...] = ()
    policies: tuple[Policy, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)
    source: str = field(default="", compare=False)
    subnet6: IPv6Network | None = None  # ``network6``, or derived from ``network``

    @cached_property
    def _by_pk(self) -> dict[bytes, Node]:
        return {node.pk: node for node in self.nodes}

    def node(self, pk: bytes) -> Node | None:
        return self._by_pk.get(pk)


def parse_network_config(text: str, source: str) -> NetworkConfig:
    """Parse and validate one network config. ``source`` names it in messages (no password!)."""
    return validate_network_config(load_toml(text, source), source)


def load_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML document of a network config; :class:`NetworkConfigError` if it is none.
    The agent parses in a child process instead (:mod:`drasyl.agent.isolate`): the same checks."""
    check_size(text, source)
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise toml_error(exc, source) from None


def check_size(text: str, source: str) -> None:
    if len(text) > MAX_TEXT_BYTES:  # characters ≤ bytes: the fetch has capped the bytes already
        raise NetworkConfigError(source, f"larger than {MAX_TEXT_BYTES >> 20} MiB")


def toml_error(exc: BaseException, source: str) -> NetworkConfigError:
    """What a failure of the TOML parser means for this config."""
    if isinstance(exc, RecursionError):
        return NetworkConfigError(source, "invalid TOML: nested too deeply")
    if isinstance(exc, tomllib.TOMLDecodeError):
        return NetworkConfigError(source, f"invalid TOML: {exc}")
    return NetworkConfigError(source, f"cannot be parsed ({type(exc).__name__})")


def validate_network_config(doc: dict[str, Any], source: str) -> NetworkConfig:
    """Validate a parsed network config (the checks of the module docstring)."""
    try:
        return _validate(doc, source)
    except _Invalid as exc:
        raise NetworkConfigError(source, str(exc)) from None


def _validate(doc: dict[str, Any], source: str) -> NetworkConfig:
    network_text = _get(doc, "network", str, "top level")
    subnet_addr, prefixlen = _cidr(network_text, "'network'")
    subnet = IPv4Network((subnet_addr, prefixlen), strict=False)
    name = _name(_get(doc, "name", str, "top level", required=False))
    node_tables = _tables(doc, "node", MAX_NODES)
    route_tables = _tables(doc, "route", MAX_ROUTES)
    policy_tables = _tables(doc, "policy", MAX_POLICIES)
    nodes = tuple(_node(table, i) for i, table in node_tables)
    _check_unique_nodes(nodes)
    route_specs = [_route(table, i) for i, table in route_tables]
    _check_unique_routes(route_specs)
    policies = tuple(_policy(table, i) for i, table in policy_tables)

    _check_nodes(nodes, subnet)
    routes = _checked_routes(route_specs, nodes)
    warnings = _warnings(network_text, subnet, subnet_addr, nodes, routes, policies)
    subnet6, nodes = _ipv6(doc, subnet, nodes)
    routes = _routes6(route_tables, routes)
    return NetworkConfig(subnet, name, nodes, routes, policies, warnings, source, subnet6)


def derived_network6(subnet: IPv4Network) -> IPv6Network:
    """The /64 ULA prefix of a network without ``network6``: ``fd`` + 40 bits of
    SHA-256("drasyl network6\n" + the IPv4 network as normalised CIDR) + subnet id 0."""
    global_id = hashlib.sha256(b"drasyl network6\n" + str(subnet).encode()).digest()[:5]
    return IPv6Network((int.from_bytes(b"\xfd" + global_id + b"\0\0") << 64, 64))


def derived_ip6(subnet6: IPv6Network, pk: bytes) -> IPv6Address:
    """A node's address in ``subnet6`` without ``ip6``: the prefix plus the leading host bits
    of SHA-256("drasyl ip6\n" + public key) (for a /64: the 64-bit interface id)."""
    host_bits = 128 - subnet6.prefixlen
    iid = int.from_bytes(hashlib.sha256(b"drasyl ip6\n" + pk).digest()[:16]) >> (128 - host_bits)
    return IPv6Address(int(subnet6.network_address) | iid)


def _ipv6(doc: dict[str, Any], subnet: IPv4Network, nodes: tuple[Node, ...]) -> tuple[IPv6Network, tuple[Node, ...]]:
    """``network6`` (or the derived prefix) and the nodes with their ``ip6`` (written or derived)."""
    text = _get(doc, "network6", str, "top level", required=False)
    subnet6 = derived_network6(subnet) if text is None else _network6(text)
    by_ip6: dict[IPv6Address, int] = {}
    out = []
    for i, (node, table) in enumerate(zip(nodes, _tables(doc, "node", MAX_NODES)), 1):
        where = f"[[node]] #{i}"
        written = _get(table[1], "ip6", str, where, required=False)
        if written is None:
            ip6 = derived_ip6(subnet6, node.pk)
        else:
            if text is None:
                raise _Invalid(f"{where}: 'ip6' needs 'network6' at the top level (the prefix it is in)")
            try:
                ip6 = IPv6Address(written)
            except ValueError:
                raise _Invalid(f"{where}: 'ip6' is not an IPv6 address like \"fd00:1::1\": {written!r}") from None
            if ip6 not in subnet6:
                raise _Invalid(f"{where}: IPv6 address {ip6} is not in network6 {subnet6}")
        if ip6 == subnet6.network_address:
            raise _Invalid(f"{where}: IPv6 address {ip6} is the network address of {subnet6} "
                           f"(subnet-router anycast); {'choose another ip6' if written else 'set ip6'}")
        if ip6 in by_ip6:
            how = "duplicate IPv6 address" if written else "derived IPv6 address collides"
            hint = "" if written else "; set 'ip6' for one of them"
            raise _Invalid(f"{where}: {how}: {ip6} (also [[node]] #{by_ip6[ip6]}){hint}")
        by_ip6[ip6] = i
        out.append(Node(node.pk, node.ip, node.hostname, node.groups, ip6))
    return subnet6, tuple(out)


def _routes6(tables: list[tuple[int, dict[str, Any]]], routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """The routes with their optional ``dest6``: an IPv6 prefix (no host bits), unique."""
    seen: dict[IPv6Network, int] = {}
    out = []
    for (i, table), route in zip(tables, routes):
        where = f"[[route]] #{i}"
        text = _get(table, "dest6", str, where, required=False)
        if text is None:
            out.append(route)
            continue
        try:
            if "/" not in text:
                raise ValueError(text)
            dest6 = IPv6Network(text, strict=False)
        except ValueError:
            raise _Invalid(f"{where}: 'dest6' must be an IPv6 network like \"fd00:50::/64\", got {text!r}") from None
        if IPv6Address(text.partition("/")[0]) != dest6.network_address:
            raise _Invalid(f"{where}: invalid network address: {text} is a host address (did you mean {dest6}?)")
        if dest6 in seen:
            raise _Invalid(f"{where}: duplicate route destination: {dest6} (also [[route]] #{seen[dest6]})")
        seen[dest6] = i
        out.append(Route(route.dest, route.gw, route.groups, dest6))
    return tuple(out)


def _network6(text: str) -> IPv6Network:
    try:
        net = IPv6Network(text, strict=False)
        if "/" not in text:
            raise ValueError(text)
    except ValueError:
        raise _Invalid(f"'network6' must be an IPv6 network like \"fd12:3456:789a::/64\", got {text!r}") from None
    if not net.subnet_of(ULA) or not MIN_PREFIX6 <= net.prefixlen <= MAX_PREFIX6:
        raise _Invalid(f"'network6' must be a unique local prefix (inside {ULA}) from /{MIN_PREFIX6} to "
                       f"/{MAX_PREFIX6}, got {text!r}")
    if IPv6Address(text.partition("/")[0]) != net.network_address:
        raise _Invalid(f"'network6' {text} has host bits set (did you mean {net}?)")
    return net


def _check_nodes(nodes: tuple[Node, ...], subnet: IPv4Network) -> None:
    reserved = int(subnet.broadcast_address) - 1
    for i, node in enumerate(nodes, 1):
        where = f"[[node]] #{i}"
        if node.ip not in subnet:
            raise _Invalid(f"{where}: IP address {node.ip} is not in network {subnet}")
        if int(node.ip) == reserved:
            raise _Invalid(f"{where}: IP address {node.ip} is reserved (broadcast - 1 of {subnet})")
        if not _valid_hostname(node.hostname):
            raise _Invalid(f"{where}: invalid hostname: {_shown(node.hostname)} ({_HOSTNAME_RULE})")


def _checked_routes(specs: list[_RouteSpec], nodes: tuple[Node, ...]) -> tuple[Route, ...]:
    known = {node.pk for node in nodes}
    routes = []
    for i, (dest_addr, dest_len, gw, groups) in enumerate(specs, 1):
        dest = IPv4Network((dest_addr, dest_len), strict=False)
        if dest.network_address != dest_addr:
            raise _Invalid(f"[[route]] #{i}: invalid network address: {dest_addr}/{dest_len} is a host "
                           f"address (did you mean {dest}?)")
        if gw not in known:
            raise _Invalid(f"[[route]] #{i}: gateway {gw.hex()} not found in nodes")
        routes.append(Route(dest, gw, groups))
    return tuple(routes)


def _node(table: dict[str, Any], i: int) -> Node:
    where = f"[[node]] #{i}"
    pk = _public_key(_get(table, "pk", str, where), where, "pk")
    ip = _ipv4(_get(table, "ip", str, where), f"{where}: 'ip'")
    hostname = _get(table, "hostname", str, where)
    return Node(pk, ip, hostname, _groups(table, "groups", where, required=False))


_RouteSpec = tuple[IPv4Address, int, bytes, frozenset[str]]


def _route(table: dict[str, Any], i: int) -> _RouteSpec:
    """The route as written: the host-address check comes after the duplicate check."""
    where = f"[[route]] #{i}"
    dest_addr, dest_len = _cidr(_get(table, "dest", str, where), f"{where}: 'dest'")
    gw = _public_key(_get(table, "gw", str, where), where, "gw")
    return dest_addr, dest_len, gw, _groups(table, "groups", where, required=False)


def _policy(table: dict[str, Any], i: int) -> Policy:
    where = f"[[policy]] #{i}"
    return Policy(_groups(table, "source_groups", where, required=True),
                  _groups(table, "destination_groups", where, required=True))


def _check_unique_nodes(nodes: tuple[Node, ...]) -> None:
    by_pk: dict[bytes, int] = {}
    by_ip: dict[IPv4Address, int] = {}
    by_hostname: dict[str, int] = {}
    for i, node in enumerate(nodes, 1):
        where = f"[[node]] #{i}"
        if node.pk in by_pk:
            raise _Invalid(f"{where}: duplicate public key: {node.pk.hex()} (also [[node]] #{by_pk[node.pk]})")
        by_pk[node.pk] = i
        if node.ip in by_ip:
            raise _Invalid(f"{where}: duplicate IP address: {node.ip} (also [[node]] #{by_ip[node.ip]})")
        by_ip[node.ip] = i
        folded = node.hostname.lower()
        if folded in by_hostname:
            raise _Invalid(f"{where}: duplicate hostname: {_shown(node.hostname)} (also [[node]] "
                           f"#{by_hostname[folded]}; hostnames are compared case-insensitively)")
        by_hostname[folded] = i


def _check_unique_routes(specs: list[_RouteSpec]) -> None:
    seen: dict[tuple[IPv4Address, int], int] = {}
    for i, (addr, length, _gw, _groups) in enumerate(specs, 1):
        if (addr, length) in seen:
            raise _Invalid(f"[[route]] #{i}: duplicate route destination: {addr}/{length} "
                           f"(also [[route]] #{seen[addr, length]})")
        seen[addr, length] = i


def _warnings(network_text: str, subnet: IPv4Network, subnet_addr: IPv4Address, nodes: tuple[Node, ...],
              routes: tuple[Route, ...], policies: tuple[Policy, ...]) -> tuple[str, ...]:
    """What drasyl-rs accepts but rarely works; reported, never rejected (module docstring)."""
    out = []
    if subnet_addr != subnet.network_address:
        out.append(f"'network' {network_text} has host bits set; using {subnet}")
    if subnet.prefixlen <= 30:
        for i, node in enumerate(nodes, 1):
            if node.ip in (subnet.network_address, subnet.broadcast_address):
                kind = "network" if node.ip == subnet.network_address else "broadcast"
                out.append(f"[[node]] #{i}: IP address {node.ip} is the {kind} address of {subnet}; "
                           f"other hosts may not reach it")
    members = {group for node in nodes for group in node.groups}
    for i, route in enumerate(routes, 1):
        if route.dest.overlaps(subnet):
            out.append(f"[[route]] #{i}: destination {route.dest} overlaps the overlay network {subnet}; "
                       f"overlay traffic to those addresses may be sent to the gateway")
        for group in sorted(route.groups - members):
            hint = " ('ALL' means every node only in policies)" if group == ALL_GROUPS else ""
            out.append(f"[[route]] #{i}: group {group!r} has no members{hint}")
    for i, policy in enumerate(policies, 1):
        for group in sorted((policy.source_groups | policy.destination_groups) - members - {ALL_GROUPS}):
            out.append(f"[[policy]] #{i}: group {group!r} has no members")
    return tuple(out)


def _valid_hostname(name: str) -> bool:
    return name.isascii() and _HOSTNAME.fullmatch(name.lower()) is not None


_TYPE_NAMES = {str: "a string", list: "an array", dict: "a table"}


def _get(table: dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    if key not in table:
        if required:
            raise _Invalid(f"{where}: missing required key '{key}'")
        return None
    value = table[key]
    if not isinstance(value, kind):
        raise _Invalid(f"{where}: '{key}' must be {_TYPE_NAMES[kind]}, got {_describe(value)}")
    return value


def _tables(doc: dict[str, Any], key: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _Invalid(f"'{key}' must be an array of tables ([[{key}]]), got {_describe(value)}")
    if len(value) > limit:
        raise _Invalid(f"{len(value)} [[{key}]] entries; at most {limit} are accepted")
    return list(enumerate(value, 1))


def _name(value: str | None) -> str | None:
    """The network's display name: shown in status and saved into config.toml, so bounded and printable."""
    if value is not None and (len(value) > MAX_NAME_LEN or not value.isprintable()):
        raise _Invalid(f"'name' must be at most {MAX_NAME_LEN} printable characters, got {_shown(value)}")
    return value


def _groups(table: dict[str, Any], key: str, where: str, required: bool) -> frozenset[str]:
    value = _get(table, key, list, where, required)
    if value is None:
        return frozenset()
    if len(value) > MAX_GROUPS:
        raise _Invalid(f"{where}: '{key}' has {len(value)} groups; at most {MAX_GROUPS} are accepted")
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"{where}: '{key}' must be an array of strings, got {_describe(item)} in it")
        if len(item) > MAX_GROUP_LEN or not item.isprintable():
            raise _Invalid(f"{where}: '{key}': a group name must be at most {MAX_GROUP_LEN} printable "
                           f"characters, got {_shown(item)}")
    return frozenset(value)


def _public_key(text: str, where: str, key: str) -> bytes:
    try:
        return parse_public_key(text)
    except CryptoError as exc:
        raise _Invalid(f"{where}: '{key}': {exc}") from None


def _ipv4(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise _Invalid(f"{what} is not an IPv4 address like \"10.1.0.1\": {text!r}") from None


def _cidr(text: str, what: str) -> tuple[IPv4Address, int]:
    """``a.b.c.d/len`` as written (host bits kept), like drasyl-rs' Ipv4Net."""
    match = _CIDR.fullmatch(text)
    try:
        if match is None or int(match[2]) > 32:
            raise ValueError(text)
        return IPv4Address(match[1]), int(match[2])
    except ValueError:
        raise _Invalid(f"{what} must be an IPv4 network like \"10.1.0.0/24\", got {text!r}") from None


def _describe(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    kind = kinds.get(type(value), type(value).__name__)
    return f"{kind} {_shown(value)}" if kind not in ("array", "table") else kind


def _shown(value: Any, limit: int = 100) -> str:
    """``repr`` for messages, cut at ``limit`` characters: a config may carry megabytes in one string."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(str(value))} characters)"
