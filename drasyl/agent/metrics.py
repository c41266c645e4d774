"""The agent's opt-in Prometheus endpoint (``[metrics] listen`` in config.toml).

Every family is made from one :meth:`Agent.status` dict (the ``status --json`` schema in
:mod:`.api`) taken when Prometheus scrapes, so the metrics never disagree with the status
and the data path does no work for them. The status is taken in the event loop (the agent's
state is read without locks) and formatted in a worker thread
(:class:`~drasyl.metrics_http.MetricsEndpoint`, shared with the super peer). Units are
Prometheus' (seconds, not the status' milliseconds); ``null`` in the status means no sample
(RTT, time since the last packet) or an empty label value (hostname, subnet).

This module imports prometheus_client: the daemon imports it only when metrics are on.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Iterator, Protocol

from prometheus_client import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ..metrics_http import MetricsEndpoint
from ..urls import format_host_port
from .api import AgentError
from .config import MetricsSettings

log = logging.getLogger("drasyl.agent")

PEER_PATHS = ("direct", "relayed", "tcp")
SUPER_PEER_TRANSPORTS = ("udp", "tcp")
NETWORK_STATES = ("active", "disabled", "pending", "not a member", "error", "refused")


class StatusSource(Protocol):
    """What the metrics read: the agent, or anything with its ``status()``."""

    def status(self) -> dict[str, Any]: ...


class StatusCollector:
    """prometheus_client's collector API over one status dict (one scrape)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status
        yield InfoMetricFamily("drasyl_agent", "This agent: package version and public key.",
                               value={"version": status["version"], "public_key": status["public_key"]})
        yield from _super_peers(status["super_peers"])
        yield from _peers(status["peers"])
        yield from _networks(status["networks"])
        yield GaugeMetricFamily("drasyl_agent_conflicts", "Claims refused to a later network (status 'conflicts').",
                                value=len(status["conflicts"]))
        dropped = CounterMetricFamily("drasyl_agent_dropped_packets",
                                      "Packets dropped by the agent and its node, by reason (status 'drops').",
                                      labels=["reason"])
        for reason, count in status["drops"].items():
            dropped.add_metric([reason], count)
        yield dropped
        native = status.get("native")
        if native is not None:  # the C data path runs (agent/fast.py)
            carried = CounterMetricFamily("drasyl_agent_native_packets",
                                          "Packets the C data path carried: tx sent, rx written to the TUN "
                                          "(status 'native').", labels=["direction"])
            carried.add_metric(["tx"], native["tx_packets"])
            carried.add_metric(["rx"], native["rx_packets"])
            yield carried


