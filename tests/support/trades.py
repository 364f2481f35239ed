"""Stored trades for tests, written through the service's own write paths."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.history import copy_trades, write_history
from persistence.trades import NewTrade

__all__ = ["restore_trades", "seed_trades"]


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
