"""Prometheus metrics of the super peer (spec §8.3).

Metric names, types, labels and histogram buckets are drasyl-rs' exactly; like the Rust
``prometheus`` crate, counters carry no ``_total`` suffix. Additions of ours:
``drasyl_sp_dropped_packets{reason}``, ``drasyl_sp_stun_responses`` (STUN Binding
requests answered; refused ones are drops with reasons ``stun_*``) and, with several workers,
``drasyl_sp_worker_peers{worker}`` (registrations each worker owns: how evenly the kernel
spreads the nodes). With several workers every series is the sum over the workers.

:class:`SuperPeerMetrics` reads the core's state when Prometheus scrapes: nothing here runs
per packet. The only per-tick work is the endpoints histogram, which
drasyl-rs also observes at every housekeeping tick. A peer's series disappear when it leaves
the table (its counters restart at 0 if it registers again, which Prometheus treats as a
counter reset); drasyl-rs keeps them until it restarts.

:class:`~drasyl.metrics_http.MetricsEndpoint` serves them: :meth:`SuperPeerMetrics.snapshot`
in the event loop (the core is read without locks), :meth:`SuperPeerMetrics.exposition` in a
worker thread.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ..messages import ENDPOINT_LEN
from ..transmit import TCP
from .core import SuperPeerCore
from .shared import WorkerCounters, peer_counters

ENDPOINT_BUCKETS = (0, 1, 2, 3, 5, 7, 10, 15)

#: One peer's values at scrape time: (hex pk, ip version, transport, hello rx, ack tx, app rx,
#: app tx, unite tx, ((dst hex, relayed bytes), ...), endpoint histogram counts or None).
PeerRow = tuple


class SuperPeerMetrics:
    """The Prometheus view of a :class:`SuperPeerCore` plus the I/O layer's drop counts.

    The per-peer families (four series per peer, a histogram, five counters, relayed bytes
    per pair: tens of MB of text for 50 000 peers) are written by hand from a
    :meth:`snapshot`, because ``prometheus_client`` needs ~0.2 ms per peer, seconds in which
    the super peer would not serve packets. The snapshot is taken in the event loop (a few µs
    per peer); :meth:`exposition` may then run in a worker thread. ``drasyl_sp_peers`` and
    ``drasyl_sp_dropped_packets`` go through ``prometheus_client``'s collector API.
    """

    def __init__(self, core: SuperPeerCore, io_drops: Callable[[], Mapping[str, int]]) -> None:
        self._core = core
        self._io_drops = io_drops
        #: peer -> observations per bucket (not cumulative; the last is +Inf), then the sum.
        self._endpoints: dict[bytes, list[int]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._dropped: list[tuple[str, int]] = []
        self._peer_count = 0
        self._stun_answered = 0
        self._owned: Mapping[int, int] | None = None

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

    def snapshot(self, others: Sequence[WorkerCounters] = (), owned: Mapping[int, int] | None = None
                 ) -> list[PeerRow]:
        """Copy what a scrape shows, in the event loop; also fixes the scalar metrics.

        With several workers (:mod:`.worker`): ``others`` are the other workers' counters,
        added to this worker's, whose table holds every registration; ``owned`` how many
        registrations each worker owns.
        """
        histograms = self._endpoints
        rows = []
        for pk, peer in self._core.peers.items():
            host = peer.src[0] if peer.src else ""
            counts = histograms.get(pk)
            rows.append((
                pk.hex(),
                "ipv4" if ":" not in host or host.startswith("::ffff:") else "ipv6",
                "tcp" if peer.proto == TCP else "udp",
                *peer_counters(peer),
                tuple(counts) if counts is not None else None,
            ))
        core_drops, io_drops = Counter(self._core.drops), Counter(self._io_drops())
        stun = self._core.stun_answered
        for _, peers, core, io, answered in others:
            _add_counters(rows, peers)
            core_drops.update(core)
            io_drops.update(io)
            stun += answered
        self._peer_count = len(rows)
        self._dropped = sorted(core_drops.items()) + sorted(io_drops.items())
        self._stun_answered = stun
        self._owned = owned
        return rows

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("drasyl_sp_peers", "Number of peers.", value=self._peer_count)
        dropped = Metric("drasyl_sp_dropped_packets",
                         "Packets dropped by the super peer, by reason (not in drasyl-rs).", "counter")
        for reason, count in self._dropped:
            dropped.add_sample("drasyl_sp_dropped_packets", {"reason": reason}, count)
        yield dropped
        stun = Metric("drasyl_sp_stun_responses", "STUN Binding requests answered (not in drasyl-rs).", "counter")
        stun.add_sample("drasyl_sp_stun_responses", {}, self._stun_answered)
        yield stun
        if self._owned is not None:
            owned = GaugeMetricFamily("drasyl_sp_worker_peers", "Registrations each worker process owns "
                                      "(DRASYL_WORKERS > 1; not in drasyl-rs).", labels=["worker"])
            for worker, count in sorted(self._owned.items()):
                owned.add_metric([str(worker)], count)
            yield owned

    def exposition(self, rows: list[PeerRow] | None = None) -> bytes:
        """Text format 0.0.4 of a snapshot (taken now if not given); counters without ``_total``.

        prometheus_client appends ``_total`` to a counter's HELP/TYPE name but not to samples
        we name ourselves; renaming those two lines keeps family and sample names equal.
        """
        if rows is None:
            rows = self.snapshot()
        text = generate_latest(self._registry)
        for name in (b"drasyl_sp_dropped_packets", b"drasyl_sp_stun_responses"):
            for kind in (b"HELP", b"TYPE"):
                text = text.replace(b"# %s %s_total " % (kind, name), b"# %s %s " % (kind, name), 1)
        return text + _per_peer_text(rows).encode()


def _add_counters(rows: list[PeerRow], peers: list[tuple]) -> None:
    """Add another worker's per-peer counters to the rows of the same peers."""
    index = {row[0]: i for i, row in enumerate(rows)}
    for pk, *counts, relayed in peers:
        i = index.get(pk)
        if i is None:
            continue  # left this worker's table (or not learned yet): shown once it is
        row = rows[i]
        total = Counter(dict(row[8]))
        total.update(dict(relayed))
        rows[i] = (*row[:3], *(a + b for a, b in zip(row[3:8], counts)), tuple(total.items()), row[9])


