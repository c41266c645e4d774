"""The ``drasyl-sp`` settings, read from the environment exactly as drasyl-rs names them.

Every variable of spec §8.1 is read with the same name, meaning and default, plus the log
level (``DRASYL_LOG_LEVEL``, or ``RUST_LOG`` in tracing's filter syntax). The result is a
frozen :class:`DaemonConfig`; :meth:`DaemonConfig.core_config` turns it into the
:class:`~drasyl.superpeer.core.SuperPeerConfig` the protocol core takes.

``DRASYL_STUN`` is ours (drasyl-rs has no STUN): whether the UDP listeners answer STUN
Binding requests (:mod:`drasyl.superpeer.core`). ``DRASYL_WORKERS`` is ours too: the number
of processes serving the same ports (:mod:`drasyl.superpeer.workers`; drasyl-rs is one
multi-threaded process).

Deliberate difference from drasyl-rs: a value that does not parse is a
:class:`~drasyl.errors.ConfigError` naming the variable and the bad value. drasyl-rs silently
uses the default instead (and panics on a bad listen address), so a typo such as
``DRASYL_NETWORK_ID=l`` would quietly put the super peer into network 1.

This module only parses; it opens no sockets and reads no files.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

from ..env import boolean, integer, invalid, log_level
from ..errors import ConfigError
from ..urls import format_host_port
from .core import HOUSEKEEPING_INTERVAL_MS, SuperPeerConfig

PREFIX = "DRASYL_"
U8_MAX = 2**8 - 1
U16_MAX = 2**16 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
#: Upper bound of ``DRASYL_WORKERS``: every worker holds every registration, so more workers
#: than cores only cost memory.
MAX_WORKERS = 64

#: (variable without the ``DRASYL_`` prefix, default as written in the environment, meaning).
#: The single source for ``--help`` and the documentation table.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("IDENTITY_FILE", "drasyl.identity", "identity file; generated (with PoW) if missing, never overwritten"),
    ("NETWORK_ID", "1", "network id (i32); nodes must use the same one"),
    ("UDP4_LISTEN", "0.0.0.0:22527", "IPv4 UDP listen address; empty disables"),
    ("UDP6_LISTEN", "[::]:22527", "IPv6 UDP listen address; empty disables (dual-stack if UDP4 is empty)"),
    ("TCP4_LISTEN", "0.0.0.0:8443", "IPv4 TCP fallback listen address; empty disables"),
    ("TCP6_LISTEN", "[::]:8443", "IPv6 TCP fallback listen address; empty disables (dual-stack if TCP4 is empty)"),
    ("ARM_MESSAGES", "true", "require armed (encrypted) messages: true or false"),
    ("SEND_UNITES", "5000", "ms between UNITEs per node pair; -1 never, 0 after every relayed APP"),
    ("MAX_PEERS", "8192", "peer table capacity; a power of two"),
    ("MIN_POW_DIFFICULTY", "24", "PoW bits required from nodes and used for a new identity"),
    ("HELLO_TIMEOUT", "30000", "ms after the last HELLO until a peer expires; also TCP idle timeout"),
    ("HELLO_MAX_AGE", "300000", "ms a HELLO's timestamp may lag behind our clock"),
    ("PEERS_PRINT_INTERVAL", "5000", "ms between peer tables on stdout; 0 disables"),
    ("PROMETHEUS_LISTEN", "127.0.0.1:9898", "host:port of the /metrics endpoint; empty disables"),
    ("PROMETHEUS_TOKEN", "", "if set, /metrics requires 'Authorization: Bearer <token>'"),
    ("LOG_LEVEL", "", "error, warn, info, debug, trace or off; wins over RUST_LOG"),
    ("STUN", "true", "answer STUN Binding requests on the UDP listeners (ours only; for drasyl-agent netcheck)"),
    ("WORKERS", "1", f"worker processes sharing the ports (SO_REUSEPORT, Linux), 1 to {MAX_WORKERS} (ours only)"),
    ("EVENT_LOOP", "auto", "auto (uvloop where installed), uvloop or asyncio (ours only)"),
    ("NATIVE", "auto", "auto (the C hot path where it was built), on (required) or off (ours only)"),
)
DEFAULTS = {name: default for name, default, _ in VARIABLES}

class ListenAddress(NamedTuple):
    host: str  # IP literal (IPv6 without brackets) or, for Prometheus only, a host name
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``drasyl-sp`` reads from its environment, parsed and checked.

    The defaults live in :data:`VARIABLES` only: ``DaemonConfig.from_env({})`` is the
    default configuration. Its repr never shows the Prometheus token.
    """

    identity_file: str
    network_id: int
    udp4_listen: ListenAddress | None
    udp6_listen: ListenAddress | None
    tcp4_listen: ListenAddress | None
    tcp6_listen: ListenAddress | None
    arm_messages: bool
    send_unites_ms: int
    max_peers: int
    min_pow_difficulty: int
    hello_timeout_ms: int
    hello_max_age_ms: int
    peers_print_interval_ms: int
    prometheus_listen: ListenAddress | None
    prometheus_token: str = field(repr=False)
    log_level: int
    stun: bool = True
    workers: int = 1
    #: Not read from the environment (drasyl-sp's is fixed too); tests shorten it.
    housekeeping_interval_ms: int = HOUSEKEEPING_INTERVAL_MS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DaemonConfig:
        """Parse ``env`` (normally ``os.environ``); unset variables take their defaults."""

        def raw(name: str) -> str:
            return env.get(PREFIX + name, DEFAULTS[name])

        max_peers = _integer(raw, "MAX_PEERS", 0, U64_MAX)
        if max_peers == 0 or max_peers & (max_peers - 1):
            raise _invalid("MAX_PEERS", raw("MAX_PEERS"), "must be a power of two greater than 0")
        return cls(
            identity_file=raw("IDENTITY_FILE"),
            network_id=_integer(raw, "NETWORK_ID", I32_MIN, I32_MAX),
            udp4_listen=_socket_address(raw, "UDP4_LISTEN", 4),
            udp6_listen=_socket_address(raw, "UDP6_LISTEN", 6),
            tcp4_listen=_socket_address(raw, "TCP4_LISTEN", 4),
            tcp6_listen=_socket_address(raw, "TCP6_LISTEN", 6),
            arm_messages=_boolean(raw, "ARM_MESSAGES"),
            send_unites_ms=_integer(raw, "SEND_UNITES", I32_MIN, I32_MAX),
            max_peers=max_peers,
            min_pow_difficulty=_integer(raw, "MIN_POW_DIFFICULTY", 0, U8_MAX),
            hello_timeout_ms=_integer(raw, "HELLO_TIMEOUT", 0, U64_MAX),
            hello_max_age_ms=_integer(raw, "HELLO_MAX_AGE", 0, U64_MAX),
            peers_print_interval_ms=_integer(raw, "PEERS_PRINT_INTERVAL", 0, U32_MAX),
            prometheus_listen=_socket_address(raw, "PROMETHEUS_LISTEN", None),
            prometheus_token=raw("PROMETHEUS_TOKEN"),
            log_level=log_level(env),
            stun=_boolean(raw, "STUN"),
            workers=_integer(raw, "WORKERS", 1, MAX_WORKERS),
        )

    def core_config(self) -> SuperPeerConfig:
        return SuperPeerConfig(
            network_id=self.network_id,
            arm_messages=self.arm_messages,
            send_unites_ms=self.send_unites_ms,
            max_peers=self.max_peers,
            min_pow_difficulty=self.min_pow_difficulty,
            hello_timeout_ms=self.hello_timeout_ms,
            hello_max_age_ms=self.hello_max_age_ms,
            housekeeping_interval_ms=self.housekeeping_interval_ms,
            stun=self.stun,
        )


