"""GET /price/latest: the newest trade of a symbol, exact prices, and its errors."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from starlette.testclient import TestClient

from tests.api.support import (
    SyncDatabase,
    assert_problem,
    error_names,
    iso,
    past_midnight,
)


def test_latest_price_is_the_newest_trade(client: TestClient, market: SyncDatabase):
    base = past_midnight()
    market.seed_trades(
        "AAPL",
        [
            (base + timedelta(seconds=1), "187.10", 5),
            (base + timedelta(seconds=3, microseconds=123456), "187.42", 250),
            (base + timedelta(seconds=2), "187.90", 7),
        ],
    )

    response = client.get("/price/latest", params={"symbol": "AAPL"})

    assert response.status_code == 200
    assert response.json() == {
        "symbol": "AAPL",
        "price": 187.42,
        "volume": 250,
        "timestamp": iso(base + timedelta(seconds=3, microseconds=123456)),
    }
    assert response.json()["timestamp"].endswith(".123456Z")


def test_latest_price_breaks_timestamp_ties_by_highest_id(client: TestClient, market: SyncDatabase):
    moment = past_midnight() + timedelta(minutes=5)
    market.seed_trades(
        "MSFT", [(moment, "410.01", 1), (moment, "410.02", 2), (moment, "409.99", 3)]
    )

    body = client.get("/price/latest", params={"symbol": "MSFT"}).json()

    assert body["price"] == 409.99
    assert body["volume"] == 3


def test_latest_price_accepts_a_lowercase_symbol_and_returns_it_upper_case(
    client: TestClient, market: SyncDatabase
):
    market.seed_trades("GOOGL", [(past_midnight(), "140.00", 1)])

    response = client.get("/price/latest", params={"symbol": "gOoGl"})

    assert response.status_code == 200
    assert response.json()["symbol"] == "GOOGL"


@pytest.mark.parametrize("stored", ["100.10", "187.42", "0.01", "0.3", "12345.678901", "240"])
def test_latest_price_comes_back_exactly_as_stored(
    client: TestClient, market: SyncDatabase, stored: str
):
    market.seed_trades("TSLA", [(past_midnight(), stored, 9)])

    response = client.get("/price/latest", params={"symbol": "TSLA"})

    assert response.status_code == 200
    # The JSON number itself is the stored decimal, never an artefact like 100.10000000000001.
    raw = re.search(r'"price":\s*([^,}]+)', response.text)
    assert raw is not None
    assert Decimal(raw.group(1)) == Decimal(stored)


def test_latest_price_of_an_unknown_symbol_is_symbol_not_found(
    client: TestClient, market: SyncDatabase
):
    response = client.get("/price/latest", params={"symbol": "ZZZZ"})

    body = assert_problem(response, 404, "symbol_not_found")
    assert "ZZZZ" in body["detail"]


def test_latest_price_of_a_known_symbol_without_trades_is_no_trades(
    client: TestClient, market: SyncDatabase
):
    response = client.get("/price/latest", params={"symbol": "amzn"})

    body = assert_problem(response, 404, "no_trades")
    assert "AMZN" in body["detail"]


def test_latest_price_requires_symbol(client: TestClient):
    response = client.get("/price/latest")

    assert error_names(response) == ["symbol"]


@pytest.mark.parametrize("symbol", ["AA PL", "$$$", "A" * 17, "", "AAPL;DROP"])
def test_latest_price_rejects_a_malformed_symbol(client: TestClient, symbol: str):
    response = client.get("/price/latest", params={"symbol": symbol})

    assert error_names(response) == ["symbol"]


def test_latest_price_accepts_every_character_of_the_symbol_pattern(
    client: TestClient, market: SyncDatabase
):
    response = client.get("/price/latest", params={"symbol": "a.B-c_9"})

    body = assert_problem(response, 404, "symbol_not_found")
    assert "A.B-C_9" in body["detail"]


def test_latest_price_rejects_unknown_query_parameters(client: TestClient):
    response = client.get("/price/latest", params={"symbol": "AAPL", "at": "now"})

    assert error_names(response) == ["at"]
