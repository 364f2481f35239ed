"""`fill` on /candles: every bucket of the window, empty ones marked, never filled across a
time the symbol was not being ingested (a gap)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.api.support import SyncDatabase, error_names, iso, past_midnight

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
