"""Helpers for the API tests: running the real app, committed test data, problem checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx2 as httpx
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from mdp.app import create_app
from mdp.settings import DEFAULT_SYMBOLS, Settings, SymbolSpec
from tests.support import dsn, provision_key_now, wait_until

__all__ = [
    "SyncDatabase",
    "TradeRecord",
    "assert_problem",
    "decimal_json",
    "iso",
    "past_midnight",
    "running_app",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"


def iso(moment: datetime) -> str:
    """How the API writes a UTC timestamp: RFC 3339 with a `Z`."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def past_midnight(days: int = 3) -> datetime:
    """A UTC midnight safely in the past: aligned to every candle interval, 1d included."""
    moment = datetime.now(UTC) - timedelta(days=days)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def decimal_json(response: httpx.Response) -> Any:
    """The body with every JSON number that has a fraction parsed as an exact Decimal."""
    return json.loads(response.text, parse_float=Decimal)


def _check_invariants(response: httpx.Response) -> None:
    """Promises that hold for every response of every test (installed as an httpx hook)."""
    response.read()
    status = response.status_code
    path = response.request.url.path
    assert status < 500 or status == 503, (
        f"{response.request.method} {response.request.url} answered {status}: {response.text}"
    )
    assert response.headers.get("x-request-id"), f"no X-Request-ID on {path} ({status})"
    if status >= 400 and not (path == "/health" and status == 503):
        assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE), (
            f"{path} answered {status} as {response.headers['content-type']}"
        )


def _is_ready(response: httpx.Response) -> bool:
    return response.status_code != 503


@contextlib.contextmanager
def running_app(
    settings: Settings, *, wait_ready: bool = True, with_key: bool = True
) -> Iterator[TestClient]:
    """The real app (lifespan included) with response validation on, behind a TestClient.

    With `wait_ready`, returns once start-up (migrations, symbol seeding) has finished: that
    happens in the background, and data operations answer 503 until then.

    Under AUTH_MODE=required (the default with a database URL) the client sends a real API key
    with every scope, made in the database before the app starts; so the database must be up
    then. Tests of a database that is down at start-up run with auth_mode="off".
    """
    key = None
    if settings.auth == "required" and with_key:
        assert settings.database_url is not None
        key = provision_key_now(settings.database_url)
    app = create_app(settings, validate_responses=True)
    with app.test_client() as client:
        client.event_hooks = {"request": [], "response": [_check_invariants]}
        if key is not None:
            client.headers["X-API-Key"] = key
        if wait_ready:
            wait_until(lambda: client.get("/symbols"), _is_ready, what="app start-up")
        yield client


def app_settings(url: URL, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "database_url": url,
        "ingestion_enabled": False,
        # Short timeouts keep every "database is away" answer quick.
        "db_connect_timeout_seconds": 1.0,
        "db_query_timeout_seconds": 5.0,
        **overrides,
    }
    return Settings(**options)


def assert_problem(
    response: httpx.Response, status: int, code: str, *, request_id: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem as the contract describes it; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:mdp:problem:{code}"
    assert body["code"] == code
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    if request_id is not None:
        assert body["request_id"] == request_id
    if status == 503:
        assert 1 <= int(response.headers["retry-after"]) <= 3600
    return body


def error_names(response: httpx.Response) -> list[str]:
    """The `name` of every entry in a validation problem's `errors`."""
    body = assert_problem(response, 400, "validation_failed")
    for entry in body["errors"]:
        assert set(entry) == {"in", "name", "message"}
        assert entry["message"]
    return [entry["name"] for entry in body["errors"]]


@dataclass(frozen=True, slots=True)
class TradeRecord:
    id: int
    symbol: str
    price: Decimal
    volume: int
    timestamp: datetime


class SyncDatabase:
    """Committed writes and reads from synchronous tests, on a private event loop.

    The app runs in the TestClient's own thread and loop; this connection is independent of
    it, so what a test writes here is exactly what a client of the real service would see.
    """

    def __init__(self, url: URL) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = self._run(asyncpg.connect(dsn(self.url)))
        return self._conn

    def execute(self, sql: str, *args: Any) -> str:
        return str(self._run(self.conn.execute(sql, *args)))

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self._run(self.conn.fetchval(sql, *args))

    def reset(self, symbols: Sequence[SymbolSpec] = DEFAULT_SYMBOLS) -> None:
        """Empty every table, then register `symbols` again (the app seeds them only at start).

        Every table but Alembic's and the API keys' (the client's own key lives there):
        derived data (persisted candles and whatever records what was computed) must never
        outlive the trades it came from.
        """
        tables = self._run(
            self.conn.fetch(
                "SELECT format('%I', tablename) AS name FROM pg_tables "
                "WHERE schemaname = current_schema() "
                "AND tablename NOT IN ('alembic_version', 'api_keys', 'api_key_changes')"
            )
        )
        names = ", ".join(row["name"] for row in tables)
        self.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        self._run(
            self.conn.executemany(
                "INSERT INTO symbols (symbol, name) VALUES ($1, $2)",
                [(spec.symbol, spec.name) for spec in symbols],
            )
        )

    def add_trades(
        self, symbol: str, trades: Sequence[tuple[datetime, str | Decimal, int]]
    ) -> list[TradeRecord]:
        """Insert (timestamp, price, volume) rows in order, committed; ids increase in order."""

        async def insert() -> list[TradeRecord]:
            records = []
            async with self.conn.transaction():
                for timestamp, price, volume in trades:
                    trade_id = await self.conn.fetchval(
                        "INSERT INTO trades (symbol, price, volume, timestamp) "
                        "VALUES ($1, $2, $3, $4) RETURNING id",
                        symbol,
                        Decimal(price),
                        volume,
                        timestamp,
                    )
                    records.append(TradeRecord(trade_id, symbol, Decimal(price), volume, timestamp))
            return records

        result: list[TradeRecord] = self._run(insert())
        return result

    def close(self) -> None:
        try:
            if self._conn is not None and not self._conn.is_closed():
                self._run(self._conn.close(timeout=5))
        finally:
            self._loop.close()
