"""Prometheus / OpenMetrics exposition of the service's telemetry, with prometheus-client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import exposition as text_format
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from ingestion.status import IngestionStatus
from live.broadcaster import Broadcaster
from persistence.pool import ReadPool

__all__ = ["OPENMETRICS", "TEXT", "PrometheusMetrics"]

TEXT = text_format.CONTENT_TYPE_LATEST
OPENMETRICS = openmetrics_format.CONTENT_TYPE_LATEST

# Latency buckets for an API whose typical answer takes about a millisecond.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _StateCollector(Collector):
    """Reads ingestion, pool and stream state at scrape time: nothing is counted twice."""

    def __init__(
        self, status: IngestionStatus, live: Broadcaster, reads: ReadPool, writes: AsyncEngine
    ) -> None:
        self.status = status
        self.live = live
        self.reads = reads
        self.writes = writes

    def collect(self) -> Iterator[Metric]:
        status = self.status
        yield CounterMetricFamily(
            "mdp_ingestion_batches", "Batches committed by this instance.", status.batches_total
        )
        yield CounterMetricFamily(
            "mdp_ingestion_trades", "Trades committed by this instance.", status.trades_total
        )
        yield CounterMetricFamily(
            "mdp_ingestion_failures", "Failed ingestion cycles.", status.failures_total
        )
        age = status.heartbeat_age()
        if age is not None:
            yield GaugeMetricFamily(
                "mdp_ingestion_heartbeat_age_seconds",
                "Seconds since the last committed batch.",
                age,
            )
        yield CounterMetricFamily(
            "mdp_candle_materialisation_failures",
            "Failed candle materialisation steps of this instance (as leader).",
            status.candle_failures_total,
        )
        if status.candles_until is not None:
            yield GaugeMetricFamily(
                "mdp_candles_materialised_until_seconds",
                "Candle watermark this instance last moved or saw (Unix time): final buckets "
                "before it are materialised.",
                status.candles_until.timestamp(),
            )
        yield GaugeMetricFamily(
            "mdp_ingestion_leader",
            "1 when this instance is the ingestion leader.",
            1 if status.role == "leader" else 0,
        )
        checked_out = GaugeMetricFamily(
            "mdp_db_pool_checked_out", "Connections in use.", labels=["pool"]
        )
        size = GaugeMetricFamily("mdp_db_pool_size", "Connections kept open.", labels=["pool"])
        checked_out.add_metric(["api"], self.reads.in_use)
        size.add_metric(["api"], self.reads.size)
        pool = self.writes.pool
        if isinstance(pool, QueuePool):
            checked_out.add_metric(["ingestion"], pool.checkedout())
            size.add_metric(["ingestion"], pool.size())
        yield checked_out
        yield size
        yield GaugeMetricFamily(
            "mdp_streams_open", "Server-Sent Event streams open.", self.live.stream_count
        )
        yield CounterMetricFamily(
            "mdp_stream_overflows",
            "Streams ended with `overflow` because their client fell behind.",
            self.live.overflows_total,
        )


class PrometheusMetrics:
    """One registry per app (not the global one), so several apps in a process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mdp_http_requests",
            "HTTP requests answered, by operation and status.",
            ["operation", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mdp_http_request_duration_seconds",
            "Time to answer an HTTP request, by operation.",
            ["operation"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.candles_from_trades = Counter(
            "mdp_candle_pages_from_trades",
            "Candle pages with final buckets not materialised yet, aggregated from trades.",
            ["interval"],
            registry=self.registry,
        )
        self.candle_stream_reads = Counter(
            "mdp_candle_stream_reads",
            "Database reads of /stream/candles, shared by every stream of a symbol and interval.",
            ["interval"],
            registry=self.registry,
        )

        # Children bound once per (operation, method, status): `labels()` takes a lock and
        # builds its key on every call, which showed up in every request's profile.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, operation: str, method: str, status: int, seconds: float) -> None:
        key = (operation, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(operation, method, str(status)),
                self.latency.labels(operation),
            )
        counter, histogram = children
        counter.inc()
        histogram.observe(seconds)

    def watch(
        self, status: IngestionStatus, live: Broadcaster, *, reads: ReadPool, writes: AsyncEngine
    ) -> Callable[[], None]:
        """Expose this lifespan's ingestion, streams and pools; returns the function that
        stops it."""
        collector = _StateCollector(status, live, reads, writes)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)

    def render(self, media_type: str) -> bytes:
        if media_type == OPENMETRICS:
            # prometheus-client types its text format but not its OpenMetrics one.
            rendered: bytes = openmetrics_format.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return rendered
        return text_format.generate_latest(self.registry)
