"""GET /, /health, /status/ingestion and /metrics, with ingestion off, running and stale."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from mdp.settings import DEFAULT_SYMBOLS
from mdp.spec import load_contract
from tests.api.support import app_settings, running_app
from tests.support import MakeDatabase, open_test_engine, wait_until

INTERVAL = 0.1
SYMBOLS = [spec.symbol for spec in DEFAULT_SYMBOLS]


def recent(stamp: str, *, within: timedelta = timedelta(minutes=5)) -> bool:
    assert stamp.endswith("Z"), stamp
    moment = datetime.fromisoformat(stamp)
    return abs(datetime.now(UTC) - moment) < within


@pytest.fixture(scope="module")
def ingesting(module_database: URL) -> Iterator[TestClient]:
    """An app with ingestion on every 0.1 s, over a database of its own."""
    settings = app_settings(
        module_database, ingestion_enabled=True, ingestion_interval_seconds=INTERVAL
    )
    with running_app(settings) as client:
        yield client


@pytest.fixture
async def rejecting_database_url(make_database: MakeDatabase) -> URL:
    """A migrated database whose trades table refuses every insert: ingestion cannot succeed."""
    url = await make_database()
    engine = open_test_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE FUNCTION reject_trades() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$BEGIN RAISE EXCEPTION 'trades are read-only in this test'; END$$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER reject_trades BEFORE INSERT ON trades "
                    "FOR EACH STATEMENT EXECUTE FUNCTION reject_trades()"
                )
            )
    finally:
        await engine.dispose()
    return url


def status(client: TestClient) -> dict[str, Any]:
    response = client.get("/status/ingestion")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


# --- GET / -------------------------------------------------------------------------------


def test_root_names_the_service_and_its_version(client: TestClient):
    response = client.get("/")

    assert response.status_code == 200
    body = response.json()
    assert body["version"] == load_contract().document["info"]["version"]
    assert body["name"]
    assert body["description"]


def test_root_links_every_operation_and_the_docs(client: TestClient):
    links = client.get("/").json()["links"]

    linked_paths = {urlsplit(link).path for link in links.values()}
    operations = set(load_contract().document["paths"])
    assert linked_paths == operations | {"/docs"}
    assert links["self"] == "/"
    assert urlsplit(links["docs"]).path == "/docs"
    assert urlsplit(links["redoc"]).path == "/redoc"


def test_root_links_lead_to_answering_paths(client: TestClient):
    links = client.get("/").json()["links"]

    for link in links.values():
        response = client.get(urlsplit(link).path)
        # Market operations without their required symbol answer 400; nothing is missing.
        assert response.status_code in {200, 400}, (link, response.status_code)


# --- GET /health ---------------------------------------------------------------------------


def test_health_passes_with_ingestion_disabled(client: TestClient):
    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "pass"
    assert body["version"] == load_contract().document["info"]["version"]
    assert recent(body["time"])
    database = body["checks"]["database"]
    assert database["status"] == "pass"
    assert database["latency_ms"] >= 0
    assert database["detail"] is None
    # Reads go to the primary here: no replay to lag behind.
    assert database["standby"] is False
    assert database["replay_lag_seconds"] is None
    assert body["checks"]["ingestion"] == {
        "status": "pass",
        "state": "disabled",
        "heartbeat_age_seconds": None,
        "feeds_behind": [],
    }


@pytest.mark.timing
def test_health_passes_with_ingestion_running(ingesting: TestClient):
    body = wait_until(
        lambda: ingesting.get("/health").json(),
        lambda b: b["checks"]["ingestion"]["state"] == "running",
        what="ingestion running",
    )

    assert body["status"] == "pass"
    assert body["checks"]["ingestion"]["status"] == "pass"
    # Read a moment after the state: about one interval old, far from a second.
    assert 0 <= body["checks"]["ingestion"]["heartbeat_age_seconds"] < 1


def test_health_warns_when_ingestion_is_stale(rejecting_database_url: URL):
    settings = app_settings(
        rejecting_database_url, ingestion_enabled=True, ingestion_interval_seconds=INTERVAL
    )
    with running_app(settings) as client:
        response = wait_until(
            lambda: client.get("/health"),
            lambda r: r.json()["status"] == "warn",
            what="health warn",
        )
        ingestion = status(client)

    assert response.status_code == 200
    body = response.json()
    assert body["checks"]["database"]["status"] == "pass"
    assert body["checks"]["ingestion"] == {
        "status": "warn",
        "state": "stale",
        "heartbeat_age_seconds": None,
        "feeds_behind": [],
    }
    assert ingestion["state"] == "stale"
    assert ingestion["batches_total"] == 0
    assert ingestion["consecutive_failures"] >= 1
    assert ingestion["failures_total"] >= ingestion["consecutive_failures"]
    assert recent(ingestion["last_error_at"])
    # Sanitised: no SQL, no server message.
    assert ingestion["last_error"]
    for leak in ("INSERT", "trades", "read-only", "unnest"):
        assert leak not in ingestion["last_error"]


# --- GET /status/ingestion -----------------------------------------------------------------


def test_ingestion_status_is_disabled_when_ingestion_is_off(client: TestClient):
    body = status(client)

    assert body["state"] == "disabled"
    assert body["enabled"] is False
    assert body["stale_after_seconds"] == pytest.approx(3 * body["interval_seconds"])
    assert body["symbols"] == SYMBOLS
    assert body["last_batch_at"] is None
    assert body["seconds_since_last_batch"] is None
    assert (body["last_batch_size"], body["batches_total"], body["trades_total"]) == (0, 0, 0)
    assert (body["failures_total"], body["consecutive_failures"]) == (0, 0)
    assert (body["last_error"], body["last_error_at"]) == (None, None)


@pytest.mark.timing
def test_ingestion_status_becomes_running(ingesting: TestClient):
    body = wait_until(lambda: status(ingesting), lambda b: b["state"] == "running", what="running")

    assert body["enabled"] is True
    assert body["interval_seconds"] == pytest.approx(INTERVAL)
    assert body["stale_after_seconds"] == pytest.approx(3 * INTERVAL)
    assert body["symbols"] == SYMBOLS
    assert recent(body["last_batch_at"])
    assert 0 <= body["seconds_since_last_batch"] < 1
    # Every symbol prints 1 to 3 trades per batch.
    assert len(SYMBOLS) <= body["last_batch_size"] <= 3 * len(SYMBOLS)
    assert body["consecutive_failures"] == 0


def test_ingestion_status_totals_grow(ingesting: TestClient):
    first = wait_until(lambda: status(ingesting), lambda b: b["batches_total"] >= 1, what="a batch")

    later = wait_until(
        lambda: status(ingesting),
        lambda b: b["batches_total"] >= first["batches_total"] + 2,
        what="two more batches",
    )

    assert later["trades_total"] >= first["trades_total"] + 2 * len(SYMBOLS)
    assert later["trades_total"] >= len(SYMBOLS) * later["batches_total"]
    assert datetime.fromisoformat(later["last_batch_at"]) > datetime.fromisoformat(
        first["last_batch_at"]
    )


def test_ingested_trades_are_served(ingesting: TestClient):
    wait_until(lambda: status(ingesting), lambda b: b["batches_total"] >= 1, what="a batch")

    for symbol in SYMBOLS:
        response = ingesting.get("/price/latest", params={"symbol": symbol})
        assert response.status_code == 200
        assert recent(response.json()["timestamp"])


# --- GET /metrics --------------------------------------------------------------------------


def test_metrics_count_requests_and_uptime(client: TestClient):
    first = client.get("/metrics").json()
    client.get("/nope")

    second = client.get("/metrics").json()

    assert second["requests"]["count"] >= first["requests"]["count"] + 2
    assert second["uptime_seconds"] >= first["uptime_seconds"]
    assert second["started_at"] == first["started_at"]
    requests = second["requests"]
    assert requests["max_ms"] >= requests["average_ms"] > 0
    assert requests["max_ms"] >= requests["last_ms"] > 0


def test_metrics_report_start_time_and_database_up(client: TestClient):
    body = client.get("/metrics").json()

    started = datetime.fromisoformat(body["started_at"])
    assert body["started_at"].endswith("Z")
    assert started <= datetime.now(UTC)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    assert body["uptime_seconds"] == pytest.approx(elapsed, abs=5)
    assert body["database"]["status"] == "up"
    assert body["database"]["latency_ms"] >= 0
    assert body["ingestion"] == {
        "state": "disabled",
        "last_batch_at": None,
        "heartbeat_age_seconds": None,
    }


def test_metrics_report_the_ingestion_heartbeat(ingesting: TestClient):
    body = wait_until(
        lambda: ingesting.get("/metrics").json(),
        lambda b: b["ingestion"]["state"] == "running",
        what="running",
    )

    assert recent(body["ingestion"]["last_batch_at"])
    assert body["ingestion"]["heartbeat_age_seconds"] >= 0
