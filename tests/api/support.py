"""Helpers for the API tests: running the real app, committed test data, problem checks."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx2 as httpx
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient

from ingestion.leader import LEADER_LOCK_KEY
from mdp.app import create_app
from mdp.settings import DEFAULT_SYMBOLS, Settings, SymbolSpec
from persistence.feeds import StoredMark, insert_venue_batch
from persistence.materialise import advance_watermark
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, VenueTrade, insert_live_batch
from tests.support import (
    dsn,
    open_test_engine,
    provision_key_now,
    restore_trades,
    seed_trades,
    wait_until,
)

__all__ = [
    "Row",
    "SyncDatabase",
    "TradeRecord",
    "assert_problem",
    "decimal_json",
    "export_rows",
    "iso",
    "past_midnight",
    "running_app",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"

# A trade of one symbol as tests write it: (timestamp, price, volume).
Row = tuple[datetime, str | Decimal, int | Decimal]
# One of the service's write paths, storing trades in the caller's transaction.
StoreTrades = Callable[[AsyncConnection, list[NewTrade]], Awaitable[None]]
_NEWEST_IDS = text("SELECT id FROM trades WHERE symbol = :symbol ORDER BY id DESC LIMIT :count")


def export_rows(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """The rows of an export file as its format's own reader gives them (CSV: text)."""
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode())))
    if fmt == "ndjson":
        return [json.loads(line) for line in data.splitlines()]
    table = pq.read_table(io.BytesIO(data)) if fmt == "parquet" else pa_ipc.open_stream(data)
    return table.read_all().to_pylist() if fmt == "arrow" else table.to_pylist()


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
    volume: int | Decimal
    timestamp: datetime


_VENUE_SINCE = datetime(2000, 1, 1, tzinfo=UTC)


class SyncDatabase:
    """Committed writes and reads from synchronous tests, on a private event loop.

    The app runs in the TestClient's own thread and loop; these connections are independent
    of it, so what a test writes here is exactly what a client of the real service would see.
    Symbols and trades are written through the service's own write paths (on an engine);
    `execute` and `fetchval` are for a test's own SQL (on one connection, kept between calls).
    """

    def __init__(self, url: URL) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._conn: asyncpg.Connection | None = None
        # Connects on first use, on this loop: only `_run` ever awaits it.
        self._engine = open_test_engine(url)

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

        async def register() -> None:
            async with self._engine.begin() as conn:
                await ensure_symbols(conn, ((spec.symbol, spec.name) for spec in symbols))

        self._run(register())

    async def _ensure_ingestion_state(self) -> None:
        async with self._engine.begin() as conn:
            # The row migrations create, which `reset` empties with every table.
            await conn.execute(
                text(
                    "INSERT INTO ingestion_state (id, last_batch_at) "
                    "VALUES (1, '-infinity') ON CONFLICT (id) DO NOTHING"
                )
            )

    def materialise(self) -> None:
        """What the ingestion leader does as minutes become final (these apps run without
        ingestion): candles of every final bucket stored, the watermark caught up."""

        async def run() -> None:
            await self._ensure_ingestion_state()
            while True:
                async with self._engine.begin() as conn:
                    advance = await advance_watermark(conn, span=timedelta(days=3))
                if advance is None or advance.caught_up:
                    return

        self._run(run())

    def seed_trades(self, symbol: str, trades: Sequence[Row]) -> list[TradeRecord]:
        """History of `symbol`, committed as `mdp backfill` writes it: with its candles."""
        return self._store(seed_trades, symbol, trades)

    def restore_trades(self, symbol: str, trades: Sequence[Row]) -> list[TradeRecord]:
        """Trades of `symbol`, committed as a restored dump holds them: nothing materialised,
        so candles come from trades until the leader's step materialises them."""
        return self._store(restore_trades, symbol, trades)

    def insert_live_batch(self, symbol: str, trades: Sequence[Row]) -> list[TradeRecord]:
        """A live batch of `symbol`, committed and announced as a single ingestion writer
        writes one: every trade carries the batch's stamp, newer than the last batch's.

        Not on the shared `market`: `reset` empties `ingestion_state` (so the batch is
        refused), and the shared app's listener would go on answering the batch's prices
        from memory after `reset` empties `trades`.
        """

        async def write(conn: AsyncConnection, new: list[NewTrade]) -> None:
            stamped = new[0].timestamp
            stored = await insert_live_batch(
                conn, new, stamped=stamped, leader_pid=None, lock_key=0
            )
            assert stored == len(new), f"a live batch at {stamped} is not newer than the last"

        return self._store(write, symbol, trades)

    def insert_venue_batch(
        self,
        symbol: str,
        trades: Sequence[tuple[datetime, str, str]],
        *,
        complete_through: datetime,
        stamped: datetime,
    ) -> int:
        """A venue feed's batch of `symbol` (venue trade id, time, price; size 1), committed
        with the watermark `complete_through` as the leader writes one (its feed ingesting
        without a break since `_VENUE_SINCE`); how many were late (stored, and stamped at or
        before the watermark already committed)."""
        new = [
            VenueTrade(symbol, Decimal(price), Decimal(1), moment, venue_id, "buy")
            for moment, venue_id, price in trades
        ]
        last_id = max((int(trade.venue_trade_id) for trade in new), default=0)

        async def write() -> int:
            await self._ensure_ingestion_state()
            async with self._engine.begin() as conn:
                batch = await insert_venue_batch(
                    conn,
                    new,
                    {symbol: StoredMark(last_id, complete_through, _VENUE_SINCE)},
                    feed="coinbase",
                    stamped=stamped,
                    leader_pid=None,
                    lock_key=LEADER_LOCK_KEY,
                )
                assert batch is not None, f"a venue batch at {stamped} is not newer than the last"
                return sum(batch.late.values())

        late: int = self._run(write())
        return late

    def _store(self, write: StoreTrades, symbol: str, trades: Sequence[Row]) -> list[TradeRecord]:
        """Write `trades` in the order given, then read back the ids they were given."""
        new = [NewTrade(symbol, Decimal(price), volume, moment) for moment, price, volume in trades]

        async def store() -> list[int]:
            async with self._engine.begin() as conn:
                await write(conn, new)
                # Ids follow the order given, and nothing else writes this symbol meanwhile:
                # the newest len(new) ids of the symbol are these trades'.
                newest = await conn.execute(_NEWEST_IDS, {"symbol": symbol, "count": len(new)})
                return list(reversed(newest.scalars().all()))

        ids: list[int] = self._run(store())
        return [TradeRecord(i, *trade) for i, trade in zip(ids, new, strict=True)]

    def close(self) -> None:
        try:
            if self._conn is not None and not self._conn.is_closed():
                self._run(self._conn.close(timeout=5))
            self._run(self._engine.dispose())
        finally:
            self._loop.close()
