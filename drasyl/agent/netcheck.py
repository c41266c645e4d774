"""``drasyl-agent netcheck``: what the network between this node and its super peers allows.

Run inside the agent (``GET /netcheck``), because the agent knows the super peers, their
resolved addresses, its registrations and the endpoints it advertises. Per super peer:

- **UDP**: the registration (the node's HELLO/ACK path and its median RTT; not counted once
  its latest HELLO went unanswered for :data:`SILENT_US`), plus a STUN Binding round trip;
- **TCP**: a connect to its ``tcpPort``, timed, 3 s at most; no drasyl frame is sent;
- **mapping**: the public (ip, port) the super peer sees. drasyl super peers never reveal a
  node's observed address (spec §6.1), so this needs STUN, which only our ``drasyl-sp``
  answers (:mod:`drasyl.stun`); a drasyl-rs super peer leaves the mapping unknown.

Mapping behaviour: Binding requests go from ONE fresh ephemeral UDP socket, bound to the
local IP the node uses toward the super peers, to every super peer (IPv4 and, separately,
IPv6). The same mapped (ip, port) for every destination is an endpoint-independent ("cone")
mapping, in which hole punching works; a different one per destination is an
endpoint-dependent mapping (a symmetric NAT): direct paths then only form with peers that
have a public address or a cone NAT whose filter lets ours in, so expect relaying. A mapped
address equal to the local one means no NAT. One answering destination cannot tell the two
apart. :func:`classify` is that rule, pure.

Bounded: STUN waits :data:`STUN_TIMEOUT_S` per attempt with :data:`STUN_RETRIES` retries,
TCP :data:`TCP_TIMEOUT_S`, all in parallel, so a netcheck takes at most ~3 s.

``GET /netcheck`` answers (``drasyl-agent netcheck --json`` prints it)::

    {
      "ok": true,                                 # some super peer answered (UDP or TCP)
      "super_peers": [{
          "public_key": "<64 hex>", "address": "host:22527", "tcp_address": "203.0.113.1:443",
          "udp": {"reachable": bool,              # registered over UDP or answered STUN
                  "registered": bool, "rtt_ms": float|null,   # the node's HELLO/ACK path
                  "stun": bool|null,              # answered STUN (null: not asked, no address)
                  "stun_rtt_ms": float|null,
                  "mapped": "198.51.100.21:40000"|null},      # IPv4 mapping it saw
          "udp6": {… as "udp", for an IPv6 address of the super peer; null without one},
          "tcp": {"reachable": bool, "rtt_ms": float|null, "error": str|null},
          "note": "…"|null,                       # e.g. mapping unknown (does not answer STUN)
      }],
      "endpoints": ["10.1.0.2:22527", …],         # advertised in HELLOs (what peers try first)
      (also "ipv6": {…, "overlay": {"device": bool, "addresses": ["fd…"], "peers": 2, "capable": 1,
                                    "summary": "on, fd…; 1 of 2 peers take IPv6 …"}}: IPv6 in the TUN)
      "mapping": {"4": {"verdict": "endpoint-independent"|"endpoint-dependent"|"none"|"unknown",
                        "local": "10.1.0.2:41234", "mapped": ["198.51.100.21:41234", …],
                        "summary": "…"},
                  "6": {…} or null},              # null: no local address / super peer of that family
      "port_mapping": null                         # [nat] port_mapping = false
                    | {"mapped": {protocol, gateway, internal, external, lifetime_s, expires_in_s, error}|null,
                       "gateway": null                # when mapped; else what the gateway answers (a probe
                                                      # that leaves no mapping): {"gateway": ip,
                                                      #  "pcp"|"natpmp"|"upnp": {"ok", "external_ip", "error"}}
                      },
      "ipv6": {"global_addresses": [...], "super_peer_answered": bool, "summary": "…"},
      "direct_paths": "…",                        # what the above means for direct paths
      "duration_s": 1.52
    }
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, Any, Sequence

from ..clock import monotonic_us
from ..net.interfaces import local_addresses
from ..node.core import HELLO_MAX_ENDPOINTS
from ..stun import binding_request, parse_binding_response
from ..transmit import Address
from ..urls import format_host_port

if TYPE_CHECKING:
    from .daemon import Agent

STUN_TIMEOUT_S = 0.5
STUN_RETRIES = 2
TCP_TIMEOUT_S = 3.0
#: A registration whose latest HELLO went unanswered this long no longer counts as UDP
#: working (an ACK takes one RTT; the node's own failover waits two HELLO intervals).
SILENT_US = 1_000_000

ENDPOINT_INDEPENDENT = "endpoint-independent"
ENDPOINT_DEPENDENT = "endpoint-dependent"
NO_NAT = "none"
UNKNOWN = "unknown"

SUMMARIES = {
    NO_NAT: "no NAT (public address): peers can reach this node directly",
    ENDPOINT_INDEPENDENT: "endpoint-independent mapping (cone-like): hole punching works",
    ENDPOINT_DEPENDENT: "endpoint-dependent mapping (symmetric NAT): direct paths only to peers with a public "
                        "address or a cone NAT whose filter lets ours in; expect relaying",
}
NO_STUN_NOTE = "mapping unknown (this super peer does not answer STUN; ours does)"


def classify(local: tuple[str, int], mapped: Sequence[tuple[str, int]]) -> tuple[str, str]:
    """(verdict, summary) from the addresses several destinations saw for one local socket."""
    if not mapped:
        return UNKNOWN, "mapping unknown: no super peer answered STUN"
    if all(m == local for m in mapped):
        return NO_NAT, SUMMARIES[NO_NAT]
    if len(mapped) == 1:
        return UNKNOWN, f"cannot tell (one destination): mapped to {format_host_port(*mapped[0])}"
    if len(set(mapped)) == 1:
        return ENDPOINT_INDEPENDENT, SUMMARIES[ENDPOINT_INDEPENDENT]
    return ENDPOINT_DEPENDENT, SUMMARIES[ENDPOINT_DEPENDENT]


class _StunSocket(asyncio.DatagramProtocol):
    """One ephemeral UDP socket; answers are matched to their requests by transaction id."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        tid = bytes(data[8:20])
        future = self.waiting.get(tid)
        if future is not None and not future.done():
            mapped = parse_binding_response(data, tid)
            if mapped is not None:
                future.set_result((mapped, tid, time.monotonic()))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable and the like: the request just goes unanswered

    async def ask(self, dest: Address) -> tuple[tuple[str, int], float] | None:
        """(mapped address, RTT ms) from ``dest``, or None after 1 + :data:`STUN_RETRIES` tries."""
        future = asyncio.get_running_loop().create_future()
        sent: dict[bytes, float] = {}
        try:
            for _ in range(1 + STUN_RETRIES):
                request, tid = binding_request()
                self.waiting[tid] = future
                sent[tid] = time.monotonic()
                try:
                    self.transport.sendto(request, dest)  # type: ignore[union-attr]
                except OSError:
                    pass
                done, _ = await asyncio.wait({future}, timeout=STUN_TIMEOUT_S)
                if done:
                    mapped, tid, at = future.result()
                    return mapped, round((at - sent[tid]) * 1000, 2)
            return None
        finally:
            for tid in sent:
                self.waiting.pop(tid, None)