def _super_peers(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    info = InfoMetricFamily("drasyl_agent_super_peer", "A configured super peer and its address.",
                            labels=["super_peer"])
    up = GaugeMetricFamily("drasyl_agent_super_peer_up", "1 if the super peer is reachable over UDP or TCP.",
                           labels=["super_peer"])
    transport = GaugeMetricFamily("drasyl_agent_super_peer_transport",
                                  "1 for the transport the super peer is reached over (udp, tcp), else 0.",
                                  labels=["super_peer", "transport"])
    default = GaugeMetricFamily("drasyl_agent_super_peer_default",
                                "1 for the super peer that relays now (the lowest RTT).", labels=["super_peer"])
    rtt = GaugeMetricFamily("drasyl_agent_super_peer_rtt_seconds", "Median round-trip time to the super peer.",
                            labels=["super_peer"])
    for sp in rows:
        pk = sp["public_key"]
        info.add_metric([pk], {"address": sp["address"]})
        up.add_metric([pk], sp["transport"] is not None)
        for name in SUPER_PEER_TRANSPORTS:
            transport.add_metric([pk, name], sp["transport"] == name)
        default.add_metric([pk], sp["default"])
        if sp["rtt_ms"] is not None:
            rtt.add_metric([pk], sp["rtt_ms"] / 1000)
    yield from (info, up, transport, default, rtt)


def _peers(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    info = InfoMetricFamily("drasyl_agent_peer", "A peer the policies let this agent talk to: hostname and IP.",
                            labels=["peer"])
    path = GaugeMetricFamily("drasyl_agent_peer_path",
                             "1 for the path packets to the peer take (direct, relayed, tcp), else 0.",
                             labels=["peer", "path"])
    rtt = GaugeMetricFamily("drasyl_agent_peer_rtt_seconds", "Median round-trip time of the peer's direct path.",
                            labels=["peer"])
    last_rx = GaugeMetricFamily("drasyl_agent_peer_last_rx_seconds", "Seconds since the last packet from the peer.",
                                labels=["peer"])
    traffic = CounterMetricFamily("drasyl_agent_peer_bytes", "Overlay bytes received from (rx) and sent to (tx) the peer.",
                                  labels=["peer", "direction"])
    for peer in rows:
        pk = peer["public_key"]
        info.add_metric([pk], {"hostname": peer["hostname"] or "", "ip": peer["ip"] or ""})
        for name in PEER_PATHS:
            path.add_metric([pk, name], peer["path"] == name)
        if peer["rtt_ms"] is not None:
            rtt.add_metric([pk], peer["rtt_ms"] / 1000)
        if peer["last_rx_s"] is not None:
            last_rx.add_metric([pk], peer["last_rx_s"])
        traffic.add_metric([pk, "rx"], peer["rx_bytes"])
        traffic.add_metric([pk, "tx"], peer["tx_bytes"])
    yield from (info, path, rtt, last_rx, traffic)


def _networks(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    labels = ["network"]  # config_url as status shows it: the password masked
    info = InfoMetricFamily("drasyl_agent_network", "A network of config.toml: name, subnet and this agent's IP.",
                            labels=labels)
    state = GaugeMetricFamily("drasyl_agent_network_state", "1 for the network's state (as in status), else 0.",
                              labels=["network", "state"])
    error = GaugeMetricFamily("drasyl_agent_network_error",
                              "1 if the last fetch or validation of the network config failed.", labels=labels)
    refused = GaugeMetricFamily("drasyl_agent_network_refused",
                                "What the network asks for that local consent refused (routes, names, ...).",
                                labels=labels)
    insecure = GaugeMetricFamily("drasyl_agent_network_insecure", "1 if the network config is fetched over http://.",
                                 labels=labels)
    for net in rows:
        url = [net["config_url"]]
        info.add_metric(url, {"name": net["name"] or "", "subnet": net["subnet"] or "", "ip": net["ip"] or ""})
        for name in NETWORK_STATES:
            state.add_metric([*url, name], net["state"] == name)
        error.add_metric(url, net["error"] is not None)
        refused.add_metric(url, len(net["refused"]))
        insecure.add_metric(url, net["insecure"])
    yield from (info, state, error, refused, insecure)


def exposition(status: dict[str, Any]) -> bytes:
    """The text format of one status (in a worker thread)."""
    return generate_latest(StatusCollector(status))  # type: ignore[arg-type]  # a collector is all it needs


class AgentMetrics:
    """The listening endpoint; :meth:`start` it, :meth:`close` it."""

    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @classmethod
    async def start(cls, source: StatusSource, settings: MetricsSettings) -> AgentMetrics:
        """Serve ``source.status()`` on ``settings.listen``; :class:`AgentError` if it cannot."""
        assert settings.listen is not None
        token = _read_token(settings.token_file) if settings.token_file is not None else ""
        host, port = settings.listen
        endpoint = MetricsEndpoint(source.status, exposition, token)
        try:
            server = await endpoint.serve(host, port)
        except OSError as exc:
            raise AgentError(f"metrics: cannot listen on {format_host_port(host, port)}: "
                             f"{exc.strerror or exc}") from None
        metrics = cls(server)
        log.info("Prometheus metrics on http://%s/metrics%s", format_host_port(host, metrics.port),
                 " (bearer token required)" if token else "")
        return metrics

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


def _read_token(path: str) -> str:
    """The bearer token, read once at start (a new token takes a restart)."""
    try:
        token = Path(path).read_text(errors="replace").strip()
    except OSError as exc:
        raise AgentError(f"metrics: cannot read token_file {path!r}: {exc.strerror}") from None
    if not token:
        raise AgentError(f"metrics: token_file {path!r} is empty")
    return token
