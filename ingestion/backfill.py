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
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.walk import TICK, BoundedWalk
from persistence.finality import VISIBILITY_DEADLINE
from persistence.history import Record, write_history
from persistence.trades import oldest_trade

__all__ = ["BackfillPlan", "ChunkWritten", "plan_backfill", "run_backfill"]

# Rows per COPY: one transaction each, so an interruption loses at most one chunk's work.
CHUNK_ROWS = 50_000


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
            if start >= end:
                continue
            rows = (end - start) // spacing
            if rows:
                plans.append(BackfillPlan(symbol, start, end, rows, spacing, price, base))
    return plans


def _records(plan: BackfillPlan, walk: BoundedWalk) -> Iterator[list[Record]]:
    """Chunks of (symbol, price, volume, timestamp), newest first, going back in time."""
    # Prices repeat within the band: one Decimal per distinct tick, not one per row.
    prices: dict[int, Decimal] = {}
    symbol, spacing = plan.symbol, plan.spacing
    moment = plan.end
    remaining = plan.rows
    while remaining:
        chunk = []
        for _ in range(min(CHUNK_ROWS, remaining)):
            moment -= spacing
            walk.step()
            ticks = walk.ticks
            price = prices.get(ticks)
            if price is None:
                price = prices[ticks] = TICK * ticks
            chunk.append((symbol, price, walk.volume(), moment))
        remaining -= len(chunk)
        yield chunk


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

    def all_chunks() -> Iterator[tuple[BackfillPlan, list[Record]]]:
        for plan in plans:
            rng = random.Random(f"{seed}:{plan.symbol}:backfill") if seed is not None else None
            walk = BoundedWalk(plan.base_price, rng or random.Random(), current=plan.resume_price)
            for chunk in _records(plan, walk):
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
                await write_history(conn, plan.symbol, chunk)
            written += len(chunk)
            on_chunk(ChunkWritten(plan.symbol, len(chunk), chunk[-1][3]))
    finally:
        upcoming.cancel()
    return written