async def _stun_family(family: int, targets: dict[bytes, Address]) -> tuple[dict | None, dict[bytes, Any]]:
    """Ask every super peer of one family from one fresh socket: (mapping, answers per super peer)."""
    if not targets:
        return None, {}
    source = _source_ip(family, next(iter(targets.values())))
    if source is None:
        return None, {}
    loop = asyncio.get_running_loop()
    try:
        transport, probe = await loop.create_datagram_endpoint(
            _StunSocket, local_addr=(source, 0), family=socket.AF_INET6 if family == 6 else socket.AF_INET)
    except OSError:
        return None, {}
    try:
        local = transport.get_extra_info("sockname")[:2]
        answers = await asyncio.gather(*(probe.ask(dest) for dest in targets.values()))
    finally:
        transport.close()
    by_sp = dict(zip(targets, answers))
    mapped = [a[0] for a in answers if a is not None]
    verdict, summary = classify(local, mapped)
    return {"verdict": verdict, "local": format_host_port(*local),
            "mapped": [format_host_port(*m) for m in mapped], "summary": summary}, by_sp


def _source_ip(family: int, dest: Address) -> str | None:
    """The local IP the kernel uses toward ``dest`` (the node's socket on that IP sends there)."""
    with socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(dest[:2])
        except OSError:
            return None
        return s.getsockname()[0]


async def _tcp(address: Address | None, port: int) -> dict[str, Any]:
    """Time a TCP connect to the super peer's tcpPort; closed at once, no drasyl frame sent."""
    if address is None:
        return {"reachable": False, "rtt_ms": None, "error": "no resolved address"}
    start = time.monotonic()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address[0], port), TCP_TIMEOUT_S)
    except asyncio.TimeoutError:
        return {"reachable": False, "rtt_ms": None, "error": f"no answer within {TCP_TIMEOUT_S:g} s"}
    except OSError as exc:
        return {"reachable": False, "rtt_ms": None, "error": exc.strerror or str(exc)}
    rtt = round((time.monotonic() - start) * 1000, 2)
    writer.transport.abort()
    return {"reachable": True, "rtt_ms": rtt, "error": None}


