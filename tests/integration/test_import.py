"""`mdp import`: vendors' trade files stored once each, with their candles, or not at all."""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mdp import import_cli
from mdp.cli import main
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade
from tests.support import seed_trades

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"
# Binance's spot dumps: milliseconds until 2024, microseconds from 2025-01-01.
MILLISECONDS = FIXTURES / "BTCUSDT-trades-2024-12-31.csv"
MICROSECONDS = FIXTURES / "BTCUSDT-trades-2025-01-01.csv"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _args(
    *files: Path,
    symbol: str | None = None,
    repair: bool = False,
    columns: dict[str, str] | None = None,
    time_unit: str | None = None,
) -> argparse.Namespace:
    return argparse.Namespace(
        files=list(files),
        symbol=symbol,
        format=None,
        repair=repair,
        columns=columns or {},
        time_unit=time_unit,
    )


def _expected(path: Path) -> list[tuple[str, Decimal, Decimal, datetime, str]]:
    """The file read plainly, by the documented columns."""
    rows = []
    with path.open() as handle:
        for trade_id, price, qty, _, stamp, maker, _ in csv.reader(handle):
            units = int(stamp)
            moment = EPOCH + (
                timedelta(microseconds=units) if len(stamp) >= 16 else timedelta(milliseconds=units)
            )
            rows.append((trade_id, Decimal(price), Decimal(qty), moment, maker))
    return rows


async def _stored(engine: AsyncEngine) -> list[tuple[str, Decimal, Decimal, datetime, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT venue_trade_id, price, volume, timestamp, side FROM trades "
                "WHERE symbol = 'BTCUSDT' ORDER BY timestamp, id"
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


@pytest.mark.parametrize("path", [MILLISECONDS, MICROSECONDS], ids=["ms", "us"])
async def test_binance_trade_dump_is_stored_row_for_row_with_venue_ids_and_sides(
    fresh_engine: AsyncEngine, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await import_cli.run(fresh_engine, _args(path)) == 0

    expected = sorted(_expected(path), key=lambda row: (row[3], int(row[0])))
    stored = await _stored(fresh_engine)
    assert [(i, p, q, t) for i, p, q, t, _ in stored] == [
        (i, p, q, t) for i, p, q, t, _ in expected
    ]
    # isBuyerMaker: the seller took the bid, the aggressor sold.
    assert [side for *_, side in stored] == [
        "sell" if maker == "True" else "buy" for *_, maker in expected
    ]
    assert '"stored": 300' in capsys.readouterr().out


async def test_imported_candles_equal_an_independent_aggregation(
    fresh_engine: AsyncEngine,
) -> None:
    assert await import_cli.run(fresh_engine, _args(MILLISECONDS)) == 0

    minutes: dict[datetime, list[tuple[Decimal, Decimal]]] = {}
    for _, price, qty, moment, _ in sorted(_expected(MILLISECONDS), key=lambda r: r[3]):
        minutes.setdefault(moment.replace(second=0, microsecond=0), []).append((price, qty))
    expected = [
        (m, t[0][0], max(p for p, _ in t), min(p for p, _ in t), t[-1][0], sum(q for _, q in t))
        for m, t in sorted(minutes.items())
    ]
    async with fresh_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT timestamp, open, high, low, close, volume FROM candles "
                "WHERE symbol = 'BTCUSDT' AND interval = '1m' ORDER BY timestamp"
            )
        )
        candles = [tuple(row) for row in rows]
    assert candles == expected


async def test_the_same_file_twice_stores_nothing_twice(
    fresh_engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await import_cli.run(fresh_engine, _args(MICROSECONDS)) == 0
    assert await import_cli.run(fresh_engine, _args(MICROSECONDS)) == 0

    assert len(await _stored(fresh_engine)) == 300
    assert '"stored": 0, "skipped": 300' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda lines: (
                lines[:149] + ["4365000150,abc,0.1,1,1735603200000,True,True"] + lines[150:]
            ),
            ":150: price 'abc' is not a decimal number",
        ),
        (
            lambda lines: lines[:99] + ["4365000100,1.5,0.1,1735603200000"] + lines[100:],
            ":100: expected 7 columns, got 4",
        ),
        (lambda lines: [], "holds no trades"),
    ],
    ids=["bad-row-in-the-middle", "wrong-column-count", "empty"],
)
async def test_a_malformed_file_is_refused_naming_it_and_leaves_nothing(
    fresh_engine: AsyncEngine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: object,
    message: str,
) -> None:
    broken = tmp_path / MILLISECONDS.name
    lines = MILLISECONDS.read_text().splitlines()
    broken.write_text("".join(f"{line}\n" for line in damage(lines)))  # type: ignore[operator]

    assert await import_cli.run(fresh_engine, _args(broken)) == 1

    error = capsys.readouterr().err
    assert str(broken) in error and message in error
    assert await _stored(fresh_engine) == []


