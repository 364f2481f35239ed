"""History written below the live feed: trades by COPY, their candles recomputed with them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.materialise import lock_candles, rematerialise
from persistence.partitions import ensure_partitions

__all__ = ["Record", "copy_trades", "write_history"]

# (symbol, price, volume, timestamp): a plain tuple, or a persistence.trades.NewTrade.
Record = tuple[str, Decimal, Decimal, datetime]

_COLUMNS = ("symbol", "price", "volume", "timestamp")


async def copy_trades(conn: AsyncConnection, records: Sequence[Record]) -> None:
    """COPY `records` into `trades` in the caller's transaction; ids follow their order.
    The partitions of their months are created first when missing.

    Candles are not touched: `write_history` is the way history is written.
    """
    if not records:
        return
    stamps = [record[3] for record in records]
    await ensure_partitions(conn, min(stamps), max(stamps))
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        "trades", records=records, columns=_COLUMNS
    )


async def write_history(conn: AsyncConnection, symbol: str, records: Sequence[Record]) -> None:
    """Store trades of `symbol` and recompute every candle whose bucket holds one of them, in
    the caller's transaction and under the symbol's candle lock: readable as candles as soon
    as it commits."""
    if not records:
        return
    stamps = [record[3] for record in records]
    await lock_candles(conn, symbol)
    await copy_trades(conn, records)
    await rematerialise(conn, symbol, min(stamps), max(stamps))
