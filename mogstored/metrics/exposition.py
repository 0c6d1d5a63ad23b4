"""The Prometheus text exposition format (0.0.4) of one merged snapshot,
formatted by prometheus_client from metric families of our own (a collector
that reads the snapshot; no client-library metric objects, which lock per
update)."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from mogstored import __version__
from mogstored.counters import BUCKETS, METHODS
from mogstored.metrics.board import Snapshot
from mogstored.metrics.totals import NodeMetrics

CONTENT_TYPE = b"text/plain; version=0.0.4"

# (name, counter?, snapshot key, labels, help), in exposition order; the
# duration histogram comes after the first.
_FAMILIES: tuple[tuple[str, bool, str, tuple[str, ...], str], ...] = (
    ("mogstored_http_requests_total", True, "req", ("method", "status"), "HTTP requests answered."),
    ("mogstored_http_sent_bytes_total", True, "sent", ("device",), "HTTP body bytes sent."),
    ("mogstored_http_received_bytes_total", True, "received", ("device",), "HTTP body bytes received."),
    ("mogstored_mgmt_commands_total", True, "mgmt", ("command",), "Sidechannel commands."),
    ("mogstored_refused_total", True, "refused", ("listener",),
     "Requests (HTTP) and connections (sidechannel) refused from peers outside --trusted."),
    ("mogstored_io_threads", False, "threads", ("device",), "Threads the device's I/O pool may run (server aio_threads; they start as work comes)."),
    ("mogstored_io_busy", False, "busy", ("device",), "Pool threads inside a disk call now."),
    ("mogstored_io_waiting", False, "waiting", ("device",), "Tasks queued for a pool thread."),
    ("mogstored_io_errors_total", True, "errors", ("device", "errno"), "Failed disk calls."),
    ("mogstored_io_oldest_call_seconds", False, "oldest", ("device",),
     "Age of the oldest disk call in flight (0: none)."),
    ("mogstored_device_stalled", False, "stalled", ("device",),
     "1 while a disk call has run longer than --stallseconds."),
    ("mogstored_device_bytes", False, "bytes", ("device", "kind"), "Filesystem size from the usage pass."),
    ("mogstored_device_utilization_ratio", False, "util", ("device",), "iostat %util / 100."),
    ("mogstored_connections", False, "connections", ("listener",), "Open connections."),
)
_WORKER_FAMILIES: tuple[tuple[str, bool, str, tuple[str, ...], str], ...] = (
    ("mogstored_worker_processes", False, "workers", (), "Worker processes configured."),
    ("mogstored_worker_restarts_total", True, "restarts", (), "Worker processes respawned."),
)


def exposition(metrics: NodeMetrics) -> bytes:
    """The whole node, as a scrape reads it."""
    return generate_latest(_Collector(metrics.node_snapshot(), metrics.board is not None))  # type: ignore[arg-type]


class _Collector:
    """Metric families from one merged snapshot (what prometheus_client formats)."""

    def __init__(self, snap: Snapshot, workers: bool) -> None:
        self.snap = snap
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        families = _FAMILIES + (_WORKER_FAMILIES if self.workers else ())
        for n, (name, counter, key, labels, doc) in enumerate(families):
            source = self.snap["c" if counter else "g"]
            fam: Metric = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=labels)
            for k, v in sorted((k, v) for k, v in source.items() if k[0] == key):
                fam.add_metric(list(k[1:]), v)  # type: ignore[attr-defined]
            yield fam
            if n == 0:
                yield self._histogram()
        info = GaugeMetricFamily("mogstored_build_info", "Always 1; the version as a label.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _histogram(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily("mogstored_http_request_duration_seconds",
                                    "From the request head to the last byte handed to the kernel.",
                                    labels=["method"])
        c = self.snap["c"]
        for m in METHODS:
            counts = [c.get(("bucket", m, i), 0) for i in range(len(BUCKETS) + 1)]
            if not any(counts):
                continue
            buckets, total = [], 0
            for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts):
                total += n
                buckets.append((bound, total))
            fam.add_metric([m], buckets, c.get(("seconds", m), 0.0))
        return fam
