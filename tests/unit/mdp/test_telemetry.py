"""RequestMetrics: the latency aggregates behind /metrics."""

from __future__ import annotations

import math
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mdp.telemetry import RequestMetrics

latencies = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_metrics_start_empty() -> None:
    metrics = RequestMetrics()
    assert (metrics.count, metrics.total_ms, metrics.max_ms, metrics.last_ms) == (0, 0, 0, 0)
    assert metrics.average_ms == 0.0


def test_metrics_aggregate_count_average_max_and_last() -> None:
    metrics = RequestMetrics()
    for elapsed in (10.0, 30.0, 20.0):
        metrics.record(elapsed)
    assert metrics.count == 3
    assert metrics.total_ms == 60.0
    assert metrics.average_ms == 20.0
    assert metrics.max_ms == 30.0
    assert metrics.last_ms == 20.0


@settings(max_examples=200, deadline=None)
@given(samples=st.lists(latencies, min_size=1, max_size=50))
def test_metrics_match_the_samples_they_recorded(samples: list[float]) -> None:
    metrics = RequestMetrics()
    for elapsed in samples:
        metrics.record(elapsed)
    assert metrics.count == len(samples)
    assert metrics.max_ms == max(samples)
    assert metrics.last_ms == samples[-1]
    assert math.isclose(metrics.average_ms, sum(samples) / len(samples), rel_tol=1e-9, abs_tol=1e-9)


def test_metrics_uptime_counts_from_start() -> None:
    metrics = RequestMetrics(started_monotonic=time.monotonic() - 5)
    assert metrics.uptime_seconds() >= 5
