"""The bench databases: built with `mdp backfill` (reused when fresh) or, for history at
scale, written straight by COPY; and the raw COPY comparison that backfill speed is measured
against."""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from bench.support import (
    Server,
    backfill,
    ensure_database,
    log,
    recreate_database,
    symbol_codes,
)


async def _newest_trade(dsn: str) -> tuple[datetime | None, int]:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('trades')") is None:
            return None, 0
        newest = await conn.fetchval("SELECT max(timestamp) FROM trades")
        count = await conn.fetchval("SELECT count(*) FROM trades")
        return newest, int(count)
    finally:
        await conn.close()


async def execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def build_database(server: Server, args: argparse.Namespace, own_server: bool) -> dict[str, Any]:
    """The bench database: reused when it already holds the requested history and is fresh."""
    codes = symbol_codes(args.symbols)
    if own_server:
        name = f"mdp_bench_{args.symbols}s_{args.trades_per_second:g}tps".replace(".", "_")
        dsn, existed = asyncio.run(ensure_database(server, name))
        if existed:
            newest, _ = asyncio.run(_newest_trade(dsn))
            gap = datetime.now(UTC) - newest if newest else None
            if gap is not None and gap > timedelta(minutes=args.max_gap_minutes):
                # A gap before "now" would leave the 1h and 24h windows half empty.
                log(f"{name}: newest trade is {gap} old: rebuilding it")
                dsn = asyncio.run(recreate_database(server, name))
    else:
        name, dsn = server.database, server.base
    log(
        f"database {name}: backfill {args.symbols} symbols x {args.trades_per_second:g} trade/s "
        f"x {args.days:g} days"
    )
    built = backfill(dsn, days=args.days, symbols=codes, trades_per_second=args.trades_per_second)
    # Its summary lines, without the JSON log lines already shown as progress.
    print("\n".join(x for x in built.output.splitlines() if not x.startswith("{")), flush=True)
    if built.rows:
        # Index-only scans need the visibility map: do now what autovacuum would do later.
        log("VACUUM (ANALYZE) trades, candles")
        asyncio.run(execute(dsn, "VACUUM (ANALYZE) trades, candles"))
    _, count = asyncio.run(_newest_trade(dsn))
    return {
        "name": name,
        "dsn": dsn,
        "symbols": codes,
        "trades": count,
        "reused": built.rows == 0,
        "backfill": {
            "rows": built.rows,
            "seconds": built.seconds,
            "rows_per_second": built.rows_per_second,
        },
    }


def _copy_records(rows: int) -> list[tuple[str, Decimal, int, datetime]]:
    """Rows shaped like the backfill's (a few hundred distinct prices, seconds apart)."""
    prices = [Decimal("190.00") + Decimal(i) / 100 for i in range(-500, 500)]
    start = datetime.now(UTC) - timedelta(days=400)
    step = timedelta(milliseconds=288)
    return [("AAPL", prices[i % 1000], 1 + i % 997, start + i * step) for i in range(rows)]


async def _raw_copy(dsn: str, rows: int) -> float:
    records = _copy_records(rows)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS bench_copy_scratch;"
            "CREATE TABLE bench_copy_scratch (LIKE trades INCLUDING ALL)"
        )
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_copy_scratch",
            records=records,
            columns=("symbol", "price", "volume", "timestamp"),
        )
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE bench_copy_scratch")
    finally:
        await conn.close()
    return rows / elapsed


def copy_comparison(
    server: Server, own_server: bool, main: dict[str, Any], rows: int, repeat: int = 3
) -> dict[str, Any]:
    """`mdp backfill` against a raw COPY of as many rows into the same schema and indexes, each
    the median of `repeat` tries alternating the two (one try takes a second or two: noisy)."""
    backfills: list[float] = []
    raws: list[float] = []
    backfill_rows = main["backfill"]["rows"]
    log(
        f"backfill speed: {rows} rows into an empty database (1 symbol, 1 day), against a raw "
        f"COPY of {rows} rows into a copy of trades (same columns and indexes), {repeat} times"
    )
    for _ in range(repeat):
        if own_server:
            dsn = asyncio.run(recreate_database(server, "mdp_bench_copy"))
            built = backfill(dsn, days=1, symbols=["AAPL"], trades_per_second=rows / 86400)
            backfill_rows = built.rows
            if built.rows_per_second:
                backfills.append(built.rows_per_second)
        else:
            dsn = main["dsn"]
        raws.append(asyncio.run(_raw_copy(dsn, rows)))
    if own_server:
        asyncio.run(
            execute(server.dsn(server.database), 'DROP DATABASE "mdp_bench_copy" WITH (FORCE)')
        )
    elif main["backfill"]["rows_per_second"]:
        backfills.append(main["backfill"]["rows_per_second"])
    backfill_rps = statistics.median(backfills) if backfills else None
    raw = statistics.median(raws)
    return {
        "rows": rows,
        "backfill_rows": backfill_rows,
        "backfill_rows_per_second": backfill_rps,
        "backfill_rows_per_second_tries": backfills,
        "raw_copy_rows_per_second": round(raw),
        "raw_copy_rows_per_second_tries": [round(x) for x in raws],
        "backfill_to_raw": round(backfill_rps / raw, 3) if backfill_rps else None,
    }