def _integer(raw: Callable[[str], str], name: str, lo: int, hi: int) -> int:
    return integer(PREFIX + name, raw(name), lo, hi)


def _boolean(raw: Callable[[str], str], name: str) -> bool:
    return boolean(PREFIX + name, raw(name))


def _invalid(name: str, value: str, why: str) -> ConfigError:
    return invalid(PREFIX + name, value, why)


def _socket_address(raw: Callable[[str], str], name: str, version: int | None) -> ListenAddress | None:
    """``a.b.c.d:port`` (version 4), ``[v6]:port`` (6), or either or ``host:port`` (None).

    An empty value disables the listener.
    """
    value = raw(name)
    if not value:
        return None
    bracketed = value.startswith("[")
    if bracketed:
        host, bracket, port_text = value[1:].partition("]:")
        if not bracket:
            raise _invalid(name, value, "expected [IPv6 address]:port")
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not host or ":" in host:
            expected = "[IPv6 address]:port" if version == 6 else "address:port"
            raise _invalid(name, value, f"expected {expected}")
    try:
        ip_version = ipaddress.ip_address(host).version
    except ValueError:
        ip_version = None  # a host name: allowed for Prometheus, resolved when binding
    if bracketed and ip_version != 6:
        raise _invalid(name, value, f"{host!r} in brackets is not an IPv6 address")
    if version is not None and ip_version != version:
        raise _invalid(name, value, f"{host!r} is not an IPv{version} address")
    try:
        port = integer(PREFIX + name, port_text, 0, U16_MAX)
    except ConfigError:
        raise _invalid(name, value, f"port {port_text!r} is not between 0 and {U16_MAX}") from None
    return ListenAddress(host, port)
