"""Reads only read: every read the API makes works through a role that can only SELECT."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mdp.engines import open_read_pool
from mdp.settings import Settings
from persistence import candles, symbols, trades
from persistence.admission import Admission
from persistence.connections import Database
from persistence.finality import INTERVALS, horizon
from persistence.materialise import advance_watermark
from persistence.pool import ReadPool
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, insert_live_batch
from tests.support import restore_trades

DAY = datetime(2026, 2, 3, tzinfo=UTC)


def _read_pool(url: URL) -> ReadPool:
    """The service's read connections (the ones `mdp serve` opens for requests)."""
    return open_read_pool(Settings(db_pool_size=1), url)


@pytest.fixture
async def reader(fresh_engine: AsyncEngine, empty_database: URL) -> AsyncIterator[ReadPool]:
    """The read pool, logged in as a role granted nothing but SELECT (and CONNECT)."""
    role = f"mdp_reader_{uuid.uuid4().hex[:8]}"
    async with fresh_engine.begin() as conn:
        await conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        await conn.execute(text(f'GRANT CONNECT ON DATABASE "{empty_database.database}" TO {role}'))
        await conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
        await conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    pool = _read_pool(empty_database.set(username=role, password=None))
    try:
        yield pool
    finally:
        await pool.close()
        async with fresh_engine.begin() as conn:
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))


async def test_every_read_works_through_a_select_only_role(
    fresh_engine: AsyncEngine, reader: ReadPool
) -> None:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("RO", "Read only"), ("EMPTY", "No trades")])
        await restore_trades(
            conn,
            [NewTrade("RO", Decimal(10 + i), 1, DAY + timedelta(hours=i)) for i in range(6)],
        )
        # Materialised up to 03:00; after that, final but not materialised yet.
        await advance_watermark(conn, span=timedelta(days=10_000), until=DAY + timedelta(hours=3))
        now = await horizon(conn)
        live = [NewTrade("RO", Decimal("20.00"), 2, now)]
        await insert_live_batch(conn, live, stamped=now, leader_pid=None, lock_key=0)

    db = Database(
        reader,
        probe_timeout=5,
        admission=Admission(1, max_waiting=1, max_wait=5, timeout=5),
        exports=reader,
    )
    db.mark_ready()
    assert (await db.probe()).ok
    async with db.connect() as driver:
        assert [
            row["symbol"] for row in await symbols.list_symbols(driver, limit=10, after=None)
        ] == [
            "EMPTY",
            "RO",
        ]
        assert await symbols.symbol_exists(driver, "RO")
        latest = await trades.latest_trade(driver, "RO")
        assert latest is not None and latest.price == 20.0
        page = await trades.list_trades(
            driver, symbol="RO", start=DAY, end=None, descending=False, after=None, limit=100
        )
        assert len(page) == 7
        day = await candles.read_candle_page(
            driver,
            symbol="RO",
            interval="1h",
            step=INTERVALS["1h"],
            lo=DAY,
            hi=DAY + timedelta(hours=6),
            limit=10,
        )
        # Three materialised hours, three aggregated from trades (and counted as such).
        assert [c.close for c in day.candles] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
        assert day.from_trades
        open_minute = await candles.read_candle_page(
            driver,
            symbol="RO",
            interval="1m",
            step=INTERVALS["1m"],
            lo=now - timedelta(minutes=1),
            hi=now + timedelta(minutes=1),
            limit=5,
        )
        assert [(c.close, c.closed) for c in open_minute.candles] == [(20.0, False)]
        until, minutes = await candles.materialised_minutes(
            driver, ["RO", "EMPTY"], DAY, DAY + timedelta(days=1)
        )
        assert until == DAY + timedelta(hours=3)
        assert [m.timestamp for m in minutes] == [DAY + timedelta(hours=h) for h in range(3)]
        empty = await candles.read_candle_page(
            driver, symbol="EMPTY", interval="1d", step=INTERVALS["1d"], lo=DAY, hi=now, limit=5
        )
        assert (empty.candles, empty.until, empty.from_trades) == ([], now, False)


async def test_the_read_pool_refuses_writes_whoever_it_logs_in_as(empty_database: URL) -> None:
    # The test's own role may write anything: the session setting alone stops it.
    pool = _read_pool(empty_database)
    try:
        conn = await pool.take()
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("CREATE TABLE nope (id integer)")
        pool.give(conn)
    finally:
        await pool.close()
