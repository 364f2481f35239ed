"""A venue batch beside history being written (`mdp import`): it never waits for the import.

An import holds its symbol's candle lock, and its rows, until it commits (minutes for a big
file); a batch holds the ingestion row every symbol's feed needs. The trades an import could
meet are left out of the batch for a later one, with their symbol's mark; the rest commits.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.feeds import StoredMark, VenueBatch, stored_marks
from persistence.imports import import_trades
from persistence.partitions import ensure_partitions
from persistence.symbols import ensure_symbols
from persistence.trades import VenueTrade
from tests.support import import_table, store_venue_batch

MINUTE = timedelta(minutes=1)
# Seconds a batch may take here: a batch that waits for the import waits for ever.
PROMPT = 10


def trade(symbol: str, venue_id: int, at: datetime, price: str = "10") -> VenueTrade:
    return VenueTrade(symbol, Decimal(price), Decimal(1), at, str(venue_id), "buy")


async def write(
    engine: AsyncEngine,
    trades: list[VenueTrade],
    marks: dict[str, StoredMark],
    stamped: datetime,
) -> VenueBatch:
    async with engine.begin() as conn:
        return await store_venue_batch(conn, trades, marks, stamped=stamped)


async def stored(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT symbol, venue_trade_id FROM trades ORDER BY symbol, timestamp")
        )
        return [(symbol, venue_id) for symbol, venue_id in rows]


async def test_a_batch_never_waits_for_an_import_and_stores_what_it_held_back_later(
    fresh_engine: AsyncEngine,
) -> None:
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    since = base - timedelta(hours=1)
    stamped = datetime.now(UTC)
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("AAA", "AAA"), ("BBB", "BBB")])
        await ensure_partitions(conn, since, base + timedelta(hours=1))
    await write(
        fresh_engine,
        [trade("AAA", 1, base + MINUTE), trade("BBB", 1, base + MINUTE)],
        {s: StoredMark(1, base + 10 * MINUTE, since) for s in ("AAA", "BBB")},
        stamped,
    )
    async with fresh_engine.connect() as importing:
        transaction = await importing.begin()
        # History of AAA being imported: it holds AAA's candles, and venue trade 5.
        await import_trades(
            importing, "AAA", import_table("AAA", [("5", base + 5 * MINUTE)]), repair=False
        )
        offered = [
            trade("AAA", 5, base + 5 * MINUTE),  # recovered: the import holds it too
            trade("AAA", 11, base + 11 * MINUTE),
            trade("BBB", 3, base + 3 * MINUTE, "9"),  # a late print: BBB's candles are free
            trade("AAA", 6, base + 6 * MINUTE),  # a late print into candles the import holds
            trade("BBB", 11, base + 11 * MINUTE),
        ]
        marks = {s: StoredMark(11, base + 12 * MINUTE, since) for s in ("AAA", "BBB")}
        batch = await asyncio.wait_for(
            write(fresh_engine, offered, marks, stamped + timedelta(seconds=1)), PROMPT
        )

        assert batch.deferred == [0, 3]
        assert (batch.stored, batch.late, batch.duplicates) == (3, {"BBB": 1}, {})
        assert await stored(fresh_engine) == [
            ("AAA", "1"),
            ("AAA", "11"),
            ("BBB", "1"),
            ("BBB", "3"),
            ("BBB", "11"),
        ]
        async with fresh_engine.connect() as conn:
            # AAA's mark stays: its trades up to 11 are not all stored.
            assert await stored_marks(conn, "coinbase") == {
                "AAA": StoredMark(1, base + 10 * MINUTE, since),
                "BBB": marks["BBB"],
            }
        # The import goes on into BBB's history: a batch that held BBB's candles while it
        # waited for AAA's would deadlock with it here.
        await import_trades(
            importing, "BBB", import_table("BBB", [("2", base + 2 * MINUTE)]), repair=False
        )
        await transaction.commit()

    # The next batch offers them again, with the feed's newer marks.
    later = await write(
        fresh_engine,
        [offered[i] for i in batch.deferred],
        marks,
        stamped + timedelta(seconds=2),
    )

    assert (later.deferred, later.stored, later.late, later.duplicates) == (
        [],
        1,
        {"AAA": 1},
        {"AAA": 1},
    )
    assert sorted(await stored(fresh_engine)) == [
        ("AAA", "1"),
        ("AAA", "11"),
        ("AAA", "5"),
        ("AAA", "6"),
        ("BBB", "1"),
        ("BBB", "11"),
        ("BBB", "2"),
        ("BBB", "3"),
    ]
    async with fresh_engine.connect() as conn:
        assert await stored_marks(conn, "coinbase") == marks
