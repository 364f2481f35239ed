"""GET /trades: order, half-open windows, keyset pages, timestamps, and every error."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.api.support import (
    SyncDatabase,
    TradeRecord,
    assert_problem,
    error_names,
    iso,
    past_midnight,
)

BASE = past_midnight()


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


# Inserted out of time order, with ties, so neither id nor insertion order alone sorts them.
AAPL_TRADES = [
    (at(30), "101.00", 1),
    (at(10), "100.10", 2),
    (at(10), "100.20", 3),
    (at(50), "102.00", 4),
    (at(0), "99.00", 5),
    (at(10), "100.30", 6),
    (at(40.5), "101.50", 7),
    (at(20), "100.50", 8),
    (at(60), "103.00", 9),
    (at(70), "103.50", 10),
    (at(60), "103.10", 11),
    (at(80.123456), "104.00", 12),
]


@pytest.fixture
def aapl(market: SyncDatabase) -> list[TradeRecord]:
    """AAPL trades sorted ascending by (timestamp, id); MSFT trades at the same times."""
    records = market.seed_trades("AAPL", AAPL_TRADES)
    market.seed_trades("MSFT", [(moment, "410.00", 1) for moment, _, _ in AAPL_TRADES[:4]])
    return sorted(records, key=lambda r: (r.timestamp, r.id))


def as_json(record: TradeRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "symbol": record.symbol,
        "price": float(record.price),
        "volume": record.volume,
        "timestamp": iso(record.timestamp),
        "venue_trade_id": None,
        "side": None,
    }


def walk(client: TestClient, params: dict[str, Any], limits: list[int]) -> list[int]:
    """Follow next_cursor to the end, cycling through page sizes; the ids in order."""
    ids: list[int] = []
    cursor = None
    for page in range(100):
        query = {**params, "limit": limits[page % len(limits)]}
        if cursor is not None:
            query["cursor"] = cursor
        response = client.get("/trades", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["trades"]) <= query["limit"]
        ids.extend(trade["id"] for trade in body["trades"])
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("the cursor walk did not end")


def test_trades_default_to_newest_first(client: TestClient, aapl: list[TradeRecord]):
    response = client.get("/trades", params={"symbol": "AAPL"})

    assert response.status_code == 200
    assert response.json() == {
        "symbol": "AAPL",
        "start": None,
        "end": None,
        "order": "desc",
        "count": len(aapl),
        "trades": [as_json(record) for record in reversed(aapl)],
        "next_cursor": None,
    }


def test_trades_ascending_are_oldest_first(client: TestClient, aapl: list[TradeRecord]):
    body = client.get("/trades", params={"symbol": "AAPL", "order": "asc"}).json()

    assert body["order"] == "asc"
    assert body["trades"] == [as_json(record) for record in aapl]


def test_trades_accept_a_lowercase_symbol(client: TestClient, aapl: list[TradeRecord]):
    body = client.get("/trades", params={"symbol": "aapl"}).json()

    assert body["symbol"] == "AAPL"
    assert {trade["symbol"] for trade in body["trades"]} == {"AAPL"}


def test_trades_window_includes_start_and_excludes_end(client: TestClient, aapl: list[TradeRecord]):
    params = {"symbol": "AAPL", "start": iso(at(10)), "end": iso(at(60)), "order": "asc"}

    body = client.get("/trades", params=params).json()

    expected = [r for r in aapl if at(10) <= r.timestamp < at(60)]
    assert [t["id"] for t in body["trades"]] == [r.id for r in expected]
    assert body["trades"][0]["timestamp"] == iso(at(10))
    assert all(t["timestamp"] != iso(at(60)) for t in body["trades"])
    assert body["start"] == iso(at(10))
    assert body["end"] == iso(at(60))


def test_trades_accept_open_ended_windows(client: TestClient, aapl: list[TradeRecord]):
    after = client.get("/trades", params={"symbol": "AAPL", "start": iso(at(60))}).json()
    before = client.get("/trades", params={"symbol": "AAPL", "end": iso(at(10))}).json()

    assert sorted(t["id"] for t in after["trades"]) == sorted(
        r.id for r in aapl if r.timestamp >= at(60)
    )
    assert after["end"] is None
    assert [t["id"] for t in before["trades"]] == [r.id for r in aapl if r.timestamp < at(10)]
    assert before["start"] is None


def test_trades_page_is_cut_at_limit(client: TestClient, aapl: list[TradeRecord]):
    body = client.get("/trades", params={"symbol": "AAPL", "limit": 3}).json()

    assert [t["id"] for t in body["trades"]] == [r.id for r in reversed(aapl)][:3]
    assert body["count"] == 3
    assert isinstance(body["next_cursor"], str)


def test_trades_last_page_exactly_full_has_no_cursor(client: TestClient, aapl: list[TradeRecord]):
    body = client.get("/trades", params={"symbol": "AAPL", "limit": len(aapl)}).json()

    assert body["count"] == len(aapl)
    assert body["next_cursor"] is None


@pytest.mark.parametrize("limits", [[1], [4], [5], [3, 1, 7]], ids=str)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_trades_cursor_walk_returns_every_trade_once_in_order(
    client: TestClient, aapl: list[TradeRecord], order: str, limits: list[int]
):
    ids = walk(client, {"symbol": "AAPL", "order": order}, limits)

    expected = [r.id for r in aapl]
    assert ids == (expected if order == "asc" else expected[::-1])


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_trades_cursor_walk_stays_inside_the_window(
    client: TestClient, aapl: list[TradeRecord], order: str
):
    params = {"symbol": "AAPL", "order": order, "start": iso(at(10)), "end": iso(at(70))}

    ids = walk(client, params, [2])

    expected = [r.id for r in aapl if at(10) <= r.timestamp < at(70)]
    assert ids == (expected if order == "asc" else expected[::-1])


def test_trades_cursor_walk_ignores_trades_appended_before_the_position(
    client: TestClient, market: SyncDatabase, aapl: list[TradeRecord]
):
    params = {"symbol": "AAPL", "order": "asc", "limit": 5}
    first = client.get("/trades", params=params).json()
    # A late trade that sorts before the position reached must not shift the next pages.
    market.seed_trades("AAPL", [(at(5), "99.50", 1)])

    ids = [t["id"] for t in first["trades"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        body = client.get("/trades", params={**params, "cursor": cursor}).json()
        ids.extend(t["id"] for t in body["trades"])
        cursor = body["next_cursor"]

    assert ids == [r.id for r in aapl]


@pytest.mark.parametrize(
    "changed",
    [
        {"order": "asc"},
        {"symbol": "MSFT"},
        {"start": iso(at(0))},
        {"end": iso(at(1000))},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_trades_reject_a_cursor_reused_with_different_filters(
    client: TestClient, aapl: list[TradeRecord], changed: dict[str, str]
):
    params = {"symbol": "AAPL", "order": "desc", "limit": 2}
    cursor = client.get("/trades", params=params).json()["next_cursor"]

    response = client.get("/trades", params={**params, **changed, "cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


def test_trades_accept_a_cursor_with_a_different_limit(client: TestClient, aapl: list[TradeRecord]):
    params = {"symbol": "AAPL", "limit": 2}
    cursor = client.get("/trades", params=params).json()["next_cursor"]

    body = client.get("/trades", params={**params, "limit": 3, "cursor": cursor}).json()

    assert [t["id"] for t in body["trades"]] == [r.id for r in reversed(aapl)][2:5]


def test_trades_reject_a_cursor_from_another_operation(client: TestClient, market: SyncDatabase):
    cursor = client.get("/symbols", params={"limit": 1}).json()["next_cursor"]

    response = client.get("/trades", params={"symbol": "AAPL", "cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize("cursor", ["abc", "A" * 512, "WzFd", "W10"])
def test_trades_reject_a_malformed_cursor(client: TestClient, market: SyncDatabase, cursor: str):
    response = client.get("/trades", params={"symbol": "AAPL", "cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-01-02T04:00:00Z", "2026-01-02T03:00:00Z"),
        ("2026-01-02T03:00:00Z", "2026-01-02T03:00:00Z"),
        # The same instant written with two offsets is still an empty window.
        ("2026-01-02T04:00:00+01:00", "2026-01-02T03:00:00Z"),
    ],
)
def test_trades_reject_start_not_before_end(
    client: TestClient, market: SyncDatabase, start: str, end: str
):
    response = client.get("/trades", params={"symbol": "AAPL", "start": start, "end": end})

    assert_problem(response, 400, "invalid_time_range")


@pytest.mark.parametrize(
    "value",
    ["2026-01-02T03:04:05", "2026-01-02", "yesterday", "2026-01-02T03:04:05+0100", "1767323045"],
)
@pytest.mark.parametrize("name", ["start", "end"])
def test_trades_reject_a_timestamp_without_an_offset_naming_it(
    client: TestClient, name: str, value: str
):
    response = client.get("/trades", params={"symbol": "AAPL", name: value})

    assert error_names(response) == [name]


def test_trades_accept_lowercase_t_and_z(client: TestClient, aapl: list[TradeRecord]):
    upper = {"symbol": "AAPL", "start": iso(at(10)), "end": iso(at(60))}
    lower = {key: value.lower() if key != "symbol" else value for key, value in upper.items()}

    response = client.get("/trades", params=lower)

    assert response.status_code == 200
    assert response.json() == client.get("/trades", params=upper).json()
    assert response.json()["start"] == iso(at(10))


@pytest.mark.parametrize(
    "offset", [timedelta(hours=1), timedelta(hours=-5, minutes=-30), timedelta(hours=14)]
)
def test_trades_convert_offsets_to_utc(
    client: TestClient, aapl: list[TradeRecord], offset: timedelta
):
    zone = timezone(offset)
    start, end = at(10).astimezone(zone), at(60).astimezone(zone)
    assert not start.isoformat().endswith("+00:00")

    body = client.get(
        "/trades", params={"symbol": "AAPL", "start": start.isoformat(), "end": end.isoformat()}
    ).json()

    assert body["start"] == iso(at(10))
    assert body["end"] == iso(at(60))
    assert len(body["trades"]) == len([r for r in aapl if at(10) <= r.timestamp < at(60)])


def test_trades_timestamps_are_utc_with_z(client: TestClient, aapl: list[TradeRecord]):
    body = client.get(
        "/trades",
        params={
            "symbol": "AAPL",
            "start": at(0).astimezone(timezone(timedelta(hours=2))).isoformat(),
        },
    ).json()

    stamps = [body["start"], *(trade["timestamp"] for trade in body["trades"])]
    assert stamps and all(stamp.endswith("Z") for stamp in stamps)
    assert iso(at(80.123456)) in stamps


def test_trades_of_an_unknown_symbol_are_symbol_not_found(client: TestClient, market: SyncDatabase):
    response = client.get("/trades", params={"symbol": "NOPE"})

    assert_problem(response, 404, "symbol_not_found")


def test_trades_of_a_known_symbol_without_trades_are_an_empty_page(
    client: TestClient, market: SyncDatabase
):
    response = client.get("/trades", params={"symbol": "TSLA"})

    assert response.status_code == 200
    assert response.json()["trades"] == []
    assert response.json()["count"] == 0
    assert response.json()["next_cursor"] is None


def test_trades_list_every_offending_parameter(client: TestClient):
    response = client.get(
        "/trades?symbol=AAPL&limit=0&order=sideways&start=yesterday&bogus=1",
    )

    body = assert_problem(response, 400, "validation_failed")
    assert sorted(error_names(response)) == ["bogus", "limit", "order", "start"]
    assert all(entry["in"] == "query" for entry in body["errors"])


@pytest.mark.parametrize(
    "end", ["9999-12-31T23:59:59-01:00", "1899-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00"]
)
def test_trades_refuse_a_valid_timestamp_outside_the_supported_range(client: TestClient, end: str):
    # Valid RFC 3339, so the schema admits it; the service serves no such instant.
    response = client.get("/trades", params={"symbol": "AAPL", "end": end})

    body = assert_problem(response, 400, "invalid_time_range")
    assert end in body["detail"]


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_trades_reject_limit_out_of_range(client: TestClient, limit: str):
    response = client.get("/trades", params={"symbol": "AAPL", "limit": limit})

    assert error_names(response) == ["limit"]


def test_trades_require_symbol(client: TestClient):
    assert error_names(client.get("/trades")) == ["symbol"]
