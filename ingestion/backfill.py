"""History backfill: the live walk run backwards from each symbol's oldest trade, via COPY.

Backwards, so that the history meets the stored data continuously in price and a rerun (after
Ctrl-C, or later with more days) simply carries on from the new oldest trade: it never
overlaps what is there, so it can run beside live ingestion.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.walk import BoundedWalk
from persistence.finality import VISIBILITY_DEADLINE
from persistence.history import write_history_table
from persistence.partitions import dropped_months, next_month
from persistence.trades import oldest_trade

__all__ = ["BackfillPlan", "ChunkWritten", "plan_backfill", "run_backfill"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Rows per COPY: one transaction each, so an interruption loses at most one chunk's work
# (about a second's). Each also recomputes its stretch's candles: 200,000 rather than 50,000
# took `mdp backfill` from 0.58-0.59 to 0.66 of a plain COPY at 10M rows (bench/README.md).
CHUNK_ROWS = 200_000


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    symbol: str
    start: datetime  # inclusive: no trade earlier than this is written
    end: datetime  # exclusive: the oldest stored trade (or just before now, without trades)
    rows: int
    spacing: timedelta  # time between consecutive trades
    resume_price: Decimal  # the price the backwards walk starts from
    base_price: Decimal  # the walk's band is around this (the live walk's base)


@dataclass(frozen=True, slots=True)
class ChunkWritten:
    symbol: str
    rows: int
    oldest: datetime


async def plan_backfill(
    engine: AsyncEngine,
    base_prices: dict[str, Decimal],
    *,
    days: float,
    trades_per_second: float,
    now: datetime,
) -> list[BackfillPlan]:
    """What to write per symbol to cover [now - days, oldest stored trade)."""
    spacing = timedelta(microseconds=max(1, round(1_000_000 / trades_per_second)))
    start = now - timedelta(days=days)
    plans = []
    async with engine.connect() as conn:
        for symbol, base in base_prices.items():
            oldest = await oldest_trade(conn, symbol)
            # Without trades yet, stop short of any live batch that may still be committing.
            end, price = oldest if oldest is not None else (now - VISIBILITY_DEADLINE, base)
            # Never into a month retention dropped: its candles are kept as they were.
            dropped = await dropped_months(conn, start, end)
            begin = max(start, next_month(dropped[-1])) if dropped else start
            if begin >= end:
                continue
            rows = (end - begin) // spacing
            if rows:
                plans.append(BackfillPlan(symbol, begin, end, rows, spacing, price, base))
    return plans


def _chunks(plan: BackfillPlan, walk: BoundedWalk) -> Iterator[pa.Table]:
    """Chunks of trades (`persistence.history.TABLE_COLUMNS`), newest first, going back in
    time: the walk in Python, everything else by Arrow's kernels."""
    spacing = plan.spacing // timedelta(microseconds=1)
    newest = (plan.end - _EPOCH) // timedelta(microseconds=1) - spacing
    written = 0
    while written < plan.rows:
        rows = min(CHUNK_ROWS, plan.rows - written)
        ticks, units = walk.path(rows)
        steps = pa.array(range(written, written + rows), pa.int64())
        moments = pc.subtract(newest, pc.multiply(steps, spacing))
        yield pa.table(
            {
                "symbol": pa.array([plan.symbol] * rows, pa.string()),
                "price": _tick_text(pa.array(ticks, pa.int64())),
                "volume": pa.array(units, pa.int64()).cast(pa.string()),
                "timestamp": moments.cast(pa.timestamp("us", tz="UTC")),
                "venue_trade_id": pa.nulls(rows, pa.string()),
                "side": pa.nulls(rows, pa.string()),
            }
        )
        written += rows


def _tick_text(ticks: pa.Array) -> pa.Array:
    """Whole ticks of 0.01 as decimal text (12345 -> "123.45")."""
    whole = pc.divide(ticks, 100)  # integer division
    cents = pc.subtract(ticks, pc.multiply(whole, 100))
    return pc.binary_join_element_wise(
        whole.cast(pa.string()), pc.utf8_lpad(cents.cast(pa.string()), 2, "0"), "."
    )


async def run_backfill(
    engine: AsyncEngine,
    plans: Sequence[BackfillPlan],
    *,
    seed: int | None,
    on_chunk: Callable[[ChunkWritten], None],
) -> int:
    """Write every plan with COPY, a chunk per transaction; returns the rows written.

    Each chunk also materialises the candles of every bucket it touches, in its transaction
    and under the symbol's candle lock: history is readable as candles as soon as it is there.
    """

    def all_chunks() -> Iterator[tuple[BackfillPlan, pa.Table]]:
        for plan in plans:
            rng = random.Random(f"{seed}:{plan.symbol}:backfill") if seed is not None else None
            walk = BoundedWalk(plan.base_price, rng or random.Random(), current=plan.resume_price)
            for chunk in _chunks(plan, walk):
                yield plan, chunk

    written = 0
    chunks = all_chunks()
    # Generate the next chunk in a thread while PostgreSQL ingests this one.
    upcoming = asyncio.create_task(asyncio.to_thread(next, chunks, None))
    try:
        while (item := await upcoming) is not None:
            upcoming = asyncio.create_task(asyncio.to_thread(next, chunks, None))
            plan, chunk = item
            async with engine.begin() as conn:
                await write_history_table(conn, plan.symbol, chunk)
            written += chunk.num_rows
            oldest = chunk["timestamp"][chunk.num_rows - 1].as_py()
            on_chunk(ChunkWritten(plan.symbol, chunk.num_rows, oldest))
    finally:
        upcoming.cancel()
    return written