async def test_a_dump_under_another_name_is_read_as_a_csv_and_refused_for_its_header(
    fresh_engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "history.csv"
    shutil.copy(MILLISECONDS, renamed)

    assert await import_cli.run(fresh_engine, _args(renamed, symbol="BTCUSDT")) == 1
    assert f"{renamed}:1: no column 'timestamp'" in capsys.readouterr().err
    assert await _stored(fresh_engine) == []


async def test_minutes_that_hold_stored_trades_change_only_with_repair(
    fresh_engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _expected(MILLISECONDS)[0][3]
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("BTCUSDT", "BTCUSDT")])
        # A trade the live feed stored (no venue id here) in the file's first minute.
        await seed_trades(conn, [NewTrade("BTCUSDT", Decimal("93000"), Decimal("1"), first)])

    assert await import_cli.run(fresh_engine, _args(MILLISECONDS)) == 1
    assert "already hold stored trades" in capsys.readouterr().err
    assert len(await _stored(fresh_engine)) == 1

    assert await import_cli.run(fresh_engine, _args(MILLISECONDS, repair=True)) == 0
    minute = first.replace(second=0, microsecond=0).isoformat()
    assert f'"repaired_minutes": ["BTCUSDT {minute}"]' in capsys.readouterr().out
    assert len(await _stored(fresh_engine)) == 301


async def test_a_trade_newer_than_the_live_horizon_is_refused(
    fresh_engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    future = tmp_path / "BTCUSDT-trades-2999-01-01.csv"
    soon = int((datetime.now(UTC) + timedelta(hours=1)).timestamp() * 1_000_000)
    future.write_text(f"1,100.5,0.1,10.05,{soon},True,True\n")

    assert await import_cli.run(fresh_engine, _args(future)) == 1
    assert "newer than the live data's horizon" in capsys.readouterr().err
    assert await _stored(fresh_engine) == []


async def test_a_rerun_after_an_interruption_carries_on(
    fresh_engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    # Interrupted after the first file committed (each file is one transaction).
    assert await import_cli.run(fresh_engine, _args(MILLISECONDS)) == 0

    assert await import_cli.run(fresh_engine, _args(MILLISECONDS, MICROSECONDS)) == 0

    out = capsys.readouterr().out.splitlines()
    assert '"stored": 0, "skipped": 300' in out[1] and '"stored": 300' in out[2]
    assert len(await _stored(fresh_engine)) == 600


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
        main(["import", *flags, str(MILLISECONDS)])

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


OWN_CSV = Path(__file__).resolve().parents[1] / "fixtures" / "csv" / "ethusd-2025-02-03.csv.gz"
POLYGON = Path(__file__).resolve().parents[1] / "fixtures" / "polygon" / "2025-01-02.csv"


async def _all_stored(engine: AsyncEngine) -> list[tuple[object, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT symbol, venue_trade_id, price, volume, timestamp, side FROM trades "
                "ORDER BY symbol, timestamp, id"
            )
        )
        return [tuple(row) for row in rows]


async def test_a_gzip_csv_with_its_own_column_names_and_epoch_milliseconds(
    fresh_engine: AsyncEngine,
) -> None:
    columns = {"timestamp": "ts", "price": "px", "size": "qty", "trade_id": "id"}
    columns["side"] = "taker_side"
    args = _args(OWN_CSV, symbol="ethusd", columns=columns, time_unit="ms")

    assert await import_cli.run(fresh_engine, args) == 0

    with gzip.open(OWN_CSV, "rt") as handle:
        expected = [
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
    assert await _all_stored(fresh_engine) == sorted(expected, key=lambda r: (r[4], int(r[1])))


async def test_a_polygon_flat_file_is_recognised_with_nanosecond_sip_times_per_ticker(
    fresh_engine: AsyncEngine,
) -> None:
    assert await import_cli.run(fresh_engine, _args(POLYGON)) == 0

    with POLYGON.open() as handle:
        expected = [
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
    assert await _all_stored(fresh_engine) == sorted(expected, key=lambda r: (r[0], r[4], r[1]))


async def test_iso_timestamps_need_an_offset(
    fresh_engine: AsyncEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    naive = tmp_path / "naive.csv"
    naive.write_text(
        "timestamp,price,size\n2025-01-02T10:00:00Z,1.5,2\n2025-01-02T10:00:01,1.5,2\n"
    )

    assert await import_cli.run(fresh_engine, _args(naive, symbol="NAIVE")) == 1
    assert f"{naive}:3: timestamp '2025-01-02T10:00:01' is not ISO 8601 with an offset" in (
        capsys.readouterr().err
    )
    assert await _all_stored(fresh_engine) == []


PARQUET = (
    Path(__file__).resolve().parents[1] / "fixtures" / "parquet" / "shibusd-2025-03-04.parquet"
)


async def test_a_parquet_file_keeps_decimal_digits_instants_ids_and_sides(
    fresh_engine: AsyncEngine,
) -> None:
    assert await import_cli.run(fresh_engine, _args(PARQUET)) == 0

    expected = [
        (r["symbol"], r["trade_id"], r["price"], r["size"], r["timestamp"], r["side"])
        for r in pq.read_table(PARQUET).to_pylist()
    ]
    assert await _all_stored(fresh_engine) == sorted(expected, key=lambda r: (r[4], r[1]))


async def test_a_trade_newer_than_the_feeds_complete_through_watermark_is_refused(
    fresh_engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    last = max(row[3] for row in _expected(MILLISECONDS))
    async with fresh_engine.begin() as conn:
        # A venue feed of this symbol has stored everything up to just before the last trade.
        await conn.execute(
            text(
                "INSERT INTO feed_watermarks (symbol, feed, last_trade_id, complete_through, since)"
                " VALUES ('BTCUSDT', 'binance', 1, :through, :through)"
            ),
            {"through": last - timedelta(microseconds=1)},
        )

    assert await import_cli.run(fresh_engine, _args(MILLISECONDS)) == 1
    assert "newer than the live feed's complete-through watermark of BTCUSDT" in (
        capsys.readouterr().err
    )
    assert await _stored(fresh_engine) == []