def _udp_row(registered: bool, rtt_ms: float | None, asked: bool, answer: Any) -> dict[str, Any]:
    return {"reachable": registered or answer is not None, "registered": registered, "rtt_ms": rtt_ms,
            "stun": (answer is not None) if asked else None,
            "stun_rtt_ms": answer[1] if answer is not None else None,
            "mapped": format_host_port(*answer[0]) if answer is not None else None}


async def run_netcheck(agent: Agent) -> dict[str, Any]:
    """The report described in the module docstring."""
    started = time.monotonic()
    core = agent.node.core  # type: ignore[union-attr]
    sps = list(core.super_peers.values())
    targets: dict[int, dict[bytes, Address]] = {4: {}, 6: {}}
    for sp in sps:
        for family in (4, 6):
            address = next((a for a in sp.addresses if (":" in a[0]) == (family == 6)), None)
            if address is not None:
                targets[family][sp.public_key] = address
    tcp_jobs = [_tcp(sp.addresses[0] if sp.addresses else None, sp.url.tcp_port) for sp in sps]
    results = await asyncio.gather(_port_mapping(agent), _stun_family(4, targets[4]), _stun_family(6, targets[6]),
                                   *tcp_jobs)
    port_mapping, (mapping4, stun4), (mapping6, stun6), tcp_rows = results[0], results[1], results[2], results[3:]
    rows = []
    now = monotonic_us()
    for sp, tcp in zip(sps, tcp_rows):
        best = sp.best_udp
        registered = best is not None and not (best.unanswered_since and now - best.unanswered_since > SILENT_US)
        rtt = round(best.median / 1000, 2) if best is not None and best.median is not None else None
        ipv6_path = registered and ":" in best.remote[0]  # type: ignore[union-attr]
        udp = _udp_row(registered and not ipv6_path, rtt if not ipv6_path else None,
                       sp.public_key in targets[4], stun4.get(sp.public_key))
        udp6 = _udp_row(ipv6_path, rtt if ipv6_path else None, True, stun6.get(sp.public_key)) \
            if sp.public_key in targets[6] else None
        asked = [r for r in (udp, udp6) if r is not None and r["stun"] is not None]
        note = None
        if asked and not any(r["stun"] for r in asked):
            note = NO_STUN_NOTE if any(r["registered"] for r in asked) else "no answer over UDP"
        rows.append({
            "public_key": sp.public_key.hex(), "address": format_host_port(sp.url.host, sp.url.port),
            "tcp_address": format_host_port(sp.addresses[0][0], sp.url.tcp_port) if sp.addresses else None,
            "udp": udp, "udp6": udp6, "tcp": tcp, "note": note,
        })
    global6 = local_addresses(socket.AF_INET6)
    answered6 = any(r["udp6"] and r["udp6"]["reachable"] for r in rows)
    report = {
        "ok": any(r["tcp"]["reachable"] or r["udp"]["reachable"] or (r["udp6"] or {}).get("reachable")
                  for r in rows),
        "super_peers": rows,
        "endpoints": [format_host_port(*a[:2]) for a in core.locals[:HELLO_MAX_ENDPOINTS]],
        "mapping": {"4": mapping4, "6": mapping6},
        "port_mapping": port_mapping,
        "ipv6": {"global_addresses": global6, "super_peer_answered": answered6,
                 "summary": _ipv6_summary(global6, answered6, bool(targets[6])),
                 "overlay": _overlay6(agent)},
    }
    report["direct_paths"] = _direct_paths(report)
    report["duration_s"] = round(time.monotonic() - started, 2)
    return report


async def _port_mapping(agent: Agent) -> dict[str, Any] | None:
    """The agent's mapping if it has one; else which protocols the gateway answers (a probe
    that leaves no mapping behind). None when port mapping is off."""
    protocols = agent.config.nat.port_mapping
    if not protocols:
        return None
    mapper = agent.port_mapper
    if mapper is not None and mapper.mapping is not None:
        return {"mapped": mapper.status(), "gateway": None}
    from ..portmap import probe

    return {"mapped": mapper.status() if mapper is not None else None, "gateway": await probe(protocols=protocols)}


