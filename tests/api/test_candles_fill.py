"""`fill` on /candles: every bucket of the window, empty ones marked, never filled across a
time the symbol was not being ingested (a gap)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from handlers import exports
from ingestion.generator import TradeGenerator
from ingestion.loop import Ingestor
from ingestion.status import IngestionStatus
from tests.api.support import (
    SyncDatabase,
    app_settings,
    error_names,
    export_rows,
    iso,
    past_midnight,
    running_app,
)
from tests.support import dsn, open_test_engine, wait_until_async

BASE = past_midnight()
WINDOW = {
    "symbol": "AAPL",
    "interval": "1m",
    "start": iso(BASE),
    "end": iso(BASE + timedelta(minutes=10)),
}


def at(minutes: float) -> datetime:
    return BASE + timedelta(minutes=minutes)


@pytest.fixture
def history(market: SyncDatabase) -> SyncDatabase:
    """AAPL traded in minutes 0 and 5; ingested through minute 3, and again from minute 4."""
    market.seed_trades("AAPL", [(at(0.5), "100", 2), (at(5.5), "105", 3)])
    market.execute(
        "INSERT INTO ingestion_intervals (symbol, feed, started_at, complete_through) "
        "VALUES ('AAPL', 'coinbase', $1, $2), ('AAPL', 'coinbase', $3, $4)",
        at(-60),
        at(3),
        at(4),
        at(20),
    )
    return market


def _summary(candles: list[dict[str, Any]]) -> list[tuple[int, Any, int, bool]]:
    return [
        (
            int((datetime.fromisoformat(c["timestamp"]) - BASE).total_seconds() // 60),
            c["close"],
            c["trade_count"],
            c["gap"],
        )
        for c in candles
    ]


def _fed_through(history: SyncDatabase, through: datetime) -> None:
    """AAPL's venue feed has stored every trade up to `through`, and nothing after."""
    history.execute(
        "INSERT INTO feed_watermarks (symbol, feed, last_trade_id, complete_through, since) "
        "VALUES ('AAPL', 'coinbase', 1, $1, $2)",
        through,
        at(-60),
    )


def test_fill_null_returns_every_bucket_marking_the_gap(client: TestClient, history: SyncDatabase):
    body = client.get("/candles", params={**WINDOW, "fill": "null"}).json()
    assert body["count"] == 10
    assert _summary(body["candles"]) == [
        (0, 100, 1, False),
        (1, None, 0, False),
        (2, None, 0, False),
        (3, None, 0, True),  # the feed was down from minute 3 to minute 4
        (4, None, 0, False),
        (5, 105, 1, False),
        *((m, None, 0, False) for m in range(6, 10)),
    ]
    empty = body["candles"][1]
    assert (empty["open"], empty["high"], empty["low"], empty["vwap"], empty["volume"]) == (
        None,
        None,
        None,
        None,
        0,
    )


def test_fill_previous_carries_the_close_but_never_across_a_gap(
    client: TestClient, history: SyncDatabase
):
    body = client.get("/candles", params={**WINDOW, "fill": "previous"}).json()
    assert _summary(body["candles"]) == [
        (0, 100, 1, False),
        (1, 100, 0, False),
        (2, 100, 0, False),
        (3, None, 0, True),
        (4, None, 0, False),  # after a gap nothing is carried until the next trade
        (5, 105, 1, False),
        *((m, 105, 0, False) for m in range(6, 10)),
    ]
    carried = body["candles"][1]
    assert carried["open"] == carried["high"] == carried["low"] == 100 and carried["volume"] == 0


def test_an_empty_bucket_closes_only_once_its_feed_stored_everything_through_it(
    client: TestClient, history: SyncDatabase
):
    # AAPL's feed has stored everything only through minute 2.5: later buckets, empty or not,
    # may still receive trades, however long ago they ended by the clock.
    _fed_through(history, at(2.5))
    response = client.get("/candles", params={**WINDOW, "fill": "null"})
    assert [c["closed"] for c in response.json()["candles"]] == [True, True] + [False] * 8
    assert "immutable" not in response.headers["cache-control"]


