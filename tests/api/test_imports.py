"""`mdp import` of each vendor's file, read back through `/trades` and `/candles`.

One app and one database for the module; each test imports under symbols (or days) of its
own. Every expectation is computed here from the fixture file, read by its documented layout
with the standard library (or the vendor's own package), not by the importer's code.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.testclient import TestClient

from mdp import import_cli
from mdp.cli import main
from persistence.models import VWAP_SCALE
from persistence.trades import VenueTrade, insert_trades
from tests.api.support import app_settings, decimal_json, running_app
from tests.support import dsn, open_test_engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BINANCE_MS = FIXTURES / "binance" / "BTCUSDT-trades-2024-12-31.csv"
BINANCE_US = FIXTURES / "binance" / "BTCUSDT-trades-2025-01-01.csv"
OWN_CSV = FIXTURES / "csv" / "ethusd-2025-02-03.csv.gz"
PARQUET = FIXTURES / "parquet" / "shibusd-2025-03-04.parquet"
POLYGON = FIXTURES / "polygon" / "2025-01-02.csv"
DBN = FIXTURES / "dbn" / "XNAS-trades-2025-03-03.dbn"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]

# (symbol, venue trade id, price, size, time, side), in the file's order.
Trade = tuple[str, str | None, Decimal, Decimal, datetime, str | None]


@pytest.fixture(scope="module")
def client(module_database: URL) -> Iterator[TestClient]:
    with running_app(app_settings(module_database)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
async def engine(client: TestClient, module_database: URL) -> AsyncIterator[AsyncEngine]:
    # After `client`: the app has migrated the database.
    engine = open_test_engine(module_database)
    yield engine
    await engine.dispose()


def _args(*files: Path, **options: Any) -> argparse.Namespace:
    defaults = {"symbol": None, "format": None, "repair": False, "columns": {}, "time_unit": None}
    return argparse.Namespace(files=list(files), **{**defaults, **options})


def _lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


# The fixtures, read by their documented layouts.


def _binance(path: Path, symbol: str) -> list[Trade]:
    with path.open() as handle:
        return [
            (
                symbol,
                trade_id,
                Decimal(price),
                Decimal(qty),
                # Milliseconds until 2024, microseconds from 2025 (16 digits).
                EPOCH + timedelta(microseconds=int(stamp) * (1 if len(stamp) >= 16 else 1000)),
                "sell" if maker == "True" else "buy",
            )
            for trade_id, price, qty, _, stamp, maker, _ in csv.reader(handle)
        ]


def _own_csv(path: Path) -> list[Trade]:
    with gzip.open(path, "rt") as handle:
        return [
            (
                "ETHUSD",
                row["id"],
                Decimal(row["px"]),
                Decimal(row["qty"]),
                EPOCH + timedelta(milliseconds=int(row["ts"])),
                row["taker_side"],
            )
            for row in csv.DictReader(handle)
        ]


def _parquet(path: Path) -> list[Trade]:
    return [
        (r["symbol"], r["trade_id"], r["price"], r["size"], r["timestamp"], r["side"])
        for r in pq.read_table(path).to_pylist()
    ]


def _polygon(path: Path) -> list[Trade]:
    with path.open() as handle:
        return [
            (
                row["ticker"],
                f"{row['exchange']}:{row['trf_id']}:{row['id']}",
                Decimal(row["price"]),
                Decimal(row["size"]),
                # PostgreSQL keeps microseconds.
                EPOCH + timedelta(microseconds=int(row["sip_timestamp"]) // 1000),
                None,
            )
            for row in csv.DictReader(handle)
        ]


def _dbn(path: Path) -> list[Trade]:
    import databento_dbn as dbn

    metadata, *records = dbn.DBNDecoder().write_and_decode(path.read_bytes())
    names = {
        int(interval["symbol"]): symbol
        for symbol, intervals in metadata.mappings.items()
        for interval in intervals
    }
    trades, places = [], {}
    for record in records:
        message = (record.publisher_id, record.ts_recv, record.sequence)
        places[message] = place = places.get(message, -1) + 1
        trades.append(
            (
                names[record.instrument_id],
                f"{record.publisher_id}:{record.ts_recv}:{record.sequence}:{place}",
                Decimal(record.price) / 10**9,
                Decimal(record.size),
                EPOCH + timedelta(microseconds=record.ts_event // 1000),
                {"A": "sell", "B": "buy"}.get(str(record.side.value)),
            )
        )
    return trades


# What the service answers.


def _day(moment: datetime) -> tuple[str, str]:
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.isoformat(), (start + timedelta(days=1)).isoformat()


def _served_trades(client: TestClient, symbol: str, day: datetime) -> list[Trade]:
    start, end = _day(day)
    params = {"symbol": symbol, "start": start, "end": end, "order": "asc", "limit": 1000}
    response = client.get("/trades", params=params)
    assert response.status_code == 200, response.text
    return [
        (
            t["symbol"],
            t["venue_trade_id"],
            t["price"],
            t["volume"],
            datetime.fromisoformat(t["timestamp"]),
            t["side"],
        )
        for t in decimal_json(response)["trades"]
    ]


def _served_candles(client: TestClient, symbol: str, day: datetime, interval: str) -> list[Any]:
    start, end = _day(day)
    params = {"symbol": symbol, "interval": interval, "start": start, "end": end, "limit": 5000}
    response = client.get("/candles", params=params)
    assert response.status_code == 200, response.text
    return [
        (
            datetime.fromisoformat(c["timestamp"]),
            c["open"],
            c["high"],
            c["low"],
            c["close"],
            c["volume"],
            # The read path serves vwap as a double (persistence.candles): compared as one.
            float(c["vwap"]),
            c["trade_count"],
        )
        for c in decimal_json(response)["candles"]
    ]


def _aggregate(trades: list[Trade], step: timedelta) -> list[Any]:
    """OHLCV buckets by the contract's rules, from trades in time order."""
    buckets: dict[datetime, list[Trade]] = {}
    for trade in trades:
        start = EPOCH + (trade[4] - EPOCH) // step * step
        buckets.setdefault(start, []).append(trade)
    candles = []
    for start, group in sorted(buckets.items()):
        prices = [price for _, _, price, _, _, _ in group]
        volume = sum(size for *_, size, _, _ in group)
        with localcontext() as context:
            context.prec = 80
            notional = sum(price * size for _, _, price, size, _, _ in group)
            vwap = (notional / volume).quantize(Decimal(10) ** -VWAP_SCALE, ROUND_HALF_UP)
        candles.append(
            (
                start,
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                volume,
                float(vwap),
                len(group),
            )
        )
    return candles


