"""The bench database: built with `mdp backfill`, reused when fresh; and the raw COPY
comparison that backfill speed is measured against."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

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
