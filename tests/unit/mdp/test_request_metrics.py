"""Request counts and latency histograms, as Prometheus scrapes them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mdp.metrics import TEXT, PrometheusMetrics


def _samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(TEXT).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_requests_are_counted_by_operation_method_and_status() -> None:
    metrics = PrometheusMetrics()
    for status in (200, 200, 404):
        metrics.observe("listSymbols", "GET", status, 0.001)
    metrics.observe("unmatched", "POST", 405, 0.001)

    samples = _samples(metrics)

    def count(operation: str, method: str, status: str) -> float:
        labels = (("method", method), ("operation", operation), ("status", status))
        return samples[("mdp_http_requests_total", labels)]

    assert count("listSymbols", "GET", "200") == 2
    assert count("listSymbols", "GET", "404") == 1
    assert count("unmatched", "POST", "405") == 1


def test_latency_buckets_are_cumulative_upper_bounds_that_include_their_bound() -> None:
    metrics = PrometheusMetrics()
    for seconds in (0.0005, 0.0007, 0.3, 42.0):
        metrics.observe("op", "GET", 200, seconds)

    samples = _samples(metrics)

    def bucket(le: str) -> float:
        return samples[
            ("mdp_http_request_duration_seconds_bucket", (("le", le), ("operation", "op")))
        ]

    assert bucket("0.0005") == 1
    assert bucket("0.001") == 2
    assert bucket("0.25") == 2
    assert bucket("0.5") == 3
    assert bucket("10.0") == 3
    assert bucket("+Inf") == 4
    assert samples[("mdp_http_request_duration_seconds_count", (("operation", "op"),))] == 4
    total = samples[("mdp_http_request_duration_seconds_sum", (("operation", "op"),))]
    assert abs(total - 42.3012) < 1e-9
