"""GET /symbols: the catalogue, its pages and its errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from mdp.settings import DEFAULT_SYMBOLS, SymbolSpec
from tests.api.support import (
    SyncDatabase,
    app_settings,
    assert_problem,
    error_names,
    running_app,
)

EXPECTED = sorted(spec.symbol for spec in DEFAULT_SYMBOLS)


def test_symbols_lists_every_symbol_in_code_order(client: TestClient, market: SyncDatabase):
    response = client.get("/symbols")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert [row["symbol"] for row in body["symbols"]] == EXPECTED
    assert body["count"] == len(EXPECTED)
    assert body["next_cursor"] is None
    names = {spec.symbol: spec.name for spec in DEFAULT_SYMBOLS}
    for row in body["symbols"]:
        assert row["name"] == names[row["symbol"]]
        assert row["created_at"].endswith("Z")
        created = datetime.fromisoformat(row["created_at"])
        assert created <= datetime.now(UTC)


def test_symbols_are_registered_by_the_app_at_start_up(fresh_database_url: URL):
    configured = (SymbolSpec("BTC-USD", "Bitcoin", 1.0), SymbolSpec("BRK.B", "Berkshire", 1.0))
    with running_app(app_settings(fresh_database_url, symbols=configured)) as app:
        body = app.get("/symbols").json()

    assert [(row["symbol"], row["name"]) for row in body["symbols"]] == [
        ("BRK.B", "Berkshire"),
        ("BTC-USD", "Bitcoin"),
    ]


def test_symbols_cursor_walk_returns_every_symbol_exactly_once(
    client: TestClient, market: SyncDatabase
):
    seen: list[str] = []
    page_sizes: list[int] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        body = client.get("/symbols", params=params).json()
        assert body["count"] == len(body["symbols"]) <= 2
        seen.extend(row["symbol"] for row in body["symbols"])
        page_sizes.append(body["count"])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert seen == EXPECTED
    assert page_sizes == [2, 2, 1]


def test_symbols_page_is_cut_at_limit_with_a_cursor(client: TestClient, market: SyncDatabase):
    body = client.get("/symbols", params={"limit": 1}).json()

    assert [row["symbol"] for row in body["symbols"]] == EXPECTED[:1]
    assert body["count"] == 1
    assert isinstance(body["next_cursor"], str) and body["next_cursor"]


@pytest.mark.parametrize("cursor", ["abc", "eyJzIjoiQU1aTiJ9", "WzEsIngiLCJBTVpOIl0"])
def test_symbols_rejects_a_cursor_it_did_not_issue(
    client: TestClient, market: SyncDatabase, cursor: str
):
    response = client.get("/symbols", params={"cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


def test_symbols_rejects_a_cursor_issued_by_another_operation(
    client: TestClient, market: SyncDatabase
):
    market.seed_trades("AAPL", [(datetime(2026, 1, 2, tzinfo=UTC), "1", 1)] * 2)
    trades_cursor = client.get("/trades", params={"symbol": "AAPL", "limit": 1}).json()[
        "next_cursor"
    ]
    assert trades_cursor

    response = client.get("/symbols", params={"cursor": trades_cursor})

    assert_problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5"])
def test_symbols_rejects_limit_out_of_range_naming_limit(
    client: TestClient, market: SyncDatabase, limit: str
):
    response = client.get("/symbols", params={"limit": limit})

    assert error_names(response) == ["limit"]


def test_symbols_accepts_limit_at_both_bounds(client: TestClient, market: SyncDatabase):
    assert client.get("/symbols", params={"limit": 1}).status_code == 200
    assert client.get("/symbols", params={"limit": 1000}).json()["count"] == len(EXPECTED)


def test_symbols_rejects_a_cursor_outside_the_cursor_alphabet(client: TestClient):
    response = client.get("/symbols", params={"cursor": "not a cursor!"})

    assert error_names(response) == ["cursor"]


def test_symbols_rejects_unknown_query_parameters(client: TestClient):
    response = client.get("/symbols", params={"symbol": "AAPL"})

    assert error_names(response) == ["symbol"]
