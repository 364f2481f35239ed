"""GET /candles: OHLCV aggregation, bucket alignment, open buckets, windows and pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from persistence.models import VWAP_SCALE
from tests.api.support import (
    Row,
    SyncDatabase,
    TradeRecord,
    app_settings,
    assert_problem,
    decimal_json,
    error_names,
    export_rows,
    iso,
    past_midnight,
    running_app,
)
from tests.support import metric_value

T = TypeVar("T")
BASE = past_midnight()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INTERVALS = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}


def at(**delta: float) -> datetime:
    return BASE + timedelta(**delta)


# Ties on the first and on the last timestamp of the first minute: ids decide open and close.
TRADES = [
    (at(seconds=5), "100.10", 10),
    (at(seconds=5), "100.20", 20),
    (at(seconds=30), "101.50", 5),
    (at(seconds=45), "99.90", 2),
    (at(seconds=45), "100.70", 4),
    (at(minutes=2, seconds=59.999999), "102.00", 3),
    (at(minutes=65), "103.33", 7),
    (at(hours=23, minutes=59, seconds=59), "104.00", 1),
    (at(days=1), "105.00", 2),
]
WINDOW = {"start": iso(BASE), "end": iso(at(days=2))}


def floor(moment: datetime, step: timedelta) -> datetime:
    return moment - (moment - EPOCH) % step


def reference(trades: Sequence[TradeRecord], step: timedelta) -> list[dict[str, Any]]:
    """The contract's candle semantics, computed independently of the service."""
    buckets: dict[datetime, list[TradeRecord]] = {}
    for trade in sorted(trades, key=lambda t: (t.timestamp, t.id)):
        buckets.setdefault(floor(trade.timestamp, step), []).append(trade)
    candles = []
    for start, rows in sorted(buckets.items()):
        volume = sum(row.volume for row in rows)
        turnover = sum(row.price * row.volume for row in rows)
        candles.append(
            {
                "timestamp": iso(start),
                "open": rows[0].price,
                "high": max(row.price for row in rows),
                "low": min(row.price for row in rows),
                "close": rows[-1].price,
                "volume": volume,
                "vwap": (turnover / volume).quantize(Decimal(1).scaleb(-VWAP_SCALE), ROUND_HALF_UP),
                "trade_count": len(rows),
                "closed": True,
                "revision": 0,
            }
        )
    return candles


