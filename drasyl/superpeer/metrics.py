"""Prometheus metrics of the super peer (spec §8.3) and the ``/metrics`` HTTP endpoint.

Metric names, types, labels and histogram buckets are drasyl-rs' exactly; like the Rust
``prometheus`` crate, counters carry no ``_total`` suffix. One addition of ours:
``drasyl_sp_dropped_packets{reason}``.

:class:`SuperPeerMetrics` is a collector that reads the core's state when Prometheus scrapes:
nothing here runs per packet. The only per-tick work is the endpoints histogram, which
drasyl-rs also observes at every housekeeping tick. A peer's series disappear when it leaves
the table (its counters restart at 0 if it registers again, which Prometheus treats as a
counter reset); drasyl-rs keeps them until it restarts.

:class:`MetricsEndpoint` answers HTTP/1.1 scrapes inside the daemon's event loop. It must not
run in a thread (prometheus_client's own server does): the core is read without locks.
"""

from __future__ import annotations

import asyncio
import hmac
from bisect import bisect_left
from typing import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric

from ..messages import ENDPOINT_LEN
from ..transmit import TCP
from .core import SuperPeerCore

ENDPOINT_BUCKETS = (0, 1, 2, 3, 5, 7, 10, 15)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CONNECTION_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 16
MAX_HEADER_LINES = 100
MAX_LINE = 8192

COUNTERS = ("drasyl_sp_messages", "drasyl_sp_relayed_bytes", "drasyl_sp_dropped_packets")


class SuperPeerMetrics:
    """The Prometheus view of a :class:`SuperPeerCore` plus the I/O layer's drop counts."""

    def __init__(self, core: SuperPeerCore, io_drops: Callable[[], Mapping[str, int]]) -> None:
        self._core = core
        self._io_drops = io_drops
        #: peer -> observations per bucket (not cumulative; the last is +Inf), then the sum.
        self._endpoints: dict[bytes, list[int]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def observe_tick(self) -> None:
        """Observe every peer's number of distinct endpoints (once per housekeeping tick)."""
        peers = self._core.peers
        histograms = self._endpoints
        for gone in [pk for pk in histograms if pk not in peers]:
            del histograms[gone]
        for pk, peer in peers.items():
            raw = peer.endpoints
            distinct = len({raw[i : i + ENDPOINT_LEN] for i in range(0, len(raw), ENDPOINT_LEN)})
            counts = histograms.get(pk)
            if counts is None:
                counts = histograms[pk] = [0] * (len(ENDPOINT_BUCKETS) + 2)
            counts[bisect_left(ENDPOINT_BUCKETS, distinct)] += 1
            counts[-1] += distinct

    def collect(self) -> Iterator[Metric]:
        peers = self._core.peers
        yield GaugeMetricFamily("drasyl_sp_peers", "Number of peers.", value=len(peers))

        paths = GaugeMetricFamily("drasyl_sp_peer_paths", "Number of paths.",
                                  labels=["peer", "ip_version", "transport"])
        messages = Metric("drasyl_sp_messages", "Number of messages received/sent.", "counter")
        relayed = Metric("drasyl_sp_relayed_bytes", "Number of bytes relayed.", "counter")
        for pk, peer in peers.items():
            hex_pk = pk.hex()
            host = peer.src[0] if peer.src else ""
            ip_version = "ipv4" if ":" not in host or host.startswith("::ffff:") else "ipv6"
            transport = "tcp" if peer.proto == TCP else "udp"
            for version in ("ipv4", "ipv6"):
                for proto in ("tcp", "udp"):
                    paths.add_metric([hex_pk, version, proto], float(version == ip_version and proto == transport))
            for kind, direction, value in (
                ("hello", "rx", peer.hello_rx),
                ("ack", "tx", peer.ack_tx),
                ("app", "rx", peer.app_rx),
                ("app", "tx", peer.app_tx),
                ("unite", "tx", peer.unite_tx),
            ):
                messages.add_sample("drasyl_sp_messages",
                                    {"type": kind, "peer": hex_pk, "direction": direction}, value)
            for dst, count in (peer.relayed_bytes or {}).items():
                relayed.add_sample("drasyl_sp_relayed_bytes", {"src": hex_pk, "dst": dst.hex()}, count)
        yield paths

        endpoints = HistogramMetricFamily("drasyl_sp_peer_endpoints", "Number of endpoints.", labels=["peer"])
        for pk, counts in self._endpoints.items():
            cumulative, buckets = 0, []
            for le, count in zip((*map(str, ENDPOINT_BUCKETS), "+Inf"), counts):
                cumulative += count
                buckets.append((le, cumulative))
            endpoints.add_metric([pk.hex()], buckets, counts[-1])
        yield endpoints
        yield messages
        yield relayed

        dropped = Metric("drasyl_sp_dropped_packets",
                         "Packets dropped by the super peer, by reason (not in drasyl-rs).", "counter")
        for source in (self._core.drops, self._io_drops()):
            for reason, count in sorted(source.items()):
                dropped.add_sample("drasyl_sp_dropped_packets", {"reason": reason}, count)
        yield dropped

    def exposition(self) -> bytes:
        """Text format 0.0.4, with counter families named without ``_total`` (as drasyl-rs).

        prometheus_client appends ``_total`` to a counter's HELP/TYPE name but not to samples
        we name ourselves; renaming those two lines keeps family and sample names equal.
        """
        text = generate_latest(self._registry)
        for name in COUNTERS:
            for kind in (b"HELP", b"TYPE"):
                text = text.replace(b"# %s %s_total " % (kind, name.encode()), b"# %s %s " % (kind, name.encode()), 1)
        return text


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.1 (``Connection: close``), as drasyl-sp's hyper server.

    Other paths get 404 ``Not Found``; with a token, a missing or wrong
    ``Authorization: Bearer <token>`` gets 401 ``Unauthorized``. Each connection has 10 s
    to be served, and at most :data:`MAX_CONNECTIONS` are served at once.
    """

    def __init__(self, metrics: SuperPeerMetrics, token: str) -> None:
        self._metrics = metrics
        self._expected_authorization = b"Bearer " + token.encode() if token else None
        self._open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(CONNECTION_TIMEOUT_S):
                writer.write(self._respond(await _read_request(reader)))
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._open -= 1
            writer.close()

    def _respond(self, request: tuple[str, str, bytes] | None) -> bytes:
        if request is None:
            return _response(400, "Bad Request", b"Bad Request")
        method, target, authorization = request
        if target.split("?", 1)[0] != "/metrics":
            return _response(404, "Not Found", b"Not Found")
        expected = self._expected_authorization
        if expected is not None and not hmac.compare_digest(authorization, expected):
            return _response(401, "Unauthorized", b"Unauthorized")
        return _response(200, "OK", self._metrics.exposition(), CONTENT_TYPE, head=method == "HEAD")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """(method, target, Authorization value) of one request, or None if it is malformed."""
    parts = (await reader.readuntil(b"\n")).split()
    authorization = b""
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readuntil(b"\n")
        if line in (b"\r\n", b"\n"):
            break
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"authorization":
            authorization = value.strip()
    else:
        return None
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    return parts[0].decode("latin-1"), parts[1].decode("latin-1"), authorization


def _response(status: int, reason: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head: bool = False) -> bytes:
    header = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head else header + body
