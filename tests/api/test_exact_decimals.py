"""Prices and volumes leave exactly as stored: 18 significant digits through every JSON answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from handlers.sse import encode_id
from persistence.finality import bucket_floor
from tests.api.support import SyncDatabase, app_settings, decimal_json, iso, running_app

# Beyond a binary float's ~15 significant digits: a float8 on the way would change them.
PRICE = Decimal("123456.789012345678")
VOLUME = Decimal("123456789.012345678")
MINUTE = timedelta(minutes=1)
# In a minute that is over, so its candle is the same from every read.
STAMP = bucket_floor(datetime.now(UTC), MINUTE) - MINUTE + timedelta(seconds=7)


@pytest.fixture(scope="module")
def exact(module_database: URL) -> Iterator[TestClient]:
    """An app whose only trade is a live batch of one AAPL trade with 18-digit decimals."""
    database = SyncDatabase(module_database)
    try:
        with running_app(app_settings(module_database)) as client:
            database.insert_live_batch("AAPL", [(STAMP, str(PRICE), VOLUME)])
            yield client
    finally:
        database.close()


def _event(client: TestClient, path: str, params: dict[str, Any], last_id: str) -> Any:
    """The data of the stream's one event, its numbers parsed as exact Decimals."""
    with client.stream("GET", path, params=params, headers={"Last-Event-ID": last_id}) as r:
        assert r.status_code == 200
        (data,) = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    return json.loads(data, parse_float=Decimal)


def test_trades_carry_the_stored_decimals_exactly(exact: TestClient) -> None:
    (trade,) = decimal_json(exact.get("/trades", params={"symbol": "AAPL"}))["trades"]

    assert (trade["price"], trade["volume"]) == (PRICE, VOLUME)


def test_latest_price_carries_the_stored_decimals_exactly(exact: TestClient) -> None:
    latest = decimal_json(exact.get("/price/latest", params={"symbol": "AAPL"}))

    assert (latest["price"], latest["volume"]) == (PRICE, VOLUME)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Tokyo"])
def test_candles_carry_the_stored_decimals_exactly(exact: TestClient, timezone: str) -> None:
    params = {"symbol": "AAPL", "start": iso(STAMP - MINUTE), "timezone": timezone}
    (candle,) = decimal_json(exact.get("/candles", params=params))["candles"]

    prices = [candle[name] for name in ("open", "high", "low", "close", "vwap")]
    assert (prices, candle["volume"]) == ([PRICE] * 5, VOLUME)


def test_ticker_carries_the_stored_decimals_exactly(exact: TestClient) -> None:
    (ticker,) = decimal_json(exact.get("/ticker", params={"symbols": "AAPL"}))["tickers"]

    prices = [ticker[name] for name in ("last_price", "open", "high", "low", "vwap")]
    assert (prices, ticker["volume"]) == ([PRICE] * 5, VOLUME)


def test_trade_stream_carries_the_stored_decimals_exactly(exact: TestClient) -> None:
    # Before the first trade of the batch stamped STAMP (the oldest batch there is).
    before = encode_id(STAMP, 0)
    trade = _event(exact, "/stream/trades", {"symbols": "AAPL", "limit": 1, "duration": 5}, before)

    assert (trade["price"], trade["volume"]) == (PRICE, VOLUME)


def test_candle_stream_carries_the_stored_decimals_exactly(exact: TestClient) -> None:
    bucket = encode_id(bucket_floor(STAMP, MINUTE), 0)
    candle = _event(exact, "/stream/candles", {"symbol": "AAPL", "limit": 1, "duration": 5}, bucket)

    prices = [candle[name] for name in ("open", "high", "low", "close", "vwap")]
    assert (prices, candle["volume"]) == ([PRICE] * 5, VOLUME)
