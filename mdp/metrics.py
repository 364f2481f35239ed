"""Prometheus / OpenMetrics exposition of the service's telemetry, with prometheus-client."""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, Counter
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from ingestion.feed import Feed, FeedState
from ingestion.status import IngestionStatus
from live.broadcaster import Broadcaster
from mdp.http_protocol import closed_connections
from persistence.admission import Admission
from persistence.budget import Budget
from persistence.pool import ReadPool

__all__ = ["OPENMETRICS", "TEXT", "PrometheusMetrics"]

TEXT = text_format.CONTENT_TYPE_LATEST
OPENMETRICS = openmetrics_format.CONTENT_TYPE_LATEST

# Latency buckets for an API whose typical answer takes about a millisecond.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Their `le` labels, as prometheus-client writes them.
_BOUNDS = [*(floatToGoString(bound) for bound in _BUCKETS), "+Inf"]  # type: ignore[no-untyped-call]


class _StateCollector(Collector):
    """Reads ingestion, pool and stream state at scrape time: nothing is counted twice."""

    def __init__(
        self,
        status: IngestionStatus,
        broadcaster: Broadcaster,
        reads: ReadPool,
        admission: Admission,
        writes: AsyncEngine,
        exports: Budget,
    ) -> None:
        self.status = status
        self.broadcaster = broadcaster
        self.reads = reads
        self.admission = admission
        self.writes = writes
        self.exports = exports

    def collect(self) -> Iterator[Metric]:
        yield from _ingestion_metrics(self.status)
        yield from self._database_metrics()
        yield from self._serving_metrics()

    def _database_metrics(self) -> Iterator[Metric]:
        """The pools' connections and the read admission queue."""
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
            "mdp_db_admission_waiting",
            "Requests waiting for a read connection, served in arrival order.",
            len(self.admission.waiters),
        )

    def _serving_metrics(self) -> Iterator[Metric]:
        """Streams, exports and connections closed for a limit."""
        yield GaugeMetricFamily(
            "mdp_streams_open", "Server-Sent Event streams open.", self.broadcaster.stream_count
        )
        yield CounterMetricFamily(
            "mdp_stream_overflows",
            "Streams ended with `overflow` because their client fell behind.",
            self.broadcaster.overflows_total,
        )
        yield GaugeMetricFamily(
            "mdp_exports_open",
            "Exports running (EXPORT_MAX_CONCURRENT at most).",
            len(self.exports),
        )
        closed = CounterMetricFamily(
            "mdp_connections_closed",
            "Connections closed for a limit before or while serving: a request head too large "
            "or too slow, or a client that accepted no data for SLOW_CLIENT_SECONDS.",
            labels=["reason"],
        )
        for reason, count in closed_connections.items():
            closed.add_metric([reason], count)
        yield closed


def _ingestion_metrics(status: IngestionStatus) -> Iterator[Metric]:
    """What this instance committed, how fresh it is, its role (and its feed, as leader)."""
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
            "Candle watermark of the slowest symbol this instance last moved or saw (Unix "
            "time): final buckets before it are materialised for every symbol.",
            status.candles_until.timestamp(),
        )
    yield GaugeMetricFamily(
        "mdp_ingestion_leader",
        "1 when this instance is the ingestion leader.",
        1 if status.role == "leader" else 0,
    )
    if status.feed is not None and status.role == "leader":
        yield from _feed_metrics(status.feed)


