"""GET /metrics: JSON by default, Prometheus text or OpenMetrics when the scraper asks."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


def test_metrics_answer_json_without_an_accept_header(client: TestClient) -> None:
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {
        "started_at",
        "uptime_seconds",
        "requests",
        "database",
        "ingestion",
    }


@pytest.mark.parametrize(
    "accept",
    ["application/json", "application/json, text/plain;q=0.5", "image/png, */*;q=0.1", "*/*"],
)
def test_metrics_prefer_json_unless_a_metrics_format_wins(client: TestClient, accept: str) -> None:
    response = client.get("/metrics", headers={"Accept": accept})

    assert response.headers["content-type"] == "application/json"


def test_metrics_answer_prometheus_text_with_counts_by_operation_and_status(
    client: TestClient,
) -> None:
    client.get("/price/latest", params={"symbol": "NOPE"})
    client.get("/symbols")

    response = client.get("/metrics", headers={"Accept": "text/plain"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = _families(response.text)
    requests = {
        (labels["operation"], labels["status"]) for labels, _ in families["mdp_http_requests"]
    }
    assert ("getLatestPrice", "404") in requests
    assert ("listSymbols", "200") in requests
    buckets = [
        labels
        for labels, _ in families["mdp_http_request_duration_seconds"]
        if labels.get("operation") == "listSymbols"
    ]
    assert buckets
    assert {name for name in families} >= {
        "mdp_ingestion_batches",
        "mdp_ingestion_trades",
        "mdp_ingestion_failures",
        "mdp_ingestion_leader",
        "mdp_db_pool_checked_out",
        "mdp_db_pool_size",
    }
    pools = {labels["pool"]: value for labels, value in families["mdp_db_pool_size"]}
    assert pools == {"api": 10, "ingestion": 2}


def test_unknown_paths_share_one_metrics_label(client: TestClient) -> None:
    client.get("/no/such/path/a")
    client.get("/no/such/path/b")

    response = client.get("/metrics", headers={"Accept": "text/plain"})

    operations = {
        labels["operation"] for labels, _ in _families(response.text)["mdp_http_requests"]
    }
    assert "unmatched" in operations
    assert not any(operation.startswith("/") for operation in operations)


def test_metrics_answer_openmetrics_when_asked(client: TestClient) -> None:
    response = client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")