def _in_time_order(trades: list[Trade]) -> list[Trade]:
    # Ties keep the file's order, as the ids do.
    return sorted(trades, key=lambda trade: trade[4])


FORMATS = [
    pytest.param(
        BINANCE_MS, {"symbol": "BINMS"}, lambda: _binance(BINANCE_MS, "BINMS"), id="binance-ms"
    ),
    pytest.param(
        BINANCE_US, {"symbol": "BINUS"}, lambda: _binance(BINANCE_US, "BINUS"), id="binance-us"
    ),
    pytest.param(
        OWN_CSV,
        {
            "symbol": "ethusd",
            "time_unit": "ms",
            "columns": {
                "timestamp": "ts",
                "price": "px",
                "size": "qty",
                "trade_id": "id",
                "side": "taker_side",
            },
        },
        lambda: _own_csv(OWN_CSV),
        id="csv-gzip",
    ),
    pytest.param(PARQUET, {}, lambda: _parquet(PARQUET), id="parquet"),
    pytest.param(POLYGON, {}, lambda: _polygon(POLYGON), id="polygon-trades"),
    pytest.param(DBN, {}, lambda: _dbn(DBN), id="dbn"),
]


@pytest.mark.parametrize(("path", "options", "expected"), FORMATS)
async def test_each_format_reads_back_row_for_row_and_as_independently_aggregated_candles(
    client: TestClient, engine: AsyncEngine, path: Path, options: dict[str, Any], expected: Any
) -> None:
    assert await import_cli.run(engine, _args(path, **options)) == 0

    trades = _in_time_order(expected())
    symbols = sorted({trade[0] for trade in trades})
    day = trades[0][4]
    for symbol in symbols:
        mine = [trade for trade in trades if trade[0] == symbol]
        assert _served_trades(client, symbol, day) == mine
        for interval, step in (("1m", timedelta(minutes=1)), ("1h", timedelta(hours=1))):
            assert _served_candles(client, symbol, day, interval) == _aggregate(mine, step)


