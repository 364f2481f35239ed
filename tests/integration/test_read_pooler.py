"""Reads through a real PgBouncer in transaction mode, which moves statements between servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mdp.engines import open_read_pool
from persistence.pool import ReadPool
from persistence.symbols import ensure_symbols, list_symbols
from persistence.trades import NewTrade, latest_trade, list_trades
from tests.support import TEST_SETTINGS, open_test_engine, seed_trades
from tests.support.servers import pgbouncer

pytestmark = pytest.mark.slow

T0 = datetime(2026, 1, 5, tzinfo=UTC)
POOLED = replace(TEST_SETTINGS, db_pool_size=2, database_read_pooler="transaction")


@pytest.fixture
def pooler(empty_database: URL, fresh_engine: AsyncEngine) -> Iterator[URL]:
    """The test's database, migrated, behind a PgBouncer with two server connections."""
    with pgbouncer(empty_database, pool_size=2) as url:
        yield url


@pytest.fixture
async def pooled_reads(pooler: URL) -> AsyncIterator[ReadPool]:
    # The service's read connections behind a transaction-mode pooler.
    pool = open_read_pool(POOLED, pooler)
    yield pool
    await pool.close()


async def _hold_a_server(pooler: URL) -> asyncpg.Connection:
    """A client in an open transaction: PgBouncer keeps the server it got (the one most
    recently released) until it ends, so the next statement of anyone else lands elsewhere."""
    holder = await asyncpg.connect(
        pooler.set(drivername="postgresql").render_as_string(hide_password=False),
        statement_cache_size=0,
    )
    await holder.execute("BEGIN")
    await holder.execute("SELECT 1")
    return holder


async def test_reads_survive_moving_to_another_server_connection(
    fresh_engine: AsyncEngine, pooled_reads: ReadPool, pooler: URL
) -> None:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("POOL", "Pooled")])
        await seed_trades(
            conn,
            [NewTrade("POOL", Decimal("10.5"), i + 1, T0 + timedelta(seconds=i)) for i in range(3)],
        )
    driver = await pooled_reads.take()
    try:
        first = await list_trades(
            driver, symbol="POOL", start=None, end=None, descending=True, after=None, limit=10
        )
        holder = await _hold_a_server(pooler)
        try:
            # The same statements again, now on the other server connection.
            again = await list_trades(
                driver, symbol="POOL", start=None, end=None, descending=True, after=None, limit=10
            )
            latest = await latest_trade(driver, "POOL")
            symbols = await list_symbols(driver, limit=10, after=None)
        finally:
            await holder.close()
    finally:
        pooled_reads.give(driver)

    assert [row["volume"] for row in first] == [3, 2, 1]
    assert again == first
    # A TradeRow also carries the live-only `stamped` (None here) past the record's columns.
    assert latest is not None and latest[:7] == tuple(first[0])
    assert [row["symbol"] for row in symbols] == ["POOL"]


async def test_cached_prepared_statements_break_on_the_same_moves(pooler: URL) -> None:
    """The control: what the pooled read connections avoid does fail in this set-up."""
    dsn = pooler.set(drivername="postgresql").render_as_string(hide_password=False)
    client = await asyncpg.connect(dsn)  # asyncpg's default: a named, cached statement
    try:
        await client.fetchval("SELECT count(*) FROM trades WHERE volume > $1", 0)
        holder = await _hold_a_server(pooler)
        try:
            with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
                await client.fetchval("SELECT count(*) FROM trades WHERE volume > $1", 0)
        finally:
            await holder.close()
    finally:
        await client.close()


async def test_a_pooler_refuses_the_session_settings_of_a_direct_connection(pooler: URL) -> None:
    """Why pooled read connections send only application_name: the rest is the role's to set."""
    direct = open_test_engine(pooler)
    try:
        with pytest.raises(Exception, match="unsupported startup parameter"):
            async with direct.connect():
                pass
    finally:
        await direct.dispose()