# Columns of the synthetic history COPY writes: the id comes from the table's own default.
HISTORY_COLUMNS = ("symbol", "price", "volume", "timestamp")
# The indexes of `trades` (on the parent of a partitioned one), each with the statement that
# makes it again: constraints (the primary key) as constraints, the others as indexes.
_TRADE_INDEXES = """
    SELECT i.indexrelid::regclass::text,
           c.oid IS NOT NULL,
           CASE WHEN c.oid IS NOT NULL
                THEN format('ALTER TABLE trades ADD CONSTRAINT %I %s', c.conname,
                            pg_get_constraintdef(c.oid))
                -- A partitioned index is shown as ON ONLY the parent: built on every
                -- partition, as the migration built it.
                ELSE replace(pg_get_indexdef(i.indexrelid), ' ON ONLY ', ' ON ')
           END
    FROM pg_index AS i
    LEFT JOIN pg_constraint AS c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
    WHERE i.indrelid = 'trades'::regclass
"""
# Rows per CSV block handed to COPY (tens of MiB).
_BLOCK_ROWS = 500_000


def _decimals(units: np.ndarray, scale: int) -> pa.Array:
    """Integers of 10**-scale as exact decimals (decimal128 holds the unscaled integer)."""
    words = np.empty((len(units), 2), dtype=np.int64)
    words[:, 0] = units
    words[:, 1] = units >> 63
    return pa.Array.from_buffers(pa.decimal128(38, scale), len(units), [None, pa.py_buffer(words)])


def history_blocks(
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
    rows: int,
    *,
    price_scale: int,
    volume_scale: int,
    seed: int = 1,
) -> Iterator[tuple[int, bytes]]:
    """`rows` trades spread evenly over [start, end), symbols taking turns, as CSV blocks in
    time order (each with its row count): a random walk of prices per symbol, sizes from
    1 to 1,000 with `volume_scale` decimals. Built with numpy and pyarrow, not row by row."""
    random = np.random.default_rng(seed)
    first = int(start.timestamp() * 1e6)
    step = (end - start).total_seconds() * 1e6 / rows
    names = pa.array(list(symbols))
    count = len(symbols)
    log_price = np.log(np.full(count, 100.0))
    options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    for low in range(0, rows, _BLOCK_ROWS):
        n = min(_BLOCK_ROWS, rows - low)
        index = np.arange(low, low + n, dtype=np.int64)
        which = (index % count).astype(np.int32)
        moves = random.normal(0.0, 2e-4, n)
        walk = np.empty(n)
        for k in range(count):
            mine = which == k
            path = log_price[k] + np.cumsum(moves[mine])
            walk[mine] = path
            log_price[k] = path[-1]
        prices = np.maximum(np.rint(np.exp(walk) * 10**price_scale), 1).astype(np.int64)
        sizes = random.integers(1, 1000 * 10**volume_scale, n, dtype=np.int64)
        micros = first + (index * step).astype(np.int64)
        block = pa.table(
            {
                "symbol": pa.DictionaryArray.from_arrays(pa.array(which), names),
                "price": _decimals(prices, price_scale),
                "volume": _decimals(sizes, volume_scale),
                "timestamp": pa.array(micros).cast(pa.timestamp("us", tz="UTC")),
            }
        )
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(block, sink, options)
        yield n, sink.getvalue().to_pybytes()


async def copy_history(
    dsn: str,
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
    rows: int,
    *,
    price_scale: int,
    volume_scale: int,
) -> float:
    """COPY `history_blocks` into an empty `trades`, one transaction per block, with its
    indexes built afterwards (from their own definitions: faster than maintaining them row by
    row); returns the seconds. On a partitioned `trades`, the months' partitions must exist.
    """
    conn = await asyncpg.connect(
        dsn, server_settings={"synchronous_commit": "off", "maintenance_work_mem": "1GB"}
    )
    started = time.perf_counter()
    done = 0
    try:
        rebuild = await conn.fetch(_TRADE_INDEXES)
        for name, is_constraint, _ in rebuild:
            drop = "ALTER TABLE trades DROP CONSTRAINT" if is_constraint else "DROP INDEX"
            await conn.execute(f'{drop} "{name}"')
        blocks = history_blocks(
            symbols, start, end, rows, price_scale=price_scale, volume_scale=volume_scale
        )
        for n, block in blocks:
            source = io.BytesIO(block)
            await conn.copy_to_table(
                "trades", source=source, columns=HISTORY_COLUMNS, format="csv", timeout=None
            )
            done += n
            if done % (20 * _BLOCK_ROWS) == 0 or done == rows:
                elapsed = time.perf_counter() - started
                log(f"COPY: {done:,}/{rows:,} trades ({done / elapsed:,.0f} rows/s)")
        for name, _, definition in rebuild:
            log(f"building {name}")
            await conn.execute(definition, timeout=None)
    finally:
        await conn.close()
    return time.perf_counter() - started
