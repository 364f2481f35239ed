"""Reading one sample out of a Prometheus text exposition (GET /metrics, Accept: text/plain)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["metric_value"]


def metric_value(exposition: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of sample `name` with exactly `labels`; 0 when there is none (a counter or a
    labelled child not created yet)."""
    return next(
        (
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == name and sample.labels == (labels or {})
        ),
        0.0,
    )
