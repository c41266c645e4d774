"""Events a node core emits for its application and requests for its I/O adapter.

Received payloads do not go through here: they are ``(sender, payload)`` tuples in
:attr:`NodeCore.inbox`, the hot path has no object per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

DIRECT = "direct"
RELAYED = "relayed"
TCP_PATH = "tcp"


@dataclass(frozen=True, slots=True)
class PathChanged:
    """How APPs to ``peer`` now travel: ``direct``, ``relayed`` (UDP via a super peer) or ``tcp``."""

    peer: bytes
    path: str
    rtt_us: int | None


@dataclass(frozen=True, slots=True)
class OpenTcp:
    """Adapter: connect to a super peer over TCP, then call ``tcp_connected``/``tcp_closed``."""

    super_peer: bytes
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class CloseTcp:
    """Adapter: close the TCP connection to this super peer (UDP answers again)."""

    super_peer: bytes


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A row of :meth:`NodeCore.peer_list`."""

    public_key: bytes
    role: str  # "super_peer" or "node"
    path: str  # direct / relayed / tcp for nodes; udp / tcp / none for super peers
    rtt_ms: float | None
    remote: tuple | None
    bytes_in: int = 0  # APP payload bytes (node peers)
    bytes_out: int = 0
    last_rx_s: float | None = None  # since the last APP from it; None: never (or no ``now``)
    unite_s: float | None = None  # node peers: since the last UNITE about it (a hole punch); None: never
    app_tx_s: float | None = None  # node peers: since the last APP sent to it; None: never
    silent_s: float | None = None  # super peers: since the oldest unanswered UDP HELLO; None: answering
    via: str | None = None  # node peers on a direct path: how it was found (punch, lan, mapping, probe)
    probing: str | None = None  # node peers: our role while probing towards it (hard, easy)


@dataclass(frozen=True, slots=True)
class OpenProbeSockets:
    """Adapter: bind ``count`` extra UDP sockets on ``ip`` (port 0), read them like the others,
    and report their addresses with ``probe_sockets_opened`` (see :mod:`drasyl.node.probing`)."""

    ip: str
    count: int


@dataclass(frozen=True, slots=True)
class CloseProbeSockets:
    """Adapter: close these probing sockets (no path uses them)."""

    locals: tuple
