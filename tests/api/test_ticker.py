"""GET /ticker: rolling 24-hour statistics, exact, from materialised minutes plus the edges."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from persistence.models import VWAP_SCALE
from tests.api.support import SyncDatabase, assert_problem, decimal_json, error_names
from tests.support import dsn

T = TypeVar("T")

_REFERENCE = """
    SELECT (array_agg(price ORDER BY timestamp, id))[1] AS open, max(price) AS high,
           min(price) AS low, (array_agg(price ORDER BY timestamp DESC, id DESC))[1] AS last,
           max(timestamp) AS last_at, sum(volume) AS volume,
           sum(price * volume) AS notional, count(*) AS trade_count
    FROM trades WHERE symbol = $1 AND timestamp >= $2 AND timestamp <= $3
"""


async def _reference(url: URL, start: datetime, end: datetime) -> asyncpg.Record:
    conn = await asyncpg.connect(dsn(url))
    try:
        row: asyncpg.Record = await conn.fetchrow(_REFERENCE, "AAPL", start, end)
        return row
    finally:
        await conn.close()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """A coroutine from this synchronous test, on a loop of its own in another thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def test_ticker_equals_the_decimal_statistics_of_the_last_24_hours(
    client: TestClient, market: SyncDatabase, api_database_url: URL
):
    now = datetime.now(UTC)
    rows = [
        (now - timedelta(hours=25), "999.99", 1000),  # before the window
        (now - timedelta(hours=24) + timedelta(seconds=30), "100.10", 3),  # first minute, partial
        (now - timedelta(hours=20), "100.30", 7),
        (now - timedelta(hours=20) + timedelta(seconds=1), "99.70", 11),
        (now - timedelta(hours=3, seconds=17), "101.55", 13),
        (now - timedelta(minutes=5), "102.01", 17),
        (now - timedelta(seconds=3), "100.35", 19),  # not materialised yet
    ]
    # Restored as from a dump, so nothing is materialised until the leader's step below,
    # which stores only final minutes (seeded as history, the open minute would have its
    # candle already).
    market.restore_trades("AAPL", rows)
    # The final minutes (5, or 6 when the two trades at -20 h straddle a minute) are
    # materialised; the newest trade's minute is not final yet.
    market.materialise()
    stored = market.fetchval(
        "SELECT count(*) FROM candles WHERE symbol = 'AAPL' AND interval = '1m'"
    )
    assert 5 <= stored <= 6

    response = client.get("/ticker", params={"symbols": "aapl,MSFT"})

    assert response.status_code == 200
    body = decimal_json(response)
    assert body["without_trades"] == ["MSFT"] and body["count"] == 1
    (ticker,) = body["tickers"]
    start = datetime.fromisoformat(ticker["window_start"])
    expected = _run(_reference(api_database_url, start, now + timedelta(minutes=1)))
    assert expected["trade_count"] == 6
    change = expected["last"] - expected["open"]
    assert ticker == {
        "symbol": "AAPL",
        "window_start": ticker["window_start"],
        "last_price": expected["last"],
        "last_timestamp": expected["last_at"].isoformat().replace("+00:00", "Z"),
        "open": expected["open"],
        "high": expected["high"],
        "low": expected["low"],
        "volume": expected["volume"],
        "vwap": round(expected["notional"] / expected["volume"], VWAP_SCALE),
        "trade_count": 6,
        "change": change,
        "change_percent": round(100 * change / expected["open"], 4),
    }
    assert ticker["change"] == Decimal("0.25")


def test_ticker_names_every_unknown_symbol(client: TestClient, market: SyncDatabase):
    response = client.get("/ticker", params={"symbols": "NOPE1,AAPL,nope2"})

    body = assert_problem(response, 404, "symbol_not_found")
    assert "'NOPE1'" in body["detail"] and "'NOPE2'" in body["detail"]


@pytest.mark.parametrize("symbols", ["", ",".join(["A"] * 101), "AA PL"])
def test_ticker_rejects_a_malformed_or_too_long_list(client: TestClient, symbols: str):
    assert error_names(client.get("/ticker", params={"symbols": symbols})) == ["symbols"]
