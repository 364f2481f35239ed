"""GET /export/trades: every format read back by pyarrow, pandas and polars, against /trades."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
import zstandard
from starlette.testclient import TestClient

from mdp.settings import DEFAULT_SYMBOLS
from tests.api.support import (
    SyncDatabase,
    app_settings,
    assert_problem,
    error_names,
    iso,
    past_midnight,
    running_app,
)

BASE = past_midnight()
START, END = iso(BASE), iso(BASE + timedelta(days=1))
Row = tuple[int, str, Decimal, int, datetime]


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


@pytest.fixture
def trades(market: SyncDatabase) -> None:
    """Three symbols, with ties in time across and within symbols, and awkward prices."""
    market.seed_trades("MSFT", [(at(10), "410.1", 3), (at(10), "0.000001", 1), (at(20), "5", 2)])
    market.seed_trades(
        "AAPL",
        [(at(10), "187.42", 7), (at(0.000001), "99999.999999", 5), (at(86399.999999), "1.5", 9)],
    )
    market.seed_trades("TSLA", [(at(10), "240.01", 4), (at(-1), "1", 1), (at(86400), "1", 1)])


def query(**extra: str) -> dict[str, str]:
    return {"symbols": "msft,AAPL,TSLA", "start": START, "end": END, **extra}


def walk_trades(client: TestClient, symbol: str) -> list[Row]:
    """Every trade of the window through /trades, page by page, as exact values."""
    rows: list[Row] = []
    params: dict[str, Any] = {"symbol": symbol, "start": START, "end": END, "order": "asc"}
    params["limit"] = 2
    while True:
        page = client.get("/trades", params=params)
        body = json.loads(page.text, parse_float=Decimal)
        rows += [
            (t["id"], t["symbol"], Decimal(t["price"]), Decimal(t["volume"]), _utc(t["timestamp"]))
            for t in body["trades"]
        ]
        if body["next_cursor"] is None:
            return rows
        params["cursor"] = body["next_cursor"]


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def expected(client: TestClient, trades: None) -> list[Row]:
    rows = [row for symbol in ("AAPL", "MSFT", "TSLA") for row in walk_trades(client, symbol)]
    assert len(rows) == 7
    return sorted(rows, key=lambda r: (r[4], r[1], r[0]))


def _from_records(records: list[dict[str, Any]]) -> list[Row]:
    return [
        (
            int(r["id"]),
            str(r["symbol"]),
            Decimal(str(r["price"])).normalize(),
            int(r["volume"]),
            pd.Timestamp(r["timestamp"]).to_pydatetime().astimezone(UTC),
        )
        for r in records
    ]


def _exact(rows: list[Row]) -> list[Row]:
    return [(i, s, p.normalize(), v, t) for i, s, p, v, t in rows]


def _text_readers() -> dict[str, Callable[[bytes, str], list[dict[str, Any]]]]:
    # Prices as text, so that no reader's float parsing can blur them.
    return {
        "pyarrow": lambda data, fmt: _arrow_text(data, fmt).to_pylist(),
        "pandas": lambda data, fmt: (
            pd.read_csv(io.BytesIO(data), dtype={"price": str})
            if fmt == "csv"
            else pd.read_json(
                io.BytesIO(data), lines=True, dtype={"price": str}, precise_float=True
            )
        ).to_dict("records"),
        "polars": lambda data, fmt: (
            pl.read_csv(data, schema_overrides={"price": pl.String})
            if fmt == "csv"
            else pl.read_ndjson(data)
        ).to_dicts(),
    }


def _arrow_text(data: bytes, fmt: str) -> pa.Table:
    if fmt == "csv":
        import pyarrow.csv as pa_csv

        return pa_csv.read_csv(
            pa.py_buffer(data),
            convert_options=pa_csv.ConvertOptions(column_types={"price": pa.string()}),
        )
    import pyarrow.json as pa_json

    return pa_json.read_json(pa.py_buffer(data))


@pytest.mark.parametrize("reader", ["pyarrow", "pandas", "polars"])
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_text_exports_read_back_row_for_row_as_trades_returns(
    client: TestClient, expected: list[Row], fmt: str, reader: str
):
    response = client.get("/export/trades", params=query(format=fmt))
    assert response.status_code == 200
    assert int(response.headers["x-row-count"]) == len(expected)
    records = _text_readers()[reader](response.content, fmt)
    assert _exact(_from_records(records)) == _exact(expected)


def _binary_readers() -> dict[str, Callable[[bytes, str], pa.Table | list[dict[str, Any]]]]:
    def pyarrow_table(data: bytes, fmt: str) -> pa.Table:
        if fmt == "parquet":
            return pq.read_table(io.BytesIO(data))
        return pa_ipc.open_stream(data).read_all()

    return {
        "pyarrow": pyarrow_table,
        "pandas": lambda data, fmt: (
            pd.read_parquet(io.BytesIO(data))
            if fmt == "parquet"
            else pyarrow_table(data, fmt).to_pandas()
        ).to_dict("records"),
        "polars": lambda data, fmt: (
            pl.read_parquet(data) if fmt == "parquet" else pl.read_ipc_stream(data)
        ).to_dicts(),
    }


@pytest.mark.parametrize("reader", ["pyarrow", "pandas", "polars"])
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_binary_exports_read_back_row_for_row_as_trades_returns(
    client: TestClient, expected: list[Row], fmt: str, reader: str
):
    response = client.get("/export/trades", params=query(format=fmt))
    assert response.status_code == 200
    result = _binary_readers()[reader](response.content, fmt)
    if isinstance(result, pa.Table):
        assert result.schema.types == [
            pa.int64(),
            pa.string(),
            pa.decimal128(38, 18),
            pa.decimal128(38, 18),
            pa.timestamp("us", tz="UTC"),
            pa.string(),
            pa.string(),
        ]
        result = result.to_pylist()
    assert _exact(_from_records(result)) == _exact(expected)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_price_type_float64_gives_pandas_numeric_prices(
    client: TestClient, expected: list[Row], fmt: str
):
    response = client.get("/export/trades", params=query(format=fmt, price_type="float64"))
    assert response.status_code == 200
    frame = _binary_readers()["pyarrow"](response.content, fmt).to_pandas()
    # Every decimal column: the price, and the volume (exact decimal since trades v2).
    assert str(frame["price"].dtype) == str(frame["volume"].dtype) == "float64"
    assert {"price", "volume"} <= set(frame.describe().columns)  # Decimals would be left out
    assert list(frame["price"]) == [float(row[2]) for row in expected]
    exact = client.get("/export/trades", params=query(format=fmt, price_type="decimal"))
    assert str(_binary_readers()["pyarrow"](exact.content, fmt).to_pandas()["price"].dtype) == (
        "object"
    )


def test_price_type_leaves_text_exports_exact(client: TestClient, trades: None):
    exact = client.get("/export/trades", params=query(format="csv"))
    assert client.get(
        "/export/trades", params=query(format="csv", price_type="float64")
    ).content == (exact.content)
    assert error_names(client.get("/export/trades", params=query(price_type="float32"))) == [
        "price_type"
    ]


def test_csv_export_is_rfc_4180_with_a_header_and_json_like_values(
    client: TestClient, expected: list[Row]
):
    response = client.get("/export/trades", params=query())
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.content.split(b"\r\n")
    assert lines[0] == b"id,symbol,price,volume,timestamp,venue_trade_id,side"
    assert lines[-1] == b"" and all(b"\n" not in line for line in lines)
    rows = list(csv.reader(io.StringIO(response.text)))
    # Shortest exact prices and RFC 3339 UTC with microseconds, as the JSON operations write.
    assert [row[2] for row in rows[1:]] == [str(p.normalize()) for _, _, p, _, _ in expected]
    assert [row[3] for row in rows[1:]] == [f"{v.normalize():f}" for _, _, _, v, _ in expected]
    # Trades without a venue id or side: NULL, an empty field.
    assert {(row[5], row[6]) for row in rows[1:]} == {("", "")}
    assert [row[4] for row in rows[1:]] == [
        t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for _, _, _, _, t in expected
    ]


def test_export_names_its_file(client: TestClient, trades: None):
    response = client.get("/export/trades", params=query(format="parquet"))
    stamp = BASE.strftime("%Y%m%dT%H%M%SZ")
    end = (BASE + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="trades_MSFT-AAPL-TSLA_{stamp}_{end}.parquet"'
    )


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        (None, "text/csv"),
        ("*/*", "text/csv"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
        (
            "text/html;q=0.9, application/vnd.apache.arrow.stream",
            "application/vnd.apache.arrow.stream",
        ),
    ],
)
def test_without_format_accept_chooses_defaulting_to_csv(
    client: TestClient, trades: None, accept: str | None, media_type: str
):
    headers = {"Accept": accept} if accept is not None else {}
    response = client.get("/export/trades", params=query(), headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type


def test_format_overrides_accept(client: TestClient, trades: None):
    response = client.get(
        "/export/trades", params=query(format="ndjson"), headers={"Accept": "text/csv"}
    )
    assert response.headers["content-type"] == "application/x-ndjson"


def test_an_accept_naming_no_export_format_is_not_acceptable(client: TestClient, trades: None):
    response = client.get("/export/trades", params=query(), headers={"Accept": "application/json"})
    assert_problem(response, 406, "not_acceptable")


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_text_exports_are_compressed_when_the_client_accepts_it(
    client: TestClient, trades: None, coding: str, fmt: str
):
    plain = client.get("/export/trades", params=query(format=fmt), headers={"Accept-Encoding": ""})
    assert "content-encoding" not in plain.headers
    response = client.get(
        "/export/trades", params=query(format=fmt), headers={"Accept-Encoding": coding}
    )
    assert response.headers["content-encoding"] == coding
    body = response.content
    if coding == "zstd":
        # The test client decodes gzip itself (and fails on a body that is not gzip), not zstd.
        body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    assert body == plain.content


def test_binary_exports_are_not_compressed_again(client: TestClient, trades: None):
    response = client.get(
        "/export/trades", params=query(format="parquet"), headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in response.headers


def test_an_empty_window_is_a_file_with_no_rows(client: TestClient, trades: None):
    empty = {"start": iso(BASE - timedelta(days=3)), "end": iso(BASE - timedelta(days=2))}
    csv_text = client.get("/export/trades", params=query(**empty)).text
    assert csv_text == "id,symbol,price,volume,timestamp,venue_trade_id,side\r\n"
    arrow = client.get("/export/trades", params=query(format="arrow", **empty))
    assert pa_ipc.open_stream(arrow.content).read_all().num_rows == 0
    parquet = client.get("/export/trades", params=query(format="parquet", **empty))
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 0


def test_unknown_symbols_are_named_in_a_404(client: TestClient, trades: None):
    response = client.get("/export/trades", params=query(symbols="AAPL,NOPE,ZZZ"))
    body = assert_problem(response, 404, "symbol_not_found")
    assert "NOPE" in body["detail"] and "ZZZ" in body["detail"]


def test_export_requires_symbols_start_and_end(client: TestClient):
    response = client.get("/export/trades", params={"format": "xml"})
    assert sorted(error_names(response)) == ["end", "format", "start", "symbols"]


def test_export_takes_at_most_100_symbols(client: TestClient):
    symbols = ",".join(f"S{n}" for n in range(101))
    response = client.get("/export/trades", params=query(symbols=symbols))
    assert error_names(response) == ["symbols"]


def test_export_rejects_start_not_before_end(client: TestClient):
    response = client.get("/export/trades", params=query(start=END, end=START))
    assert_problem(response, 400, "invalid_time_range")


def test_a_window_longer_than_the_day_limit_is_refused_naming_it(client: TestClient):
    response = client.get("/export/trades", params=query(end=iso(BASE + timedelta(days=367))))
    body = assert_problem(response, 400, "export_too_large")
    assert "366 days" in body["detail"] and "EXPORT_MAX_DAYS" in body["detail"]


def test_a_window_over_the_row_limit_is_refused_up_front_naming_it(
    api_database_url: Any, client: TestClient, trades: None
):
    settings = app_settings(api_database_url, export_max_rows=6)
    with running_app(settings) as small:
        response = small.get("/export/trades", params=query())
        body = assert_problem(response, 400, "export_too_large")
        assert "more than 6 rows" in body["detail"] and "EXPORT_MAX_ROWS" in body["detail"]
        assert small.get("/export/trades", params=query(symbols="AAPL,MSFT")).status_code == 200


def test_every_default_symbol_exports_in_one_request(client: TestClient, trades: None):
    symbols = ",".join(spec.symbol for spec in DEFAULT_SYMBOLS)
    response = client.get("/export/trades", params=query(symbols=symbols, format="arrow"))
    assert pa_ipc.open_stream(response.content).read_all().num_rows == 7