def _per_peer_text(rows: list[PeerRow]) -> str:
    """The per-peer families as prometheus_client would write them (labels sorted by name)."""
    out: list[str] = []
    add = out.append
    add("# HELP drasyl_sp_peer_paths Number of paths.\n# TYPE drasyl_sp_peer_paths gauge\n")
    for pk, ip_version, transport, *_ in rows:
        for version in ("ipv4", "ipv6"):
            for proto in ("tcp", "udp"):
                value = "1.0" if version == ip_version and proto == transport else "0.0"
                add(f'drasyl_sp_peer_paths{{ip_version="{version}",peer="{pk}",transport="{proto}"}} {value}\n')
    add("# HELP drasyl_sp_peer_endpoints Number of endpoints.\n# TYPE drasyl_sp_peer_endpoints histogram\n")
    for row in rows:
        pk, counts = row[0], row[9]
        if counts is None:
            continue
        cumulative = 0
        for le, count in zip(_BUCKET_LABELS, counts):
            cumulative += count
            add(f'drasyl_sp_peer_endpoints_bucket{{le="{le}",peer="{pk}"}} {float(cumulative)!r}\n')
        add(f'drasyl_sp_peer_endpoints_count{{peer="{pk}"}} {float(cumulative)!r}\n')
        add(f'drasyl_sp_peer_endpoints_sum{{peer="{pk}"}} {float(counts[-1])!r}\n')
    add("# HELP drasyl_sp_messages Number of messages received/sent.\n# TYPE drasyl_sp_messages counter\n")
    for pk, _, _, hello_rx, ack_tx, app_rx, app_tx, unite_tx, _, _ in rows:
        for direction, kind, value in (("rx", "hello", hello_rx), ("tx", "ack", ack_tx), ("rx", "app", app_rx),
                                       ("tx", "app", app_tx), ("tx", "unite", unite_tx)):
            add(f'drasyl_sp_messages{{direction="{direction}",peer="{pk}",type="{kind}"}} {float(value)!r}\n')
    add("# HELP drasyl_sp_relayed_bytes Number of bytes relayed.\n# TYPE drasyl_sp_relayed_bytes counter\n")
    for row in rows:
        for dst, count in row[8]:
            add(f'drasyl_sp_relayed_bytes{{dst="{dst}",src="{row[0]}"}} {float(count)!r}\n')
    return "".join(out)


_BUCKET_LABELS = (*map(str, ENDPOINT_BUCKETS), "+Inf")
