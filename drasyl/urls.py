"""Super peer URLs: ``udp://host:port?publicKey=<hex>&networkId=<i32>&tcpPort=<u16>``.

Parsing follows drasyl-rs (spec §6.2.1): ``publicKey`` required, ``networkId`` defaults to 1,
``tcpPort`` to 443, unknown keys are ignored. Two deliberate differences: a value that does
not parse is a :class:`~drasyl.errors.ConfigError` instead of silently becoming the default,
and bracketed IPv6 literals work for UDP *and* TCP (drasyl-rs builds a broken TCP address
for them). Hosts are checked here, not at the first DNS lookup: an IP literal (IPv6 in
brackets) or a DNS name of valid labels. IP literals are kept in canonical form
(:func:`canonical_ip`), the form the kernel reports as a datagram's source, so addresses from
the configuration and from the network compare equal. :func:`parse_listen` reads the
``host:port`` of a listener. Pure: no name resolution here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import ConfigError, CryptoError
from .identity import parse_public_key

DEFAULT_NETWORK_ID = 1
DEFAULT_TCP_PORT = 443
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def canonical_ip(host: str) -> str:
    """``host`` in the form the kernel reports (``2001:DB8::0001`` -> ``2001:db8::1``); names as they are."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@dataclass(frozen=True)
class SuperPeerUrl:
    host: str
    port: int
    public_key: bytes
    network_id: int = DEFAULT_NETWORK_ID
    tcp_port: int = DEFAULT_TCP_PORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", _checked_host(self.host))

    @classmethod
    def parse(cls, text: str) -> SuperPeerUrl:
        url = text.strip()
        if not url.startswith("udp://"):
            raise ConfigError(f"super peer URL must start with 'udp://': {text!r}")
        address, _, query = url[len("udp://") :].partition("?")
        host, port = _split_host_port(address, text)
        params: dict[str, str] = {}
        for item in query.split("&"):
            key, _, value = item.partition("=")
            params[key] = value
        if "publicKey" not in params:
            raise ConfigError(f"super peer URL has no publicKey: {text!r}")
        try:
            public_key = parse_public_key(params["publicKey"])
        except CryptoError as exc:
            raise ConfigError(f"super peer URL {text!r}: {exc}") from None
        network_id = _int_param(params, "networkId", DEFAULT_NETWORK_ID, -(2**31), 2**31 - 1, text)
        tcp_port = _int_param(params, "tcpPort", DEFAULT_TCP_PORT, 1, 65535, text)
        return cls(host, port, public_key, network_id, tcp_port)

    def __str__(self) -> str:
        return (
            f"udp://{format_host_port(self.host, self.port)}?publicKey={self.public_key.hex()}"
            f"&networkId={self.network_id}&tcpPort={self.tcp_port}"
        )


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str, what: str = "API address") -> tuple[str, int] | None:
    """A listen address, ``host:port`` or ``[v6]:port`` (port 0: any); empty means none
    (for the agent's API: drasyl-rs then exits, [bug])."""
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        sep = ""
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{what} {text!r} is invalid: expected host:port or [ipv6]:port")
    return host, int(port)


def _split_host_port(address: str, text: str) -> tuple[str, int]:
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"super peer URL has a bad IPv6 address: {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"super peer URL needs host:port (IPv6 in brackets): {text!r}")
    if not host:
        raise ConfigError(f"super peer URL has no host: {text!r}")
    if address.startswith("[") and ":" not in host:
        raise ConfigError(f"super peer URL has a bad IPv6 address: {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"super peer URL has a bad port {port_text!r}: {text!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"super peer URL port out of range: {text!r}")
    return host, port


def _checked_host(host: str) -> str:
    """An IP literal in canonical form or a valid DNS name; else a ConfigError."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    # an all-numeric last label is a mistyped IPv4 address (999.1.1.1), never a name
    if len(name) > 253 or labels[-1].isdigit() or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(f"super peer URL has an invalid host {host!r} (neither an IP address nor a DNS name)")
    return host


def _int_param(params: dict[str, str], key: str, default: int, lo: int, hi: int, text: str) -> int:
    if key not in params:
        return default
    try:
        value = int(params[key])
    except ValueError:
        raise ConfigError(f"super peer URL: {key}={params[key]!r} is not a number: {text!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"super peer URL: {key}={value} is out of range: {text!r}")
    return value


def parse_super_peers(text: str) -> list[SuperPeerUrl]:
    """Whitespace-separated URLs; all must share one network id (spec §6.2.1)."""
    urls = [SuperPeerUrl.parse(part) for part in text.split()]
    if not urls:
        raise ConfigError("at least one super peer URL is required")
    if len({u.network_id for u in urls}) > 1:
        raise ConfigError("all super peers must have the same networkId")
    return urls