def test_without_a_record_of_ingestion_every_empty_bucket_is_a_gap(
    client: TestClient, market: SyncDatabase
):
    market.seed_trades("AAPL", [(at(0.5), "100", 2)])
    body = client.get("/candles", params={**WINDOW, "fill": "previous"}).json()
    assert [c["gap"] for c in body["candles"]] == [False] + [True] * 9
    assert [c["close"] for c in body["candles"][1:]] == [None] * 9


def test_fill_none_is_todays_answer(client: TestClient, history: SyncDatabase):
    plain = client.get("/candles", params=WINDOW).json()
    assert client.get("/candles", params={**WINDOW, "fill": "none"}).json() == plain
    assert [c["trade_count"] for c in plain["candles"]] == [1, 1]
    assert all("gap" not in c for c in plain["candles"])


def test_walking_the_cursors_with_fill_returns_every_bucket_once(
    client: TestClient, history: SyncDatabase
):
    seen: list[str] = []
    params: dict[str, Any] = {**WINDOW, "fill": "null", "limit": 3}
    while True:
        body = client.get("/candles", params=params).json()
        assert body["count"] <= 3
        seen += [c["timestamp"] for c in body["candles"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert len(seen) == len(set(seen)) == 10
    assert seen == sorted(seen)


def test_fill_aligns_to_a_time_zone(client: TestClient, history: SyncDatabase):
    params = {**WINDOW, "interval": "5m", "fill": "null", "timezone": "Asia/Kolkata"}
    body = client.get("/candles", params=params).json()
    assert [c["trade_count"] for c in body["candles"]] == [1, 1]
    assert body["timezone"] == "Asia/Kolkata"


def test_an_unknown_fill_is_refused_naming_it(client: TestClient, history: SyncDatabase):
    response = client.get("/candles", params={**WINDOW, "fill": "zero"})
    assert error_names(response) == ["fill"]


async def test_synthetic_ingestion_shows_a_quiet_market_as_quiet(fresh_database_url: URL):
    """The synthetic writer records the stretches it ingested: extended batch after batch,
    broken by an outage longer than the stale window (3 x interval) or by a restart."""
    status = IngestionStatus(enabled=True, interval_seconds=60.0, symbols=("AAPL",))
    moment = [at(0)]
    engine = open_test_engine(fresh_database_url)

    def ingestor() -> Ingestor:
        # A past session replayed: the clock stamps each batch where the test says.
        walk = TradeGenerator({"AAPL": Decimal("100")}, seed=7, max_trades_per_symbol=2)
        return Ingestor(engine, walk, status, clock=lambda: moment[0])

    with running_app(app_settings(fresh_database_url)) as app:
        try:
            first = ingestor()
            for minutes in (0.5, 2.5, 4.5, 8.5):  # 4.5 -> 8.5: an outage past the window
                moment[0] = at(minutes)
                assert await first.run_once() > 0
            moment[0] = at(10.5)  # a restart, though within the window
            assert await ingestor().run_once() > 0
        finally:
            await engine.dispose()
        params = {**WINDOW, "start": iso(at(-1)), "end": iso(at(11)), "fill": "null"}
        candles = app.get("/candles", params=params).json()["candles"]
    summary = [(minute, c["trade_count"] > 0, c["gap"]) for minute, c in enumerate(candles, -1)]
    assert summary == [
        (-1, False, True),  # before ingestion started
        (0, True, False),
        (1, False, False),  # quiet, not a gap
        (2, True, False),
        (3, False, False),
        (4, True, False),
        *((m, False, True) for m in (5, 6, 7)),
        (8, True, False),
        (9, False, True),  # the writer restarted after minute 8.5
        (10, True, False),
    ]
    assert {c["close"] for c in candles if not c["trade_count"]} == {None}


@pytest.mark.timing
async def test_the_running_synthetic_feed_records_what_it_ingests(fresh_database_url: URL):
    settings = app_settings(
        fresh_database_url, ingestion_enabled=True, ingestion_interval_seconds=0.1
    )
    with running_app(settings) as app:
        conn = await asyncpg.connect(dsn(fresh_database_url))
        try:
            await wait_until_async(
                lambda: conn.fetchval(
                    "SELECT count(*) FROM ingestion_intervals WHERE symbol = 'AAPL' "
                    "AND feed = 'synthetic' AND complete_through > started_at"
                ),
                what="an ingestion interval extended by a later batch",
            )
        finally:
            await conn.close()
        now = datetime.now(UTC)
        params = {"symbol": "AAPL", "start": iso(now - timedelta(minutes=30)), "fill": "null"}
        candles = app.get("/candles", params=params).json()["candles"]
    assert candles[0]["gap"] is True  # long before ingestion started
    assert any(c["trade_count"] for c in candles)


def _normal(row: dict[str, Any]) -> tuple[Any, ...]:
    """A candle as the same values whatever the format wrote (CSV: text, null is empty)."""

    def exact(value: Any) -> Decimal | None:
        return None if value in (None, "") else Decimal(str(value)).normalize()

    def flag(value: Any) -> bool:
        return value if isinstance(value, bool) else value == "true"

    stamp = row["timestamp"]
    moment = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp)
    return (
        row["symbol"],
        iso(moment),
        *(exact(row[k]) for k in ("open", "high", "low", "close", "volume", "vwap")),
        int(row["trade_count"]),
        flag(row["closed"]),
        int(row["revision"]),
        flag(row["gap"]),
    )


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "parquet", "arrow"])
@pytest.mark.parametrize("fill", ["null", "previous"])
@pytest.mark.parametrize("page", [5000, 3])
def test_a_filled_candle_export_holds_what_filled_candles_answer(
    client: TestClient,
    history: SyncDatabase,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    fill: str,
    page: int,
):
    # A few buckets per statement: carrying a close forward crosses the statements.
    monkeypatch.setattr(exports, "_BUCKETS", page)
    window = {k: v for k, v in WINDOW.items() if k != "symbol"}
    expected = sorted(
        (
            _normal({**c, "symbol": symbol})
            for symbol in ("AAPL", "MSFT")  # MSFT: no trades, no record of ingestion
            for c in client.get(
                "/candles", params={**WINDOW, "symbol": symbol, "fill": fill}
            ).json()["candles"]
        ),
        key=lambda row: (row[1], row[0]),
    )
    params = {**window, "symbols": "MSFT,AAPL", "format": fmt, "fill": fill}
    response = client.get("/export/candles", params=params)
    assert response.status_code == 200
    assert int(response.headers["x-row-count"]) == len(expected) == 20
    assert [_normal(row) for row in export_rows(response.content, fmt)] == expected


