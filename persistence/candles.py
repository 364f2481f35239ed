"""OHLCV candles: aligned buckets aggregated from trades, upserted into `candles`, read back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Interval, String, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import DateTime

__all__ = [
    "EPOCH",
    "INTERVALS",
    "CandleRow",
    "bucket_ceil",
    "bucket_floor",
    "first_trade_at",
    "upsert_and_read",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INTERVALS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}


def bucket_floor(moment: datetime, step: timedelta) -> datetime:
    """Start of the bucket holding `moment`; buckets are aligned to UTC epoch multiples."""
    # In UTC: wall-clock arithmetic in a zone with DST would leave the bucket grid.
    moment = moment.astimezone(UTC)
    return moment - (moment - EPOCH) % step


def bucket_ceil(moment: datetime, step: timedelta) -> datetime:
    """Start of the first bucket that starts at or after `moment`."""
    floor = bucket_floor(moment, step)
    return floor if floor == moment else floor + step


class CandleRow(NamedTuple):
    timestamp: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    vwap: float
    trade_count: int


# Set-based: one pass over the window's trades (an index range on (symbol, timestamp, id)),
# grouped into epoch-aligned buckets. Rows go in bucket order, so concurrent requests for the
# same window lock candles in the same order and cannot deadlock; unchanged candles are not
# rewritten.
_upsert = text(
    """
    INSERT INTO candles AS c
        (symbol, interval, timestamp, open, high, low, close, volume, vwap, trade_count)
    SELECT :symbol, :interval, bucket,
           (array_agg(price ORDER BY timestamp, id))[1],
           max(price), min(price),
           (array_agg(price ORDER BY timestamp DESC, id DESC))[1],
           sum(volume), round(sum(price * volume) / sum(volume), 6), count(*)
    FROM (
        SELECT date_bin(:step, timestamp, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
               timestamp, id, price, volume
        FROM trades
        WHERE symbol = :symbol AND timestamp >= :lo AND timestamp < :hi
    ) AS t
    GROUP BY bucket
    ORDER BY bucket
    ON CONFLICT (symbol, interval, timestamp) DO UPDATE
    SET open = excluded.open, high = excluded.high, low = excluded.low,
        close = excluded.close, volume = excluded.volume, vwap = excluded.vwap,
        trade_count = excluded.trade_count
    WHERE (c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trade_count)
          IS DISTINCT FROM (excluded.open, excluded.high, excluded.low, excluded.close,
                            excluded.volume, excluded.vwap, excluded.trade_count)
    """
).bindparams(
    bindparam("symbol", type_=String),
    bindparam("interval", type_=String),
    bindparam("step", type_=Interval),
    bindparam("lo", type_=DateTime(timezone=True)),
    bindparam("hi", type_=DateTime(timezone=True)),
)

_read = text(
    """
    SELECT timestamp, open::float8, high::float8, low::float8, close::float8,
           volume, vwap::float8, trade_count
    FROM candles
    WHERE symbol = :symbol AND interval = :interval AND timestamp >= :lo AND timestamp < :hi
    ORDER BY timestamp
    """
).bindparams(
    bindparam("symbol", type_=String),
    bindparam("interval", type_=String),
    bindparam("lo", type_=DateTime(timezone=True)),
    bindparam("hi", type_=DateTime(timezone=True)),
)

_first_trade = text(
    """
    SELECT timestamp FROM trades
    WHERE symbol = :symbol AND timestamp >= :lo AND timestamp < :hi
    ORDER BY timestamp, id
    LIMIT 1
    """
).bindparams(
    bindparam("symbol", type_=String),
    bindparam("lo", type_=DateTime(timezone=True)),
    bindparam("hi", type_=DateTime(timezone=True)),
)


async def first_trade_at(
    conn: AsyncConnection, symbol: str, lo: datetime, hi: datetime
) -> datetime | None:
    """Time of the first trade in [lo, hi): lets a page skip a stretch without trades."""
    value = (await conn.execute(_first_trade, {"symbol": symbol, "lo": lo, "hi": hi})).scalar()
    return value if isinstance(value, datetime) else None


async def upsert_and_read(
    conn: AsyncConnection, *, symbol: str, interval: str, lo: datetime, hi: datetime
) -> Sequence[CandleRow]:
    """Aggregate the buckets starting in [lo, hi) (both bucket-aligned), persist, read back."""
    step = INTERVALS[interval]
    await conn.execute(
        _upsert, {"symbol": symbol, "interval": interval, "step": step, "lo": lo, "hi": hi}
    )
    result = await conn.execute(_read, {"symbol": symbol, "interval": interval, "lo": lo, "hi": hi})
    return [CandleRow(*row) for row in result]