def _feed_metrics(feed: Feed) -> Iterator[Metric]:
    """The venue feed per symbol (only the leader runs it)."""
    labels = ["venue", "symbol"]
    state = GaugeMetricFamily(
        "mdp_feed_state",
        "1 for the feed state each symbol is in (connecting, connected, recovering, down, "
        "unlisted).",
        labels=[*labels, "state"],
    )
    through = GaugeMetricFamily(
        "mdp_feed_complete_through_seconds",
        "Watermark (Unix time): every trade the venue stamped up to it is stored.",
        labels=labels,
    )
    counters = {
        "reconnects_total": CounterMetricFamily(
            "mdp_feed_reconnects", "Venue connections lost (drops, stalls).", labels=labels
        ),
        "recovered_total": CounterMetricFamily(
            "mdp_feed_recovered_trades", "Trades recovered from venue REST history.", labels=labels
        ),
        "late_total": CounterMetricFamily(
            "mdp_feed_late_trades",
            "Late prints stored: stamped at or before the watermark already committed.",
            labels=labels,
        ),
        "duplicates_total": CounterMetricFamily(
            "mdp_feed_duplicate_trades",
            "Re-delivered venue trades skipped (by the feed, or by the unique key).",
            labels=labels,
        ),
        "deferred_total": CounterMetricFamily(
            "mdp_feed_deferred_trades",
            "Trades put back for a later batch (each time) while an import held their candles.",
            labels=labels,
        ),
        "expired_total": CounterMetricFamily(
            "mdp_feed_expired_trades",
            "Prints skipped: stamped in a month whose trades TRADES_RETENTION dropped.",
            labels=labels,
        ),
    }
    venue = feed.venue.name
    for symbol in feed.symbols.values():
        for name in get_args(FeedState):
            state.add_metric([venue, symbol.symbol, name], 1 if symbol.state == name else 0)
        if symbol.complete_through is not None:
            through.add_metric([venue, symbol.symbol], symbol.complete_through.timestamp())
        for attribute, family in counters.items():
            family.add_metric([venue, symbol.symbol], getattr(symbol, attribute))
    yield state
    yield through
    yield from counters.values()
    malformed = CounterMetricFamily(
        "mdp_feed_malformed_messages",
        "Venue messages skipped as unusable (logged, truncated).",
        labels=["venue"],
    )
    malformed.add_metric([venue], feed.malformed_total)
    throttled = CounterMetricFamily(
        "mdp_feed_throttled_requests", "Venue REST answers 429/418, waited out.", labels=["venue"]
    )
    throttled.add_metric([venue], feed.rest.throttled_total)
    yield malformed
    yield throttled


class _Latency:
    __slots__ = ("buckets", "created", "sum")

    def __init__(self) -> None:
        # Per bucket, not cumulative; the last one is +Inf.
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()


class _RequestCollector(Collector):
    """Requests by operation, method and status, and their latency by operation.

    Plain counts, turned into Prometheus families at scrape time: a prometheus-client Counter
    and Histogram take a lock per update, and two per request showed up in every profile.
    The event loop is the only writer, so nothing here needs one."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], list[float]] = {}
        self._latency: dict[str, _Latency] = {}

    def observe(self, operation: str, method: str, status: int, seconds: float) -> None:
        key = (operation, method, status)
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = [0, time.time()]
        count[0] += 1
        latency = self._latency.get(operation)
        if latency is None:
            latency = self._latency[operation] = _Latency()
        # Prometheus buckets are upper bounds, inclusive: the first bound >= seconds.
        latency.buckets[bisect.bisect_left(_BUCKETS, seconds)] += 1
        latency.sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "mdp_http_requests",
            "HTTP requests answered, by operation and status.",
            labels=["operation", "method", "status"],
        )
        for (operation, method, status), (count, created) in list(self._counts.items()):
            requests.add_metric([operation, method, str(status)], count, created=created)
        yield requests
        latency = HistogramMetricFamily(
            "mdp_http_request_duration_seconds",
            "Time to answer an HTTP request, by operation.",
            labels=["operation"],
        )
        for operation, each in list(self._latency.items()):
            cumulative = list(itertools.accumulate(each.buckets))
            latency.add_metric([operation], list(zip(_BOUNDS, cumulative, strict=True)), each.sum)
            latency.samples.append(
                Sample(latency.name + "_created", {"operation": operation}, each.created)
            )
        yield latency


class PrometheusMetrics:
    """One registry per app (not the global one), so several apps in a process stay apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _RequestCollector()
        self.registry.register(self.requests)
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

    def observe(self, operation: str, method: str, status: int, seconds: float) -> None:
        self.requests.observe(operation, method, status, seconds)

    def watch(
        self,
        status: IngestionStatus,
        broadcaster: Broadcaster,
        *,
        reads: ReadPool,
        admission: Admission,
        writes: AsyncEngine,
        exports: Budget,
    ) -> Callable[[], None]:
        """Expose this lifespan's ingestion, streams, pools and admission queue; returns the
        function that stops it."""
        collector = _StateCollector(status, broadcaster, reads, admission, writes, exports)
        self.registry.register(collector)
        return lambda: self.registry.unregister(collector)

    def render(self, media_type: str) -> bytes:
        if media_type == OPENMETRICS:
            # prometheus-client types its text format but not its OpenMetrics one.
            rendered: bytes = openmetrics_format.generate_latest(self.registry)  # type: ignore[no-untyped-call]
            return rendered
        return text_format.generate_latest(self.registry)