def exact(candles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candles parsed with Decimal prices, comparable with `reference`."""
    return [
        {
            **candle,
            **{key: Decimal(str(candle[key])) for key in ("open", "high", "low", "close", "vwap")},
        }
        for candle in candles
    ]


def _store(write: Callable[[str, Sequence[Row]], list[TradeRecord]]) -> list[TradeRecord]:
    records = write("AAPL", TRADES)
    write("MSFT", [(moment, "410.00", 100) for moment, _, _ in TRADES])
    return records


@pytest.fixture
def aapl(market: SyncDatabase) -> list[TradeRecord]:
    """AAPL and MSFT history, stored as `mdp backfill` stores it."""
    return _store(market.seed_trades)


@pytest.fixture
def restored_aapl(market: SyncDatabase) -> list[TradeRecord]:
    """The same trades restored from a dump: not one candle materialised."""
    return _store(market.restore_trades)


def walk(client: TestClient, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every candle reached by following next_cursor, and the number of pages."""
    candles: list[dict[str, Any]] = []
    cursor = None
    for pages in range(1, 1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/candles", params=query)
        assert response.status_code == 200, response.text
        body = decimal_json(response)
        assert body["count"] == len(body["candles"]) <= int(params["limit"])
        candles.extend(body["candles"])
        cursor = body["next_cursor"]
        if cursor is None:
            return candles, pages
    raise AssertionError("the cursor walk did not end")


def test_candles_aggregate_ohlcv_vwap_and_trade_count(client: TestClient, aapl: list[TradeRecord]):
    response = client.get(
        "/candles",
        params={"symbol": "AAPL", "interval": "1m", "start": iso(BASE), "end": iso(at(hours=1))},
    )

    assert response.status_code == 200
    body = decimal_json(response)
    assert body["symbol"] == "AAPL"
    assert body["interval"] == "1m"
    assert body["start"] == iso(BASE)
    assert body["end"] == iso(at(hours=1))
    assert body["next_cursor"] is None
    assert body["count"] == 2
    assert body["candles"] == [
        {
            "timestamp": iso(BASE),
            "open": Decimal("100.10"),
            "high": Decimal("101.50"),
            "low": Decimal("99.90"),
            "close": Decimal("100.70"),
            "volume": 41,
            # (1001 + 2004 + 507.5 + 199.8 + 402.8) / 41 = 100.36829268292682…
            "vwap": Decimal("100.368292682927"),
            "trade_count": 5,
            "closed": True,
            "revision": 0,
        },
        {
            "timestamp": iso(at(minutes=2)),
            "open": Decimal("102.00"),
            "high": Decimal("102.00"),
            "low": Decimal("102.00"),
            "close": Decimal("102.00"),
            "volume": 3,
            "vwap": Decimal("102.00"),
            "trade_count": 1,
            "closed": True,
            "revision": 0,
        },
    ]


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_candles_accept_every_interval_with_epoch_aligned_buckets(
    client: TestClient, aapl: list[TradeRecord], interval: str
):
    step = INTERVALS[interval]

    # Two days of 1m buckets (2880) fit in one page of 5000.
    response = client.get(
        "/candles", params={"symbol": "AAPL", "interval": interval, "limit": 5000, **WINDOW}
    )

    assert response.status_code == 200
    body = decimal_json(response)
    assert body["interval"] == interval
    assert body["next_cursor"] is None
    assert exact(body["candles"]) == reference(aapl, step)
    for candle in body["candles"]:
        start = datetime.fromisoformat(candle["timestamp"])
        assert (start - EPOCH) % step == timedelta(0)


def test_candles_daily_buckets_start_at_midnight_utc(client: TestClient, aapl: list[TradeRecord]):
    body = client.get("/candles", params={"symbol": "AAPL", "interval": "1d", **WINDOW}).json()

    assert [c["timestamp"] for c in body["candles"]] == [iso(BASE), iso(at(days=1))]
    assert [c["trade_count"] for c in body["candles"]] == [8, 1]


def test_candles_prices_come_back_exactly_as_stored(client: TestClient, aapl: list[TradeRecord]):
    response = client.get("/candles", params={"symbol": "AAPL", "interval": "1h", **WINDOW})

    second = response.json()["candles"][1]
    assert (second["open"], second["vwap"]) == (103.33, 103.33)
    assert "103.33000000" not in response.text


def test_candles_return_buckets_whose_start_lies_in_the_window(
    client: TestClient, aapl: list[TradeRecord]
):
    # The first minute starts before `start`; the 01:05 minute starts exactly at `end`.
    params = {
        "symbol": "AAPL",
        "interval": "1m",
        "start": iso(at(seconds=1)),
        "end": iso(at(minutes=65)),
    }

    body = client.get("/candles", params=params).json()

    assert [c["timestamp"] for c in body["candles"]] == [iso(at(minutes=2))]
    assert body["start"] == iso(at(seconds=1))


def test_candles_omit_buckets_without_trades(client: TestClient, aapl: list[TradeRecord]):
    params = {"symbol": "AAPL", "interval": "1m", "start": iso(BASE), "end": iso(at(minutes=5))}

    stamps = [c["timestamp"] for c in client.get("/candles", params=params).json()["candles"]]

    assert stamps == [iso(BASE), iso(at(minutes=2))]


def in_one_bucket(step: timedelta, request: Callable[[datetime], T]) -> tuple[datetime, T]:
    """Run `request(now)` until it starts and ends inside the same bucket: "the bucket open
    at request time" is then unambiguous, even on a slow machine at a bucket boundary."""
    for _ in range(3):
        now = datetime.now(UTC)
        result = request(now)
        if floor(datetime.now(UTC), step) == floor(now, step):
            return now, result
    raise AssertionError("three requests in a row straddled a bucket boundary")


@pytest.mark.parametrize("interval", ["1m", "1d"])
def test_candles_mark_the_bucket_containing_now_as_open(
    client: TestClient, market: SyncDatabase, interval: str
):
    step = INTERVALS[interval]

    def request(now: datetime) -> dict[str, Any]:
        market.reset()
        earlier = floor(now, step) - 2 * step
        market.seed_trades("AAPL", [(earlier, "100.00", 1), (now, "101.00", 2)])
        params = {"symbol": "AAPL", "interval": interval, "start": iso(earlier)}
        body: dict[str, Any] = client.get("/candles", params=params).json()
        return body

    now, body = in_one_bucket(step, request)

    candles = {c["timestamp"]: c for c in body["candles"]}
    open_bucket, earlier = floor(now, step), floor(now, step) - 2 * step
    assert set(candles) == {iso(earlier), iso(open_bucket)}
    assert candles[iso(open_bucket)]["closed"] is False
    assert candles[iso(open_bucket)]["close"] == 101.0
    assert candles[iso(earlier)]["closed"] is True


def test_candles_default_window_ends_with_the_open_bucket(client: TestClient, market: SyncDatabase):
    step = INTERVALS["1h"]

    def request(now: datetime) -> dict[str, Any]:
        market.reset()
        market.seed_trades("AAPL", [(now - 3 * step, "100.00", 1), (now, "101.00", 2)])
        params = {"symbol": "AAPL", "interval": "1h", "limit": 24}
        body: dict[str, Any] = client.get("/candles", params=params).json()
        return body

    now, body = in_one_bucket(step, request)

    end = floor(now, step) + step
    assert body["end"] == iso(end)
    assert body["start"] == iso(end - 24 * step)
    stamps = [c["timestamp"] for c in body["candles"]]
    assert stamps == [iso(floor(now, step) - 3 * step), iso(floor(now, step))]
    assert [c["closed"] for c in body["candles"]] == [True, False]


def test_candles_default_start_is_limit_buckets_before_end(
    client: TestClient, aapl: list[TradeRecord]
):
    params = {"symbol": "AAPL", "interval": "1m", "end": iso(at(minutes=30)), "limit": 10}

    body = client.get("/candles", params=params).json()

    assert body["start"] == iso(at(minutes=20))
    assert body["end"] == iso(at(minutes=30))
    assert body["candles"] == []


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_candles_cursor_walk_returns_every_bucket_once_in_order(
    client: TestClient, aapl: list[TradeRecord], limit: int
):
    candles, pages = walk(client, {"symbol": "AAPL", "interval": "1m", "limit": limit, **WINDOW})

    assert exact(candles) == reference(aapl, INTERVALS["1m"])
    assert pages > 1


def test_candles_cursor_walk_covers_a_window_far_larger_than_limit(
    client: TestClient, aapl: list[TradeRecord]
):
    # 2 days of 1m buckets is 2880 buckets; pages of 100 must still reach every candle.
    candles, _ = walk(client, {"symbol": "AAPL", "interval": "1m", "limit": 100, **WINDOW})

    assert [c["timestamp"] for c in candles] == [
        c["timestamp"] for c in reference(aapl, INTERVALS["1m"])
    ]


@pytest.mark.parametrize(
    "changed",
    [{"interval": "5m"}, {"symbol": "MSFT"}, {"end": iso(at(days=3))}, {"start": iso(at(days=-1))}],
    ids=lambda changed: next(iter(changed)),
)
def test_candles_reject_a_cursor_reused_with_different_filters(
    client: TestClient, aapl: list[TradeRecord], changed: dict[str, str]
):
    params = {"symbol": "AAPL", "interval": "1m", "limit": 1, **WINDOW}
    cursor = client.get("/candles", params=params).json()["next_cursor"]
    assert cursor

    response = client.get("/candles", params={**params, **changed, "cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


def test_candles_reject_a_cursor_from_another_operation(
    client: TestClient, aapl: list[TradeRecord]
):
    cursor = client.get("/trades", params={"symbol": "AAPL", "limit": 1}).json()["next_cursor"]

    response = client.get("/candles", params={"symbol": "AAPL", "cursor": cursor})

    assert_problem(response, 400, "invalid_cursor")


@pytest.mark.parametrize(
    ("start", "end"),
    [(iso(at(hours=2)), iso(at(hours=1))), (iso(at(hours=1)), iso(at(hours=1)))],
)
def test_candles_reject_start_not_before_end(
    client: TestClient, market: SyncDatabase, start: str, end: str
):
    response = client.get("/candles", params={"symbol": "AAPL", "start": start, "end": end})

    assert_problem(response, 400, "invalid_time_range")


def test_candles_of_an_unknown_symbol_are_symbol_not_found(
    client: TestClient, market: SyncDatabase
):
    response = client.get("/candles", params={"symbol": "NOPE", **WINDOW})

    assert_problem(response, 404, "symbol_not_found")


@pytest.mark.parametrize("window", [{}, WINDOW], ids=["default-window", "explicit-window"])
def test_candles_of_a_known_symbol_without_trades_are_an_empty_list(
    client: TestClient, market: SyncDatabase, window: dict[str, str]
):
    response = client.get("/candles", params={"symbol": "tsla", **window})

    assert response.status_code == 200
    body = response.json()
    assert (body["symbol"], body["count"], body["candles"]) == ("TSLA", 0, [])
    assert body["next_cursor"] is None


def test_candles_default_to_one_minute(client: TestClient, aapl: list[TradeRecord]):
    body = client.get("/candles", params={"symbol": "AAPL", "limit": 5000, **WINDOW}).json()

    assert body["interval"] == "1m"
    assert len(body["candles"]) == len(reference(aapl, INTERVALS["1m"]))


@pytest.mark.parametrize("interval", ["2m", "1M", "60s", "1w", ""])
def test_candles_reject_an_unknown_interval(client: TestClient, interval: str):
    response = client.get("/candles", params={"symbol": "AAPL", "interval": interval})

    assert error_names(response) == ["interval"]


@pytest.mark.parametrize("limit", ["0", "5001"])
def test_candles_reject_limit_out_of_range(client: TestClient, limit: str):
    response = client.get("/candles", params={"symbol": "AAPL", "limit": limit})

    assert error_names(response) == ["limit"]


def test_candles_accept_the_largest_limit(client: TestClient, aapl: list[TradeRecord]):
    response = client.get("/candles", params={"symbol": "AAPL", "limit": 5000, **WINDOW})

    assert response.status_code == 200


def test_candles_list_every_offending_parameter(client: TestClient):
    response = client.get(
        "/candles", params={"symbol": "A B", "interval": "2m", "end": "soon", "limit": 0}
    )

    assert sorted(error_names(response)) == ["end", "interval", "limit", "symbol"]


def test_candles_closed_candles_do_not_change_between_requests(
    client: TestClient, aapl: list[TradeRecord]
):
    params = {"symbol": "AAPL", "interval": "5m", **WINDOW}

    first = client.get("/candles", params=params).json()
    second = client.get("/candles", params=params).json()

    assert first == second
    assert all(candle["closed"] for candle in first["candles"])


def _pages_from_trades(client: TestClient, interval: str) -> float:
    metrics = client.get("/metrics", headers={"Accept": "text/plain"}).text
    return metric_value(metrics, "mdp_candle_pages_from_trades_total", {"interval": interval})


def test_candles_not_materialised_yet_are_answered_from_trades_and_counted(
    client: TestClient, restored_aapl: list[TradeRecord], market: SyncDatabase
):
    # Restored, not backfilled: only the leader's step (`materialise`) stores their candles.
    params = {"symbol": "AAPL", "interval": "1h", **WINDOW}
    before = _pages_from_trades(client, "1h")

    unmaterialised = client.get("/candles", params=params)

    expected = reference(restored_aapl, INTERVALS["1h"])
    assert exact(decimal_json(unmaterialised)["candles"]) == expected
    assert _pages_from_trades(client, "1h") == before + 1
    market.materialise()

    materialised = client.get("/candles", params=params)

    assert materialised.json() == unmaterialised.json()
    assert _pages_from_trades(client, "1h") == before + 1


def test_candles_late_print_raises_the_revision_once_and_changes_the_etag(
    fresh_database_url: URL,
):
    # An app of its own: a venue batch is announced, and the shared app's listener would go
    # on answering its prices from memory after `reset`.
    with running_app(app_settings(fresh_database_url)) as client:
        market = SyncDatabase(fresh_database_url)
        try:
            _late_print_revises_once(client, market)
        finally:
            market.close()


def _late_print_revises_once(client: TestClient, market: SyncDatabase) -> None:
    # A venue symbol whose feed is complete through 90 minutes past BASE: its first 1m and
    # 1h buckets are final, materialised as revision 0, and not settled (a late print may
    # still revise them), so not cached as immutable.
    through = at(minutes=90)
    stamped = datetime.now(UTC)
    market.insert_venue_batch(
        "AAPL", [(at(seconds=1), "1", "100")], complete_through=through, stamped=stamped
    )
    market.materialise()
    window = {"start": iso(BASE), "end": iso(at(hours=1))}
    queries = {
        "1m": {"symbol": "AAPL", "interval": "1m", **window},
        "1h": {"symbol": "AAPL", "interval": "1h", **window},
        # Rolled up from its minutes: the sum of their revisions.
        "1h London": {"symbol": "AAPL", "interval": "1h", "timezone": "Europe/London", **window},
    }

    def answers() -> dict[str, tuple[str, dict[str, Any]]]:
        found = {}
        for name, params in queries.items():
            response = client.get("/candles", params=params)
            assert response.status_code == 200, response.text
            (candle,) = response.json()["candles"]
            assert candle["closed"] is True
            assert response.headers["cache-control"] == "no-cache"
            found[name] = (response.headers["etag"], candle)
        return found

    def exported() -> dict[str, list[int]]:
        """The revisions of the 1h candle and of the filled 1m buckets, in every format."""
        found = {}
        for fmt in ("csv", "ndjson", "parquet", "arrow"):
            for name, params in {
                "1h": {"interval": "1h"},
                "1m filled": {"interval": "1m", "fill": "null"},
            }.items():
                response = client.get(
                    "/export/candles", params={"symbols": "AAPL", "format": fmt, **params, **window}
                )
                assert response.status_code == 200, response.text
                rows = export_rows(response.content, fmt)
                found[f"{name} {fmt}"] = [int(row["revision"]) for row in rows]
        return found

    first = answers()
    assert {name: c["revision"] for name, (_, c) in first.items()} == dict.fromkeys(queries, 0)
    assert set(map(tuple, exported().values())) == {(0,), (0,) * 60}

    late = market.insert_venue_batch(
        "AAPL",
        [(at(seconds=2), "2", "90")],
        complete_through=through,
        stamped=stamped + timedelta(seconds=1),
    )
    revised = answers()

    assert late == 1
    # Exports carry the revision too; the filled buckets without trades were never revised.
    assert set(map(tuple, exported().values())) == {(1,), (1,) + (0,) * 59}
    for name, (etag, candle) in revised.items():
        assert candle["revision"] == 1, name
        assert (candle["low"], candle["trade_count"]) == (90, 2), name
        assert etag != first[name][0], name
        current = client.get("/candles", params=queries[name], headers={"If-None-Match": etag})
        assert current.status_code == 304, name
        stale = client.get(
            "/candles", params=queries[name], headers={"If-None-Match": first[name][0]}
        )
        assert stale.status_code == 200, name

    # The same venue trade re-delivered: stored once, nothing revised, the same answer.
    market.insert_venue_batch(
        "AAPL",
        [(at(seconds=2), "2", "90")],
        complete_through=through,
        stamped=stamped + timedelta(seconds=2),
    )

    assert answers() == revised


def test_candles_late_print_into_a_closed_bucket_not_stored_yet_raises_the_revision(
    fresh_database_url: URL,
):
    # An app of its own, as above. Nothing materialises here (no ingestion leader): the
    # closed buckets are answered from trades, as between two steps of the leader.
    with running_app(app_settings(fresh_database_url)) as client:
        market = SyncDatabase(fresh_database_url)
        try:
            _late_print_before_materialising_revises(client, market)
        finally:
            market.close()


def _late_print_before_materialising_revises(client: TestClient, market: SyncDatabase) -> None:
    through = at(minutes=90)
    stamped = datetime.now(UTC)
    market.insert_venue_batch(
        "AAPL", [(at(seconds=1), "1", "100")], complete_through=through, stamped=stamped
    )
    window = {"start": iso(BASE), "end": iso(at(hours=1))}

    def candles() -> dict[str, tuple[bool, int, int, int]]:
        found = {}
        for interval in ("1m", "1h"):
            params = {"symbol": "AAPL", "interval": interval, **window}
            (candle,) = client.get("/candles", params=params).json()["candles"]
            found[interval] = (
                candle["closed"],
                candle["low"],
                candle["trade_count"],
                candle["revision"],
            )
        return found

    # Closed, as a client sees them: a print that changes them is a revision.
    assert candles() == {"1m": (True, 100, 1, 0), "1h": (True, 100, 1, 0)}
    late = market.insert_venue_batch(
        "AAPL",
        [(at(seconds=2), "2", "90")],
        complete_through=through,
        stamped=stamped + timedelta(seconds=1),
    )

    assert late == 1
    assert candles() == {"1m": (True, 90, 2, 1), "1h": (True, 90, 2, 1)}
    # The leader's step later changes nothing of it.
    market.materialise()
    assert candles() == {"1m": (True, 90, 2, 1), "1h": (True, 90, 2, 1)}
