"""Keyset pages over committed trades while another task keeps committing newer ones."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.connections import driver_connection
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, insert_live_batch, list_trades
from tests.support import seed_trades, wait_until_async

SYMBOL = "PAGE"
LIMIT = 7


@dataclass
class Appender:
    """Commits a small live batch of brand-new trades (stamped now) over and over."""

    engine: AsyncEngine
    batches: int = 0

    async def run(self) -> None:
        volume = 0
        while True:
            async with self.engine.begin() as conn:
                now = datetime.now(UTC)
                volume += 1
                batch = [NewTrade(SYMBOL, Decimal("50.00"), volume, now) for _ in range(3)]
                stored = await insert_live_batch(
                    conn, batch, stamped=now, leader_pid=None, lock_key=0
                )
            # A batch stamped no later than the last one is refused: only stored ones count.
            if stored:
                self.batches += 1
            await asyncio.sleep(0)

    async def wait_for_more(self) -> None:
        """Block until at least one more batch has been committed."""
        seen = self.batches
        await wait_until_async(lambda: self.batches > seen, what="the appender to commit a batch")


@pytest.fixture
async def existing(fresh_engine: AsyncEngine) -> list[tuple[datetime, int]]:
    """150 committed trades from an hour ago: groups share timestamps, ids out of time order."""
    rng = random.Random(20260105)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    trades = []
    for i in range(150):
        stamp = base + timedelta(seconds=i // 3, microseconds=rng.choice([0, 0, 250_000]))
        price = Decimal(rng.randint(4000, 6000)) / 100
        trades.append(NewTrade(SYMBOL, price, rng.randint(1, 1000), stamp))
    rng.shuffle(trades)
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [(SYMBOL, "Paging")])
        await seed_trades(conn, trades)
        rows = await conn.execute(text('SELECT "timestamp", id FROM trades ORDER BY 1, 2'))
        return [(row.timestamp, row.id) for row in rows]


@pytest.fixture
async def appender(fresh_engine: AsyncEngine) -> AsyncIterator[Appender]:
    appender = Appender(fresh_engine)
    task = asyncio.create_task(appender.run())
    await appender.wait_for_more()
    yield appender
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _walk(
    engine: AsyncEngine,
    appender: Appender,
    *,
    start: datetime,
    end: datetime | None,
    descending: bool,
) -> tuple[list[asyncpg.Record], int]:
    """Every page, each read in its own transaction after the appender committed more rows."""
    rows: list[asyncpg.Record] = []
    after: tuple[datetime, int] | None = None
    pages = 0
    while True:
        async with engine.connect() as conn:
            page = await list_trades(
                await driver_connection(conn),
                symbol=SYMBOL,
                start=start,
                end=end,
                descending=descending,
                after=after,
                limit=LIMIT,
            )
        if not page:
            return rows, pages
        pages += 1
        rows.extend(page)
        after = (page[-1]["timestamp"], page[-1]["id"])
        await appender.wait_for_more()


def _tied_timestamp(existing: list[tuple[datetime, int]]) -> datetime:
    """A timestamp shared by several trades, a third of the way in: `start` lands on a tie,
    and the inclusive bound must keep the whole group."""
    stamps = [stamp for stamp, _ in existing]
    return next(s for s in stamps[len(stamps) // 3 :] if stamps.count(s) > 1)


async def test_ascending_walk_with_end_fixed_at_first_page_returns_each_row_once(
    fresh_engine: AsyncEngine, existing: list[tuple[datetime, int]], appender: Appender
) -> None:
    start = _tied_timestamp(existing)
    end = datetime.now(UTC)

    rows, pages = await _walk(fresh_engine, appender, start=start, end=end, descending=False)

    keys = [(row["timestamp"], row["id"]) for row in rows]
    expected = [key for key in existing if start <= key[0] < end]
    old_ids = {key[1] for key in existing}
    assert keys == sorted(set(keys)), "pages repeated or reordered rows"
    assert [key for key in keys if key[1] in old_ids] == expected
    assert all(start <= row["timestamp"] < end for row in rows)
    assert pages >= len(expected) // LIMIT


async def test_descending_walk_returns_each_existing_row_once_while_newer_rows_arrive(
    fresh_engine: AsyncEngine, existing: list[tuple[datetime, int]], appender: Appender
) -> None:
    start = _tied_timestamp(existing)

    rows, pages = await _walk(fresh_engine, appender, start=start, end=None, descending=True)

    keys = [(row["timestamp"], row["id"]) for row in rows]
    old_ids = {key[1] for key in existing}
    expected = [key for key in reversed(existing) if key[0] >= start]
    assert keys == sorted(set(keys), reverse=True), "pages repeated or reordered rows"
    assert [key for key in keys if key[1] in old_ids] == expected
    # Rows committed during the walk can only show up ahead of the existing ones, never inside.
    first_old = next(i for i, key in enumerate(keys) if key[1] in old_ids)
    assert all(key[1] in old_ids for key in keys[first_old:])
    assert pages >= len(expected) // LIMIT
    assert appender.batches > pages