def test_an_exported_empty_bucket_closes_only_once_its_feed_stored_everything_through_it(
    client: TestClient, history: SyncDatabase
):
    _fed_through(history, at(2.5))
    window = {k: v for k, v in WINDOW.items() if k != "symbol"}
    params = {**window, "symbols": "AAPL", "format": "csv", "fill": "null"}
    rows = export_rows(client.get("/export/candles", params=params).content, "csv")
    answered = client.get("/candles", params={**WINDOW, "fill": "null"}).json()["candles"]
    assert [row["closed"] == "true" for row in rows] == [c["closed"] for c in answered]
    assert [c["closed"] for c in answered] == [True, True] + [False] * 8


def test_a_candle_export_has_a_gap_column_only_with_fill(client: TestClient, history: SyncDatabase):
    params = {**WINDOW, "symbols": "AAPL", "format": "csv"}
    del params["symbol"]
    plain = client.get("/export/candles", params=params).text.splitlines()
    filled = client.get("/export/candles", params={**params, "fill": "null"}).text.splitlines()
    assert plain[0].split(",")[-1] == "revision" and len(plain) == 3
    assert filled[0].split(",")[-1] == "gap" and len(filled) == 11
    explicit = client.get("/export/candles", params={**params, "fill": "none"})
    assert explicit.text.splitlines() == plain


def test_an_unknown_export_fill_is_refused_naming_it(client: TestClient, history: SyncDatabase):
    params = {**WINDOW, "symbols": "AAPL", "fill": "zero"}
    del params["symbol"]
    assert error_names(client.get("/export/candles", params=params)) == ["fill"]