async def _count(engine: AsyncEngine, symbol: str) -> int:
    async with engine.connect() as conn:
        query = text("SELECT count(*) FROM trades WHERE symbol = :symbol")
        count: int = (await conn.execute(query, {"symbol": symbol})).scalar_one()
        return count


async def test_the_same_file_twice_stores_nothing_twice_and_says_so_in_json_lines(
    client: TestClient, engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await import_cli.run(engine, _args(BINANCE_US, symbol="TWICE")) == 0
    assert await import_cli.run(engine, _args(BINANCE_US, symbol="TWICE")) == 0

    trades = _binance(BINANCE_US, "TWICE")
    assert _served_trades(client, "TWICE", trades[0][4]) == _in_time_order(trades)
    # Not a terminal: a line when the file is checked, another when it is stored.
    lines = _lines(capsys.readouterr().out)
    assert [line["phase"] for line in lines] == ["checked", "stored", "checked", "stored"]
    for line in lines:
        assert line["file"] == str(BINANCE_US) and line["rows"] == 300
        assert line["bytes"] == BINANCE_US.stat().st_size and line["rows_per_second"] > 0
    assert (lines[1]["stored"], lines[1]["skipped"]) == (300, 0)
    assert (lines[3]["stored"], lines[3]["skipped"]) == (0, 300)


async def test_a_file_overlapping_what_a_live_feed_stored_fills_only_the_rest(
    client: TestClient, engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    trades = _binance(BINANCE_MS, "OVERLAP")
    # The feed started with the first trade of a minute, and stored from there to the end.
    seam = next(i for i, t in enumerate(trades) if t[4].minute != trades[0][4].minute)
    live = [VenueTrade(s, p, q, t, i, side) for s, i, p, q, t, side in trades[seam:]]
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO symbols (symbol, name) VALUES ('OVERLAP', 'x')"))
        await insert_trades(conn, live)
        await conn.execute(
            text(
                "INSERT INTO feed_watermarks (symbol, feed, last_trade_id, complete_through, since)"
                " VALUES ('OVERLAP', 'binance', :last, :through, :since)"
            ),
            {"last": int(trades[-1][1] or 0), "through": trades[-1][4], "since": trades[seam][4]},
        )

    assert await import_cli.run(engine, _args(BINANCE_MS, symbol="OVERLAP")) == 0

    stored = _lines(capsys.readouterr().out)[-1]
    assert (stored["stored"], stored["skipped"]) == (seam, len(trades) - seam)
    assert _served_trades(client, "OVERLAP", trades[0][4]) == _in_time_order(trades)


def _sigint_reaches_children() -> None:
    """A shell's background job ignores SIGINT, and children inherit that: undo it here."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def _mdp_import(url: URL, *args: str) -> asyncio.subprocess.Process:
    _sigint_reaches_children()
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mdp.cli",
        "import",
        *args,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": dsn(url), "LOG_LEVEL": "WARNING"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_ctrl_c_mid_file_keeps_the_files_before_it_and_a_rerun_carries_on(
    engine: AsyncEngine, module_database: URL, tmp_path: Path
) -> None:
    # A second file large enough to still be writing when the signal lands.
    rows = 100_000
    big = tmp_path / "big.csv"
    start = int(datetime(2024, 6, 3, tzinfo=UTC).timestamp() * 1000)
    pa_csv.write_csv(
        pa.table(
            {
                "timestamp": pa.array(range(start, start + rows * 50, 50)),
                "price": pa.array([f"{100 + n % 500 / 100:.2f}" for n in range(rows)]),
                "size": pa.array([str(1 + n % 7) for n in range(rows)]),
                "trade_id": pa.array([str(n) for n in range(rows)]),
            }
        ),
        big,
    )
    args = ("--symbol", "CTRLC", "--time-unit", "ms", str(BINANCE_MS), str(big))
    process = await _mdp_import(module_database, *args)
    try:
        assert process.stdout is not None
        while (line := json.loads(await asyncio.wait_for(process.stdout.readline(), 60))) and (
            line["file"] != str(big)
        ):
            pass
        # The second file is checked and being written.
        assert line["phase"] == "checked"
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 130
    assert stderr.decode().splitlines()[-1] == (
        "mdp import: interrupted; rerun the same command to carry on"
    )
    assert await _count(engine, "CTRLC") == 300

    rerun = await _mdp_import(module_database, *args)
    stdout, stderr = await asyncio.wait_for(rerun.communicate(), 120)

    assert rerun.returncode == 0, stderr.decode()
    stored = [line for line in _lines(stdout.decode()) if line["phase"] == "stored"]
    assert [(line["stored"], line["skipped"]) for line in stored] == [(0, 300), (rows, 0)]
    assert await _count(engine, "CTRLC") == 300 + rows


def _damaged(lines: list[str], row: int, replacement: str) -> list[str]:
    return lines[: row - 1] + [replacement] + lines[row:]


MALFORMED = [
    pytest.param(
        BINANCE_MS.name,
        lambda: _damaged(
            BINANCE_MS.read_text().splitlines(), 150, "4365000150,abc,0.1,1,1735603200000,True,True"
        ),
        [],
        ":150: price 'abc' is not a decimal number",
        id="bad-row-in-the-middle",
    ),
    pytest.param(
        BINANCE_MS.name,
        lambda: _damaged(
            BINANCE_MS.read_text().splitlines(), 100, "4365000100,1.5,0.1,1735603200000"
        ),
        [],
        ":100: expected 7 columns, got 4",
        id="wrong-column-count",
    ),
    pytest.param(
        "epochs.csv",
        lambda: ["timestamp,price,size", "1735603200000,1.5,2"],
        [],
        ":2: timestamp '1735603200000' is not ISO 8601 with an offset (or give --time-unit",
        id="unknown-timestamp-unit",
    ),
    pytest.param(
        "naive.csv",
        lambda: ["timestamp,price,size", "2025-01-02T10:00:00Z,1.5,2", "2025-01-02T10:00:01,1.5,2"],
        [],
        ":3: timestamp '2025-01-02T10:00:01' is not ISO 8601 with an offset",
        id="time-without-offset",
    ),
    pytest.param(BINANCE_MS.name, lambda: [], [], ": the file holds no trades", id="empty"),
    pytest.param(
        BINANCE_MS.name,
        lambda: BINANCE_MS.read_text().splitlines(),
        ["--format", "parquet"],
        ": not a Parquet file this can read",
        id="wrong-format-flag-parquet",
    ),
    pytest.param(
        BINANCE_MS.name,
        lambda: BINANCE_MS.read_text().splitlines(),
        ["--format", "dbn"],
        ": not a DBN file",
        id="wrong-format-flag-dbn",
    ),
    pytest.param(
        "history.csv",
        lambda: BINANCE_MS.read_text().splitlines(),
        [],
        ":1: no column 'timestamp' for the timestamp",
        id="a-dump-under-another-name",
    ),
]


@pytest.mark.parametrize(("name", "content", "flags", "message"), MALFORMED)
async def test_a_malformed_file_is_refused_in_one_line_naming_it_and_leaves_nothing(
    engine: AsyncEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: Any,
    flags: list[str],
    message: str,
) -> None:
    broken = tmp_path / name
    broken.write_text("".join(f"{line}\n" for line in content()))
    given = dict(zip(flags[::2], flags[1::2], strict=True))

    args = _args(broken, symbol="MALFORMED", format=given.get("--format"))
    assert await import_cli.run(engine, args) == 1

    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"mdp import: {broken}"), error
    assert message in error, error
    assert await _count(engine, "MALFORMED") == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--time-unit", "fortnights"], "invalid choice: 'fortnights'"),
        (["--columns", "when=ts"], "expected field=column"),
    ],
)
def test_an_unknown_flag_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["import", *flags, str(BINANCE_MS)])

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


async def test_minutes_that_hold_stored_trades_change_only_with_repair_which_lists_them(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _binance(BINANCE_MS, "REPAIR")[0][4]
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO symbols (symbol, name) VALUES ('REPAIR', 'x')"))
        # A trade stored without a venue id, in the file's first minute.
        await insert_trades(conn, [VenueTrade("REPAIR", Decimal(1), Decimal(1), first, None, None)])

    assert await import_cli.run(engine, _args(BINANCE_MS, symbol="REPAIR")) == 1
    assert "1 minute(s) already hold stored trades" in capsys.readouterr().err
    assert await _count(engine, "REPAIR") == 1

    assert await import_cli.run(engine, _args(BINANCE_MS, symbol="REPAIR", repair=True)) == 0
    minute = first.replace(second=0, microsecond=0).isoformat()
    assert _lines(capsys.readouterr().out)[-1]["repaired_minutes"] == [f"REPAIR {minute}"]
    assert await _count(engine, "REPAIR") == 301


async def test_a_trade_newer_than_the_live_horizon_is_refused(
    engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    future = tmp_path / "FUTURE-trades-2999-01-01.csv"
    soon = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1_000_000)
    future.write_text(f"1,100.5,0.1,10.05,{soon},True,True\n")

    assert await import_cli.run(engine, _args(future)) == 1
    assert "newer than the live data's horizon" in capsys.readouterr().err
    assert await _count(engine, "FUTURE") == 0


async def test_a_trade_newer_than_the_feeds_complete_through_watermark_is_refused(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    last = _binance(BINANCE_MS, "FED")[-1][4]
    async with engine.begin() as conn:
        # A venue feed of this symbol has stored everything up to just before the last trade.
        await conn.execute(
            text(
                "INSERT INTO feed_watermarks (symbol, feed, last_trade_id, complete_through, since)"
                " VALUES ('FED', 'binance', 1, :through, :through)"
            ),
            {"through": last - timedelta(microseconds=1)},
        )

    assert await import_cli.run(engine, _args(BINANCE_MS, symbol="FED")) == 1
    assert "newer than the live feed's complete-through watermark of FED" in (
        capsys.readouterr().err
    )
    assert await _count(engine, "FED") == 0


async def test_a_file_with_trades_in_a_month_retention_dropped_is_refused_in_one_line(
    engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    month = _binance(BINANCE_MS, "KEPT")[0][4].replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    async with engine.begin() as conn:
        # Retention dropped the file's month: its candles are kept, its trades gone.
        await conn.execute(
            text("INSERT INTO trades_dropped_months (month) VALUES (:month)"), {"month": month}
        )

    assert await import_cli.run(engine, _args(BINANCE_MS, symbol="KEPT")) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"mdp import: {BINANCE_MS}: 300 trade(s) fall in {month:%Y-%m}, whose trades "
        "TRADES_RETENTION dropped: the candles kept there cannot be recomputed from part of "
        "their trades; leave those trades out"
    )
    assert await _count(engine, "KEPT") == 0


async def test_a_file_naming_one_venue_trade_twice_stores_it_once(
    client: TestClient, engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    twice = tmp_path / "twice.csv"
    twice.write_text(
        "timestamp,price,size,trade_id\n"
        "2024-03-05T10:00:00Z,1.5,2,7\n2024-03-05T10:00:00Z,1.5,2,7\n2024-03-05T10:00:01Z,1.6,1,8\n"
    )

    assert await import_cli.run(engine, _args(twice, symbol="DOUBLE")) == 0

    stored = _lines(capsys.readouterr().out)[-1]
    assert (stored["stored"], stored["skipped"]) == (2, 1)
    served = _served_trades(client, "DOUBLE", datetime(2024, 3, 5, tzinfo=UTC))
    assert [trade[1] for trade in served] == ["7", "8"]
