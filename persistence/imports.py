"""Trades imported from files: binary COPY into a staging table, then into `trades` once each.

COPY cannot skip a conflict, so the rows land in a temporary table first and move into
`trades` with INSERT ... ON CONFLICT DO NOTHING (one venue trade is stored once). Their
candles are materialised in the same transaction, by the write path's own code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.finality import bin_sql, horizon
from persistence.materialise import lock_candles, rematerialise
from persistence.partitions import ensure_partitions
from persistence.trades import VenueTrade

__all__ = ["BucketsTaken", "Imported", "TooNew", "import_trades"]

_COLUMNS = ("symbol", "price", "volume", "timestamp", "venue_trade_id", "side")
# One staging table per transaction, emptied for each symbol of a file.
_STAGE = text(
    "CREATE TEMPORARY TABLE IF NOT EXISTS import_staging "
    "(LIKE trades INCLUDING DEFAULTS) ON COMMIT DROP"
)
_EMPTY = text("TRUNCATE import_staging")
# New rows only; RETURNING says which (what the minute check and the candles need).
_MOVE = text(
    """
    INSERT INTO trades (symbol, price, volume, timestamp, venue_trade_id, side)
    SELECT symbol, price, volume, timestamp, venue_trade_id, side FROM import_staging
    ORDER BY timestamp, id
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
    bindparam("lo", type_=DateTime(timezone=True)),
    bindparam("hi", type_=DateTime(timezone=True)),
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("minutes", type_=ARRAY(DateTime(timezone=True))),
)


# A venue feed's symbol: up to where the feed has stored everything (before it knows, from
# where its current stretch began). persistence.feeds writes it.
_COMPLETE = text(
    "SELECT coalesce(complete_through, since) FROM feed_watermarks WHERE symbol = :symbol"
).bindparams(bindparam("symbol", type_=String))


class TooNew(ValueError):
    """A trade is newer than what the service holds complete (its final horizon)."""


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


async def import_trades(
    conn: AsyncConnection, symbol: str, trades: Sequence[VenueTrade], *, repair: bool
) -> Imported:
    """Store `trades` of `symbol` not stored yet and materialise the candles they touch, in
    the caller's transaction. Raises TooNew for a trade at or past the final horizon, and
    BucketsTaken for new trades in a minute that held stored ones unless `repair`."""
    if not trades:
        return Imported(0, 0, [])
    newest = max(trade.timestamp for trade in trades)
    if newest >= await horizon(conn):
        raise TooNew(f"a trade at {newest.isoformat()} is newer than the live data's horizon")
    complete = (await conn.execute(_COMPLETE, {"symbol": symbol})).scalar_one_or_none()
    if complete is not None and newest > complete:
        raise TooNew(
            f"a trade at {newest.isoformat()} is newer than the live feed's complete-through "
            f"watermark of {symbol} ({complete.isoformat()}): the feed fills that itself"
        )
    oldest = min(trade.timestamp for trade in trades)
    await lock_candles(conn, symbol)
    await ensure_partitions(conn, oldest, newest)
    await conn.execute(_STAGE)
    await conn.execute(_EMPTY)
    raw = await conn.get_raw_connection()
    await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
        "import_staging", records=trades, columns=_COLUMNS
    )
    moved = (await conn.execute(_MOVE)).all()
    if not moved:
        return Imported(0, len(trades), [])
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
    return Imported(len(moved), len(trades) - len(moved), taken)