def _overlay6(agent: Agent) -> dict[str, Any]:
    """IPv6 inside the overlay (not the underlay above): does the TUN carry it, this node's
    overlay IPv6 addresses, and how many peers have shown that they take IPv6."""
    tun = agent.tun
    device = tun is not None and tun.ipv6
    addresses = sorted(str(s.ip6) for s in agent.decision.states.values() if s.ip6 is not None) if device else []
    peers6 = agent.tables.peers6
    capable = len(peers6 & agent.ipv6.capable)
    if not device:
        summary = "off: the TUN carries IPv4 only on this host (no IPv6, or the MTU is below 1280)"
    else:
        summary = (f"on, {', '.join(addresses) or 'no address yet'}; {capable} of {len(peers6)} peers take IPv6"
                   + (" (the others: drasyl-rs or older agents, or not up)" if capable < len(peers6) else ""))
    return {"device": device, "addresses": addresses, "peers": len(peers6), "capable": capable, "summary": summary}


def _ipv6_summary(addresses: list[str], answered: bool, any_target: bool) -> str:
    if not addresses:
        return "no IPv6: this host has no global IPv6 address"
    if answered:
        return "IPv6 works: a super peer answered over IPv6"
    if not any_target:
        return "this host has IPv6, but no super peer has an IPv6 address"
    return "this host has IPv6, but no super peer answered over it"


def _direct_paths(report: dict[str, Any]) -> str:
    """One sentence: what the findings mean for direct paths to other nodes."""
    rows = report["super_peers"]
    if not report["ok"]:
        return "no super peer answered: no overlay traffic at all (check the firewall and the super_peers setting)"
    if not any(r["udp"]["reachable"] or (r["udp6"] or {}).get("reachable") for r in rows):
        return "UDP to the super peers is blocked: traffic goes over TCP via a super peer, no direct paths"
    mapping = report["mapping"]["4"]
    if mapping is None or mapping["verdict"] == UNKNOWN:
        text = "IPv4 mapping unknown (" + (mapping["summary"] if mapping else "no IPv4 probe") + ")"
    else:
        text = SUMMARIES[mapping["verdict"]]
    if report["ipv6"]["super_peer_answered"]:
        text += "; over IPv6 no NAT is in the way (a stateful firewall still needs the hole punch)"
    return text


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report ``drasyl-agent netcheck`` prints."""
    lines = ["Super peers:"]
    for r in report["super_peers"]:
        lines.append(f"  {r['public_key'][:12]}… {r['address']}")
        for name, udp in (("UDP ", r["udp"]), ("UDP6", r["udp6"])):
            if udp is None:
                continue
            if udp["reachable"]:
                parts = ["reachable"]
                if udp["registered"]:
                    parts.append(f"registered, RTT {_ms(udp['rtt_ms'])}")
                if udp["stun"]:
                    parts.append(f"STUN {_ms(udp['stun_rtt_ms'])}, sees us as {udp['mapped']}")
                lines.append(f"    {name} " + ", ".join(parts))
            else:
                lines.append(f"    {name} unreachable")
        tcp = r["tcp"]
        tcp_text = f"reachable, connect {_ms(tcp['rtt_ms'])}" if tcp["reachable"] else f"unreachable ({tcp['error']})"
        lines.append(f"    TCP  {r['tcp_address'] or '-'}: {tcp_text}")
        if r["note"]:
            lines.append(f"    {r['note']}")
    lines.append("Advertised endpoints: " + (", ".join(report["endpoints"]) or "none"))
    for family in ("4", "6"):
        mapping = report["mapping"][family]
        if mapping is not None:
            seen = ", ".join(mapping["mapped"]) or "-"
            lines.append(f"IPv{family} mapping: {mapping['summary']} (local {mapping['local']}, seen as {seen})")
    lines += _port_mapping_lines(report.get("port_mapping"))
    lines.append(f"IPv6: {report['ipv6']['summary']}")
    if report["ipv6"].get("overlay"):
        lines.append(f"IPv6 in the overlay: {report['ipv6']['overlay']['summary']}")
    lines.append(f"Direct paths: {report['direct_paths']}")
    if not report["ok"]:
        lines.append("No super peer answered.")
    return "\n".join(lines)


def _port_mapping_lines(pm: dict[str, Any] | None) -> list[str]:
    if pm is None:
        return ["Port mapping: off ([nat] port_mapping = false)"]
    mapped = pm.get("mapped") or {}
    if mapped.get("external"):
        return [f"Port mapping: {mapped['protocol'].upper()} on {mapped['gateway']} maps {mapped['internal']} to "
                f"{mapped['external']}"]
    probe = pm.get("gateway") or {}
    lines = [f"Port mapping: none yet; the gateway {probe.get('gateway') or '(unknown)'} answers:"]
    for name in ("pcp", "natpmp", "upnp"):
        answer = probe.get(name)
        if answer is not None:
            how = f"yes (external address {answer['external_ip']})" if answer.get("ok") else f"no ({answer.get('error')})"
            lines.append(f"  {name.upper() if name != 'natpmp' else 'NAT-PMP'}: {how}")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"
