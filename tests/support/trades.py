"""Stored trades for tests, written through the service's own write paths."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg
import pyarrow as pa
from sqlalchemy.ext.asyncio import AsyncConnection

from ingestion.files import TRADES
from ingestion.leader import LEADER_LOCK_KEY
from persistence.feeds import StoredMark, VenueBatch, insert_venue_batch
from persistence.history import copy_trades, write_history
from persistence.trades import NewTrade, VenueTrade

__all__ = [
    "generate_trades",
    "import_table",
    "restore_trades",
    "seed_trades",
    "store_venue_batch",
]


async def seed_trades(conn: AsyncConnection, trades: Iterable[NewTrade]) -> None:
    """Store `trades` as `mdp backfill` stores history: with their candles, in the caller's
    transaction. Symbol by symbol (in order of first appearance); within a symbol, ids follow
    the order given."""
    by_symbol: dict[str, list[NewTrade]] = {}
    for trade in trades:
        by_symbol.setdefault(trade.symbol, []).append(trade)
    for symbol, records in by_symbol.items():
        await write_history(conn, symbol, records)


async def restore_trades(conn: AsyncConnection, trades: Iterable[NewTrade]) -> None:
    """Store `trades` as a restored dump holds them: ids in the order given, nothing
    materialised, so candles come from trades until the leader catches up."""
    await copy_trades(conn, list(trades))


async def store_venue_batch(
    conn: AsyncConnection,
    trades: list[VenueTrade],
    marks: dict[str, StoredMark],
    *,
    stamped: datetime,
) -> VenueBatch:
    """Store a venue batch as the feed's writer does, as the only writer (no election), in
    the caller's transaction; it must not be refused."""
    batch = await insert_venue_batch(
        conn,
        trades,
        marks,
        feed="coinbase",
        stamped=stamped,
        leader_pid=None,
        lock_key=LEADER_LOCK_KEY,
    )
    assert batch is not None
    return batch


def import_table(
    symbol: str,
    rows: Iterable[tuple[str, datetime]],
    *,
    price: str = "7.5",
    volume: str = "2",
    side: str = "sell",
) -> pa.Table:
    """A file of `symbol`'s trades as `mdp import` has read and checked it (what
    `persistence.imports.import_trades` stores): (venue trade id, time) per trade."""
    return pa.Table.from_pylist(
        [
            {
                "symbol": symbol,
                "price": price,
                "volume": volume,
                "timestamp": moment,
                "venue_trade_id": venue_id,
                "side": side,
            }
            for venue_id, moment in rows
        ],
        schema=TRADES,
    )


async def generate_trades(conn: asyncpg.Connection, rows: int) -> None:
    """`rows` AAPL trades 100 ms apart from 2026-01-01 00:00 UTC, made by the server itself.

    Deliberately raw SQL: millions of rows in seconds, for tests of what reads trades only
    (exports, their budgets), where nothing depends on how candles would be materialised."""
    await conn.execute("SELECT mdp_ensure_trade_partitions('2026-01-01Z', '2026-01-02Z')")
    await conn.execute(
        "INSERT INTO trades (symbol, price, volume, timestamp) "
        "SELECT 'AAPL', 100 + n % 1000 / 100.0, 1 + n % 7, "
        "'2026-01-01T00:00:00Z'::timestamptz + n * interval '100 ms' "
        "FROM generate_series(1, $1) AS n",
        rows,
    )
