"""Candles in a time zone: /candles?timezone= and /export/candles, against a reference."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
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
    iso,
    running_app,
)

# New York falls back on 2 November 2025 (01:00 local happens twice).
FIRST = datetime(2025, 11, 1, 0, 7, tzinfo=UTC)
WINDOW = {"start": "2025-10-31T00:00:00Z", "end": "2025-11-04T00:00:00Z"}
STEPS = {"1h": timedelta(hours=1), "4h": timedelta(hours=4), "1d": timedelta(days=1)}
MINUTE = timedelta(minutes=1)


def _store(
    write: Callable[[str, Sequence[Row]], list[TradeRecord]],
) -> dict[str, list[TradeRecord]]:
    """A trade every 37 minutes for three days, prices moving; MSFT at the same times."""
    moments = [FIRST + n * timedelta(minutes=37) for n in range(3 * 24 * 60 // 37)]
    return {
        "AAPL": write(
            "AAPL", [(t, f"{100 + n % 17 / 4:.2f}", 1 + n % 5) for n, t in enumerate(moments)]
        ),
        "MSFT": write("MSFT", [(t, f"{400 + n % 11 / 8:.3f}", 2) for n, t in enumerate(moments)]),
    }


@pytest.fixture
def trades(market: SyncDatabase) -> dict[str, list[TradeRecord]]:
    """The trades as history, stored as `mdp backfill` stores it."""
    return _store(market.seed_trades)


@pytest.fixture
def restored(market: SyncDatabase) -> dict[str, list[TradeRecord]]:
    """The same trades restored from a dump: not one minute materialised."""
    return _store(market.restore_trades)


def _label(moment: datetime, tz: ZoneInfo, interval: str) -> tuple[Any, ...]:
    local = moment.astimezone(tz)
    if interval == "1d":
        return (local.date(),)
    hours = 4 if interval == "4h" else 1
    return (local.date(), local.hour // hours)


def bucket_start(moment: datetime, tz: ZoneInfo, interval: str) -> datetime:
    """Independently of the service: the earliest whole minute with the same local period."""
    start = moment.replace(second=0, microsecond=0)
    while _label(start - MINUTE, tz, interval) == _label(moment, tz, interval):
        start -= MINUTE
    return start


def reference(records: list[TradeRecord], tz: ZoneInfo, interval: str) -> list[dict[str, Any]]:
    buckets: dict[datetime, list[TradeRecord]] = {}
    for trade in sorted(records, key=lambda t: (t.timestamp, t.id)):
        buckets.setdefault(bucket_start(trade.timestamp, tz, interval), []).append(trade)
    return [
        {
            "timestamp": iso(start),
            "open": rows[0].price,
            "high": max(r.price for r in rows),
            "low": min(r.price for r in rows),
            "close": rows[-1].price,
            "volume": sum(r.volume for r in rows),
            "vwap": (sum(r.price * r.volume for r in rows) / sum(r.volume for r in rows)).quantize(
                Decimal(1).scaleb(-VWAP_SCALE), ROUND_HALF_UP
            ),
            "trade_count": len(rows),
            "closed": True,
            "revision": 0,
        }
        for start, rows in sorted(buckets.items())
    ]


def exact(candle: dict[str, Any]) -> dict[str, Any]:
    prices = ("open", "high", "low", "close", "vwap")
    return {**candle, **{key: Decimal(str(candle[key])).normalize() for key in prices}}


def walk(client: TestClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    candles: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        body = decimal_json(client.get("/candles", params=query))
        assert body["timezone"] == params.get("timezone", "UTC")
        candles += body["candles"]
        if body["next_cursor"] is None:
            return [exact(c) for c in candles]
        query["cursor"] = body["next_cursor"]


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"])
@pytest.mark.parametrize("interval", ["1h", "4h", "1d"])
def test_zoned_candles_match_local_buckets_computed_from_trades(
    client: TestClient, trades: dict[str, list[TradeRecord]], zone: str, interval: str
):
    params = {"symbol": "AAPL", "interval": interval, "timezone": zone, "limit": 7, **WINDOW}
    expected = [exact(c) for c in reference(trades["AAPL"], ZoneInfo(zone), interval)]
    assert walk(client, params) == expected


def test_a_new_york_day_is_25_hours_long_when_clocks_fall_back(
    client: TestClient, trades: dict[str, list[TradeRecord]]
):
    params = {"symbol": "AAPL", "interval": "1d", "timezone": "America/New_York", **WINDOW}
    starts = [c["timestamp"] for c in client.get("/candles", params=params).json()["candles"]]
    assert starts[:3] == ["2025-10-31T04:00:00Z", "2025-11-01T04:00:00Z", "2025-11-02T04:00:00Z"]
    assert starts[3] == "2025-11-03T05:00:00Z"


def test_materialised_minutes_give_the_same_zoned_candles(
    client: TestClient, restored: dict[str, list[TradeRecord]], market: SyncDatabase
):
    # Restored, not backfilled: only the leader's step (`materialise`) stores their minutes.
    params = {"symbol": "AAPL", "interval": "4h", "timezone": "America/New_York", **WINDOW}
    from_trades = client.get("/candles", params=params).json()
    market.materialise()
    assert client.get("/candles", params=params).json() == from_trades


def test_zoned_cursors_are_bound_to_the_zone(
    client: TestClient, trades: dict[str, list[TradeRecord]]
):
    params = {"symbol": "AAPL", "interval": "1h", "timezone": "Europe/Paris", "limit": 2}
    first = client.get("/candles", params={**params, **WINDOW}).json()
    moved = {**params, **WINDOW, "timezone": "Europe/Berlin", "cursor": first["next_cursor"]}
    assert_problem(client.get("/candles", params=moved), 400, "invalid_cursor")
    utc = {**params, **WINDOW, "timezone": "UTC", "cursor": first["next_cursor"]}
    assert_problem(client.get("/candles", params=utc), 400, "invalid_cursor")


def test_utc_answers_name_the_zone(client: TestClient, trades: dict[str, list[TradeRecord]]):
    body = client.get("/candles", params={"symbol": "AAPL", "interval": "1h", **WINDOW}).json()
    assert body["timezone"] == "UTC"


@pytest.mark.parametrize("operation", ["/candles", "/export/candles"])
def test_an_unknown_zone_is_a_400_naming_timezone(client: TestClient, operation: str):
    params = {"symbol": "AAPL", "symbols": "AAPL", "timezone": "Mars/Olympus_Mons", **WINDOW}
    if operation == "/candles":
        del params["symbols"]
    else:
        del params["symbol"]
    assert error_names(client.get(operation, params=params)) == ["timezone"]


def _export_rows(data: bytes, fmt: str, reader: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        frame = pd.read_csv(io.BytesIO(data), dtype=str) if reader == "pandas" else None
        if frame is not None:
            return frame.to_dict("records")
        return pl.read_csv(data, infer_schema=False).to_dicts()
    if fmt == "ndjson":
        return pl.read_ndjson(data).to_dicts()
    table = (
        pq.read_table(io.BytesIO(data)) if fmt == "parquet" else pa_ipc.open_stream(data).read_all()
    )
    assert table.schema.field("open").type == pa.decimal128(38, 18)
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    return table.to_pylist()


def _normal(row: dict[str, Any]) -> tuple[Any, ...]:
    stamp = row["timestamp"]
    moment = stamp if isinstance(stamp, datetime) else pd.Timestamp(stamp).to_pydatetime()
    closed = row["closed"]
    return (
        row["symbol"],
        iso(moment.astimezone(UTC)),
        *(Decimal(str(row[k])).normalize() for k in ("open", "high", "low", "close", "vwap")),
        int(row["volume"]),
        int(row["trade_count"]),
        closed if isinstance(closed, bool) else closed == "true",
        int(row["revision"]),
    )


@pytest.mark.parametrize(
    ("fmt", "reader"),
    [
        ("csv", "pandas"),
        ("csv", "polars"),
        ("ndjson", "polars"),
        ("parquet", "pyarrow"),
        ("arrow", "pyarrow"),
    ],
)
def test_candle_exports_read_back_as_the_zoned_candles_of_every_symbol(
    client: TestClient, trades: dict[str, list[TradeRecord]], fmt: str, reader: str
):
    zone = {"interval": "4h", "timezone": "America/New_York", **WINDOW}
    expected = sorted(
        (
            _normal({**c, "symbol": symbol})
            for symbol in ("AAPL", "MSFT")
            for c in walk(client, {"symbol": symbol, **zone})
        ),
        key=lambda row: (row[1], row[0]),
    )
    response = client.get("/export/candles", params={"symbols": "MSFT,AAPL", "format": fmt, **zone})
    assert response.status_code == 200
    assert "America-New_York" in response.headers["content-disposition"]
    assert int(response.headers["x-row-count"]) == len(expected)
    assert [_normal(row) for row in _export_rows(response.content, fmt, reader)] == expected


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_candle_exports_in_float64_have_numeric_price_columns(
    client: TestClient, trades: dict[str, list[TradeRecord]], fmt: str
):
    params = {"symbols": "AAPL", "interval": "1h", "format": fmt, "price_type": "float64"}
    response = client.get("/export/candles", params={**params, **WINDOW})
    assert response.status_code == 200
    data = response.content
    table = (
        pq.read_table(io.BytesIO(data)) if fmt == "parquet" else pa_ipc.open_stream(data).read_all()
    )
    for column in ("open", "high", "low", "close", "volume", "vwap"):
        assert table.schema.field(column).type == pa.float64(), column
    assert table.num_rows == int(response.headers["x-row-count"]) >= 1


def test_a_candle_export_that_may_exceed_the_row_limit_is_refused_naming_it(
    api_database_url: URL, client: TestClient
):
    with running_app(app_settings(api_database_url, export_max_rows=100)) as small:
        params = {"symbols": "AAPL,MSFT", **WINDOW}
        # 2 symbols x 96 hours may hold 196 candles; 2 x 4 days only 12.
        body = assert_problem(
            small.get("/export/candles", params={**params, "interval": "1h"}),
            400,
            "export_too_large",
        )
        assert "EXPORT_MAX_ROWS" in body["detail"] and "100" in body["detail"]
        assert small.get("/export/candles", params={**params, "interval": "1d"}).status_code == 200
