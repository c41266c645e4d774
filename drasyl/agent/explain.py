"""What the agent tells its user about super peers and peers: a state and the reason for it.

``status`` must not look healthy when nothing works: a super peer that never answered is
``no answer`` with the likely causes, not a row of dashes; a member the node cannot reach is
``unreachable`` with the reason (a policy, no super peer to relay through, no packet back),
not ``relayed``. These functions turn the node's peer table rows
(:class:`~drasyl.node.events.PeerInfo`) and what the agent knows (policies, the super peer
relaying now) into those words; the daemon puts them into ``status`` and logs each change
once. Pure: no I/O, no clock (the rows carry their ages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..node.events import DIRECT, TCP_PATH, PeerInfo
from ..urls import format_host_port

#: Why a super peer stays silent; our HELLOs cannot tell these apart (it answers none of them).
SILENT_CAUSES = ("a wrong publicKey or networkId in super_peers, UDP to it blocked on the way, "
                 "or the super peer is down")
#: Sent to a peer within this many seconds, nothing back for :data:`NO_ANSWER_S` longer: no answer.
RECENT_TX_S = 30.0
NO_ANSWER_S = 10.0
#: A hole punch younger than this is still being tried.
PUNCH_WINDOW_S = 10.0

REGISTERED = "registered"
TCP_FALLBACK = "tcp fallback"
NO_ANSWER = "no answer"
UNREACHABLE = "unreachable"


def super_peer_state(row: PeerInfo | None) -> tuple[str, str]:
    """(state, reason) of one super peer; ``row`` None: it has no entry (yet)."""
    if row is None:
        return NO_ANSWER, "not contacted yet"
    silent = "" if row.silent_s is None else f" for {row.silent_s:.0f} s"
    if row.path == TCP_PATH and row.rtt_ms is None:  # connected, but no HELLO answered over it
        return NO_ANSWER, f"no answer over UDP{silent} nor over TCP (connected): {SILENT_CAUSES}"
    if row.path == TCP_PATH:
        return TCP_FALLBACK, f"registered over TCP: UDP unanswered{silent}, RTT {row.rtt_ms:.1f} ms"
    if row.path == "udp":
        rtt = "" if row.rtt_ms is None else f", RTT {row.rtt_ms:.1f} ms"
        return REGISTERED, f"registered over UDP{rtt}"
    if row.silent_s is None:
        return NO_ANSWER, "its address is not resolved yet (DNS), or no local address can reach it"
    return NO_ANSWER, f"no answer{silent}: {SILENT_CAUSES}"


@dataclass(frozen=True)
class PeerPath:
    state: str  # direct, relayed, tcp or unreachable
    cause: str | None  # unreachable: "policy", "refused", "no relay" or "no answer" (stable, for scripts)
    reason: str | None  # the cause in words, with its numbers
    via: str | None  # the super peer (public key hex) relaying, for relayed and tcp


def peer_path(row: PeerInfo | None, allowed: bool, relay: str | None, relay_registered: bool,
              refused: str | None = None) -> PeerPath:
    """How this node reaches one member. ``allowed``: a policy lets them talk; ``relay``: the
    super peer relaying now (public key hex) and whether it is registered; ``refused``: why
    the node has no entry for the peer (e.g. its peer table is full)."""
    if not allowed:
        return PeerPath(UNREACHABLE, "policy", "no [[policy]] of the network lets this node and the peer talk",
                        None)
    if row is None:
        return PeerPath(UNREACHABLE, "refused", refused or "the node has no entry for it", None)
    if row.path == DIRECT:
        return PeerPath(DIRECT, None, None, None)
    if not relay_registered:
        return PeerPath(UNREACHABLE, "no relay", "no direct path, and no super peer is registered to relay "
                                                 "through (see the super peers)", None)
    if (row.app_tx_s is not None and row.app_tx_s <= RECENT_TX_S
            and (row.last_rx_s is None or row.last_rx_s - row.app_tx_s > NO_ANSWER_S)):
        since = "never" if row.last_rx_s is None else f"not for {row.last_rx_s:.0f} s"
        return PeerPath(UNREACHABLE, "no answer",
                        f"no answer through the super peer (packets sent, none back: {since}); the peer is "
                        "down, or is not registered at this super peer (no common super peer)", relay)
    return PeerPath(row.path, None, None, relay)


def punch_result(row: PeerInfo | None) -> str | None:
    """The outcome of the last hole punch (UNITE) for a peer; None: never tried."""
    if row is None or row.unite_s is None:
        return None
    if row.path == DIRECT:
        return "direct"
    if row.unite_s < PUNCH_WINDOW_S:
        return "trying"
    return "no direct path (a NAT that maps each destination differently, or UDP filtered)"


#: Our NAT's mapping as the node learned it (:meth:`NodeCore.nat_role`), in words.
NAT_MAPPINGS = {
    "easy": "endpoint-independent or no NAT: hole punching works; towards a peer behind a symmetric "
            "NAT this node probes (birthday)",
    "hard": "endpoint-dependent (symmetric NAT): direct only to peers whose NAT is not symmetric (by "
            "probing), or through a port mapping on either router; between two such NATs, relayed",
    None: "unknown: fewer than two super peers on different addresses answered STUN (drasyl-rs super "
          "peers do not), so this node does not probe",
}


def nat_status(core: Any) -> dict[str, Any]:
    """``status["nat"]``: the mapping behaviour, and what probing has done so far."""
    role = core.nat_role() if core.config.probing else None
    return {"mapping": role, "summary": NAT_MAPPINGS[role] if core.config.probing else "probing is off",
            "probing": core.config.probing, "probe_stats": dict(sorted(core.probe_stats.items())),
            "advertised": [format_host_port(*e) for e in core.advertised]}
