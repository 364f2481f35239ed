"""Trades imported from files: COPY, each venue trade stored once, candles in the same transaction.

COPY cannot skip a conflict. Where the file's stretch of the symbol (its first to its last
minute) holds no stored trade yet (history filled into an empty stretch, the common case),
only the file itself can conflict: the rows are copied straight into `trades`, under a
savepoint in case the file names a venue trade twice. Otherwise (or then) they land in a
temporary table first and move into `trades` with INSERT ... ON CONFLICT DO NOTHING (one
venue trade is stored once). Either way the rows travel
as CSV that Arrow writes, and their candles are materialised in the same transaction, by the
write path's own code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import BigInteger, DateTime, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.finality import bin_sql, horizon
from persistence.history import TABLE_COLUMNS, copy_table
from persistence.materialise import lock_candles, rematerialise
from persistence.partitions import dropped_months, ensure_partitions, next_month

__all__ = ["BucketsTaken", "Imported", "InDroppedMonths", "TooNew", "import_trades"]

_COLUMNS = TABLE_COLUMNS
_MINUTE = timedelta(minutes=1)

_TS = DateTime(timezone=True)
_OCCUPIED = text(
    "SELECT EXISTS (SELECT FROM trades WHERE symbol = :symbol "
    "AND timestamp >= :lo AND timestamp < :hi)"
).bindparams(
    bindparam("symbol", type_=String), bindparam("lo", type_=_TS), bindparam("hi", type_=_TS)
)
# One staging table per transaction, emptied for each symbol of a file. Without `trades`'
# defaults: ids are drawn once, when the rows move.
_STAGE = text(
    "CREATE TEMPORARY TABLE IF NOT EXISTS import_staging ON COMMIT DROP AS "
    f"SELECT {', '.join(_COLUMNS)} FROM trades WITH NO DATA"
)
_EMPTY = text("TRUNCATE import_staging")
# New rows only, ids in the file's time order; RETURNING says which (what the minute check
# and the candles need).
_MOVE = text(
    f"""
    INSERT INTO trades ({", ".join(_COLUMNS)})
    SELECT {", ".join(_COLUMNS)} FROM import_staging
    ORDER BY timestamp, ctid
    ON CONFLICT DO NOTHING
    RETURNING id, timestamp
    """
)
# Minutes that held stored trades before this import and gain some from it.
_MINUTE_OF = bin_sql("INTERVAL '1 minute'", "t.timestamp")
_TAKEN = text(
    f"""
    SELECT DISTINCT {_MINUTE_OF}
    FROM trades AS t
    WHERE t.symbol = :symbol AND t.timestamp >= :lo AND t.timestamp <= :hi
      AND NOT t.id = ANY(:ids) AND {_MINUTE_OF} = ANY(:minutes)
    ORDER BY 1
    """
).bindparams(
    bindparam("symbol", type_=String),
    bindparam("lo", type_=_TS),
    bindparam("hi", type_=_TS),
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("minutes", type_=ARRAY(_TS)),
)


# A venue feed's symbol: up to where the feed has stored everything (before it knows, from
# where its current stretch began). persistence.feeds writes it.
_COMPLETE = text(
    "SELECT coalesce(complete_through, since) FROM feed_watermarks WHERE symbol = :symbol"
).bindparams(bindparam("symbol", type_=String))
# Large imports sort and hash in memory, for this transaction only.
_WORK_MEM = text("SET LOCAL work_mem = '256MB'")


class TooNew(ValueError):
    """A trade is newer than what the service holds complete (its final horizon)."""


class InDroppedMonths(ValueError):
    """Trades fall in months whose raw trades retention dropped (their candles are kept)."""

    def __init__(self, count: int, months: Sequence[datetime]) -> None:
        named = ", ".join(month.strftime("%Y-%m") for month in months)
        super().__init__(
            f"{count} trade(s) fall in {named}, whose trades TRADES_RETENTION dropped: the "
            "candles kept there cannot be recomputed from part of their trades; leave those "
            "trades out"
        )
        self.months = list(months)


class BucketsTaken(ValueError):
    """The import would change minutes that already held stored trades (without repair)."""

    def __init__(self, minutes: Sequence[datetime]) -> None:
        super().__init__(
            f"{len(minutes)} minute(s) already hold stored trades, first {minutes[0].isoformat()}"
        )
        self.minutes = list(minutes)


@dataclass(frozen=True, slots=True)
class Imported:
    stored: int
    skipped: int  # already stored (same venue trade id)
    # Minutes that held trades before and were changed (only with repair).
    repaired: list[datetime]


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def _refuse_dropped_months(
    conn: AsyncConnection, trades: pa.Table, oldest: datetime, newest: datetime
) -> None:
    """Raise InDroppedMonths when a trade falls in a month retention dropped (recreating its
    partition and recomputing its candles from these trades alone would overwrite them)."""
    held: list[datetime] = []
    count = 0
    stamps = trades["timestamp"]
    for month in await dropped_months(conn, oldest, newest):
        end = next_month(month)
        inside = pc.and_(
            pc.greater_equal(stamps, pa.scalar(month, stamps.type)),
            pc.less(stamps, pa.scalar(end, stamps.type)),
        )
        if found := pc.sum(inside).as_py():
            held.append(month)
            count += found
    if held:
        raise InDroppedMonths(count, held)


async def import_trades(
    conn: AsyncConnection, symbol: str, trades: pa.Table, *, repair: bool
) -> Imported:
    """Store the trades of `symbol` (a table of `_COLUMNS`, in time order) not stored yet and
    materialise the candles they touch, in the caller's transaction. Raises TooNew for a
    trade at or past the final horizon, InDroppedMonths for one in a month retention dropped,
    and BucketsTaken for new trades in a minute that held stored ones unless `repair`."""
    if trades.num_rows == 0:
        return Imported(0, 0, [])
    oldest, newest = (moment.as_py() for moment in pc.min_max(trades["timestamp"]).values())
    if newest >= await horizon(conn):
        raise TooNew(f"a trade at {newest.isoformat()} is newer than the live data's horizon")
    complete = (await conn.execute(_COMPLETE, {"symbol": symbol})).scalar_one_or_none()
    if complete is not None and newest > complete:
        raise TooNew(
            f"a trade at {newest.isoformat()} is newer than the live feed's complete-through "
            f"watermark of {symbol} ({complete.isoformat()}): the feed fills that itself"
        )
    await _refuse_dropped_months(conn, trades, oldest, newest)
    await lock_candles(conn, symbol)
    await ensure_partitions(conn, oldest, newest)
    await conn.execute(_WORK_MEM)
    stretch = {"symbol": symbol, "lo": _minute(oldest), "hi": _minute(newest) + _MINUTE}
    occupied = (await conn.execute(_OCCUPIED, stretch)).scalar_one()
    if not occupied:
        try:
            async with conn.begin_nested():
                await copy_table(conn, "trades", trades)
        except asyncpg.UniqueViolationError:
            pass  # the file names a venue trade twice: staged, it is stored once
        else:
            await rematerialise(conn, symbol, oldest, newest)
            return Imported(trades.num_rows, 0, [])
    await conn.execute(_STAGE)
    await conn.execute(_EMPTY)
    await copy_table(conn, "import_staging", trades)
    moved = (await conn.execute(_MOVE)).all()
    if not moved:
        return Imported(0, trades.num_rows, [])
    minutes = sorted({_minute(stamp) for _, stamp in moved})
    taken = list(
        (
            await conn.execute(
                _TAKEN,
                {
                    "symbol": symbol,
                    "lo": minutes[0],
                    "hi": newest,
                    "ids": [trade_id for trade_id, _ in moved],
                    "minutes": minutes,
                },
            )
        ).scalars()
    )
    if taken and not repair:
        raise BucketsTaken(taken)
    stamps = [stamp for _, stamp in moved]
    await rematerialise(conn, symbol, min(stamps), max(stamps))
    return Imported(len(moved), trades.num_rows - len(moved), taken)
