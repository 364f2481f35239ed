"""History written below the live feed: trades by COPY, their candles recomputed with them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.materialise import lock_candles, rematerialise
from persistence.partitions import ensure_partitions

__all__ = [
    "TABLE_COLUMNS",
    "Record",
    "copy_table",
    "copy_trades",
    "write_history",
    "write_history_table",
]

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


# The columns of a table of trades (`ingestion.files.TRADES`), in order: prices and sizes as
# decimal text, times as UTC timestamps.
TABLE_COLUMNS = ("symbol", "price", "volume", "timestamp", "venue_trade_id", "side")
# Rows per CSV piece handed to COPY: a few MB, written while the previous one is sent.
_PIECE_ROWS = 100_000


def _piece(batch: pa.RecordBatch) -> bytes:
    piece = io.BytesIO()
    pa_csv.write_csv(
        batch, piece, pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    )
    return piece.getvalue()


async def _csv(table: pa.Table) -> AsyncIterator[bytes]:
    # Written in a thread: the loop goes on sending the last piece meanwhile.
    for batch in table.to_batches(max_chunksize=_PIECE_ROWS):
        yield await asyncio.to_thread(_piece, batch)


async def copy_table(conn: AsyncConnection, target: str, table: pa.Table) -> None:
    """COPY a table of trades (`TABLE_COLUMNS`) into `target` as CSV that Arrow writes (its
    C++ writer costs less than encoding each value in Python for binary COPY); ids follow
    the rows' order."""
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_to_table(  # type: ignore[union-attr]
        target, source=_csv(table), columns=TABLE_COLUMNS, format="csv"
    )


async def write_history_table(conn: AsyncConnection, symbol: str, table: pa.Table) -> None:
    """`write_history` for a table of trades of `symbol` (`TABLE_COLUMNS`)."""
    if table.num_rows == 0:
        return
    oldest, newest = (moment.as_py() for moment in pc.min_max(table["timestamp"]).values())
    await lock_candles(conn, symbol)
    await ensure_partitions(conn, oldest, newest)
    await copy_table(conn, "trades", table)
    await rematerialise(conn, symbol, oldest, newest)
