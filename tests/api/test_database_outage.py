"""The database going away under a running app, and an app started before its database.

A dedicated embedded PostgreSQL is stopped and started again under the app; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from mdp.embedded import EmbeddedPostgres
from mdp.settings import DEFAULT_SYMBOLS
from tests.api.support import app_settings, assert_problem, running_app
from tests.support import DatabaseFactory, wait_until

pytestmark = pytest.mark.slow

# Every answer while the database is away must come well within this (connect timeout: 1 s).
ANSWER_WITHIN_SECONDS = 5.0
DATA_REQUESTS: list[tuple[str, dict[str, str]]] = [
    ("/symbols", {}),
    ("/price/latest", {"symbol": "AAPL"}),
    ("/trades", {"symbol": "AAPL"}),
    ("/candles", {"symbol": "AAPL"}),
]


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """Live (not zombie) postmasters serving `pgdata`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and str(pgdata) in cmdline:
            found.append(process)
    return found


class Server:
    """A dedicated embedded PostgreSQL that tests stop and start under a running app."""

    def __init__(self, root: Path) -> None:
        self.pgdata = root / "pgdata"
        self._embedded = EmbeddedPostgres(self.pgdata)
        self.url = self._embedded.start()
        self.running = True

    def stop(self) -> None:
        self._embedded.stop()
        self.running = False
        assert not postgres_processes(self.pgdata)

    def start(self) -> URL:
        url = self._embedded.start()
        self.running = True
        return url

    def new_database(self) -> URL:
        """An empty database on this server (start-up migrates it), left to die with it."""
        # A loop of its own: these tests are synchronous, beside the session's loop.
        loop = asyncio.new_event_loop()
        try:
            url: URL = loop.run_until_complete(DatabaseFactory(self.url).create(migrated=False))
        finally:
            loop.close()
        return url


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # Not under pytest's basetemp: the server runs as another user when tests run as root,
    # and pytest makes its own temp root private again whenever a session starts.
    root = Path(tempfile.mkdtemp(prefix="mdp-outage-"))
    try:
        instance = Server(root)
        yield instance
        if instance.running:
            instance.stop()
        wait_until(
            lambda: postgres_processes(instance.pgdata),
            lambda processes: not processes,
            timeout=15,
            what="no postgres left behind",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running_server(server: Server) -> Iterator[Server]:
    """The server, up at the start and at the end of the test whatever happened in between."""
    if not server.running:
        server.start()
    yield server
    if not server.running:
        server.start()


def timed_get(client: TestClient, path: str, params: dict[str, str] | None = None) -> Any:
    started = time.monotonic()
    response = client.get(path, params=params)
    elapsed = time.monotonic() - started
    assert elapsed < ANSWER_WITHIN_SECONDS, f"{path} took {elapsed:.1f}s"
    return response


def assert_database_unavailable(client: TestClient) -> None:
    for path, params in DATA_REQUESTS:
        body = assert_problem(timed_get(client, path, params), 503, "database_unavailable")
        assert body["title"]
    health = timed_get(client, "/health")
    assert health.status_code == 503
    assert health.headers["content-type"] == "application/json"
    assert 1 <= int(health.headers["retry-after"]) <= 3600
    body = health.json()
    assert body["status"] == "fail"
    assert body["checks"]["database"]["status"] == "fail"
    assert body["checks"]["database"]["latency_ms"] is None
    assert body["checks"]["database"]["detail"]


def is_ok(response: Any) -> bool:
    return bool(response.status_code == 200)


def test_outage_answers_503_and_recovers_without_restarting_the_app(running_server: Server):
    database = running_server.new_database()
    settings = app_settings(database, ingestion_enabled=True, ingestion_interval_seconds=0.1)
    with running_app(settings) as client:
        before = wait_until(
            lambda: client.get("/price/latest", params={"symbol": "AAPL"}), is_ok, what="a trade"
        ).json()
        url = running_server.url

        running_server.stop()

        # Twice: first on pooled connections the server dropped, then on fresh connects.
        assert_database_unavailable(client)
        assert_database_unavailable(client)
        metrics = timed_get(client, "/metrics")
        assert metrics.status_code == 200
        assert metrics.json()["database"] == {"status": "down", "latency_ms": None}
        assert timed_get(client, "/").status_code == 200
        failing = wait_until(
            lambda: client.get("/status/ingestion").json(),
            lambda body: body["consecutive_failures"] >= 1,
            what="an ingestion failure",
        )
        assert failing["last_error"] and str(running_server.pgdata) not in failing["last_error"]

        restarted = running_server.start()

        assert restarted == url, "the server came back on another address"
        for path, params in DATA_REQUESTS:
            wait_until(
                functools.partial(client.get, path, params=params), is_ok, what=f"{path} back"
            )
        health = wait_until(lambda: client.get("/health"), is_ok, what="health recovered")
        assert health.json()["status"] in {"pass", "warn"}
        recovered = wait_until(
            lambda: client.get("/status/ingestion").json(),
            lambda body: body["state"] == "running" and body["consecutive_failures"] == 0,
            what="ingestion recovered",
        )
        assert recovered["batches_total"] > failing["batches_total"]
        after = client.get("/price/latest", params={"symbol": "AAPL"}).json()
        assert datetime.fromisoformat(after["timestamp"]) >= datetime.fromisoformat(
            before["timestamp"]
        )


def test_app_started_while_the_database_is_down_finishes_start_up_when_it_appears(
    running_server: Server,
):
    # Never migrated: start-up has to create the schema and the symbols itself.
    database = running_server.new_database()
    running_server.stop()

    entered = time.monotonic()
    # AUTH_MODE=off: no key can be made in a database that is down (and never migrated).
    with running_app(app_settings(database, auth_mode="off"), wait_ready=False) as client:
        assert time.monotonic() - entered < ANSWER_WITHIN_SECONDS
        assert_database_unavailable(client)
        assert timed_get(client, "/").status_code == 200

        running_server.start()

        symbols = wait_until(lambda: client.get("/symbols"), is_ok, what="start-up finished")
        assert [row["symbol"] for row in symbols.json()["symbols"]] == sorted(
            spec.symbol for spec in DEFAULT_SYMBOLS
        )
        assert_problem(client.get("/price/latest", params={"symbol": "AAPL"}), 404, "no_trades")
        assert client.get("/trades", params={"symbol": "AAPL"}).json()["trades"] == []
        assert client.get("/candles", params={"symbol": "AAPL"}).json()["candles"] == []
        assert client.get("/health").json()["status"] == "pass"


def test_health_does_not_pass_while_start_up_still_waits_for_the_database(
    running_server: Server,
):
    database = running_server.new_database()
    running_server.stop()
    with running_app(app_settings(database, auth_mode="off"), wait_ready=False) as client:
        assert client.get("/health").status_code == 503

        running_server.start()

        # Until /symbols answers, a passing /health would send traffic to an instance whose
        # every data operation still answers 503 database_unavailable.
        observed: list[tuple[int, int]] = []

        def observe() -> int:
            health = client.get("/health").status_code
            symbols = client.get("/symbols").status_code
            observed.append((health, symbols))
            return symbols

        wait_until(observe, lambda symbols: symbols == 200, what="start-up", every=0.01)
        assert (200, 503) not in observed, observed
