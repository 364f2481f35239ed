"""OHLCV candles, incremental: closed buckets are aggregated once, persisted, then only read.

Model (the seed's, made incremental):
- 1m candles are aggregated from trades; longer intervals roll up from 1m candles.
- A bucket is final ("closed") once it ended more than the trades' visibility deadline ago: no
  trade can arrive in it any more. Final buckets are upserted into `candles` once, and
  `candle_coverage` records which ranges of final buckets have been computed (a bucket without
  trades has no row, so coverage is what says "computed, empty").
- The bucket still open is computed live on every request and never persisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Interval, String, TextClause, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import DateTime

from persistence.trades import VISIBILITY_DEADLINE

__all__ = [
    "EPOCH",
    "INTERVALS",
    "CandleRow",
    "bucket_ceil",
    "bucket_floor",
    "first_trade_at",
    "final_before",
    "invalidate_candles",
    "lock_candles",
    "read_candles",
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
BASE = "1m"
_MINUTES_PER_STATEMENT = timedelta(days=1)


def bucket_floor(moment: datetime, step: timedelta) -> datetime:
    """Start of the bucket holding `moment`; buckets are aligned to UTC epoch multiples."""
    # In UTC: wall-clock arithmetic in a zone with DST would leave the bucket grid.
    moment = moment.astimezone(UTC)
    return moment - (moment - EPOCH) % step


def bucket_ceil(moment: datetime, step: timedelta) -> datetime:
    """Start of the first bucket that starts at or after `moment`."""
    floor = bucket_floor(moment, step)
    return floor if floor == moment else floor + step


def final_before(now: datetime, step: timedelta) -> datetime:
    """Buckets starting before this are final: they ended more than the deadline ago."""
    return bucket_floor(now - VISIBILITY_DEADLINE, step)


class CandleRow(NamedTuple):
    timestamp: datetime
    # float8 on the way out: PostgreSQL prints the shortest exact form of the stored numeric.
    open: float
    high: float
    low: float
    close: float
    volume: int
    vwap: float
    trade_count: int


_TS = DateTime(timezone=True)


def _params(statement: str, *names: str) -> TextClause:
    types = {"symbol": String, "interval": String, "step": Interval}
    return text(statement).bindparams(
        *(bindparam(name, type_=types.get(name, _TS)) for name in names)
    )


# 1m buckets from trades: one pass over an index range of (symbol, timestamp, id) INCLUDE
# (price, volume). open/close are the first/last trade by (timestamp, id). `notional` keeps
# Σ price × volume exactly, so rolled-up vwaps equal the ones computed from trades.
_AGGREGATE_TRADES = """
    SELECT date_bin(INTERVAL '1 minute', timestamp, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           (array_agg(price ORDER BY timestamp, id))[1] AS open,
           max(price) AS high, min(price) AS low,
           (array_agg(price ORDER BY timestamp DESC, id DESC))[1] AS close,
           sum(volume)::bigint AS volume, sum(price * volume) AS notional,
           count(*)::integer AS trade_count
    FROM trades
    WHERE symbol = :symbol AND timestamp >= {lo} AND timestamp < {hi}
    GROUP BY bucket
"""

# Longer buckets from 1m candles (persisted final ones, plus live ones for the open tail).
_ROLL_UP = """
    SELECT date_bin(:step, timestamp, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           (array_agg(open ORDER BY timestamp))[1] AS open,
           max(high) AS high, min(low) AS low,
           (array_agg(close ORDER BY timestamp DESC))[1] AS close,
           sum(volume)::bigint AS volume, sum(notional) AS notional,
           sum(trade_count)::integer AS trade_count
    FROM ({minutes}) AS m
    GROUP BY bucket
"""

_PERSISTED_MINUTES = """
    SELECT timestamp, open, high, low, close, volume, notional, trade_count
    FROM candles
    WHERE symbol = :symbol AND interval = '1m' AND timestamp >= {lo} AND timestamp < {hi}
"""

_INSERT = """
    INSERT INTO candles AS c (symbol, interval, timestamp, open, high, low, close, volume,
                              notional, vwap, trade_count)
    SELECT :symbol, :interval, bucket, open, high, low, close, volume, notional,
           round(notional / volume, 6), trade_count
    FROM ({source}) AS a
    ORDER BY bucket
    -- Final buckets never change, so a concurrent request wrote the same values: keep them.
    ON CONFLICT (symbol, interval, timestamp) DO NOTHING
"""

_persist_minutes = _params(
    _INSERT.format(source=_AGGREGATE_TRADES.format(lo=":lo", hi=":hi")),
    "symbol",
    "interval",
    "lo",
    "hi",
)
_persist_rollup = _params(
    _INSERT.format(source=_ROLL_UP.format(minutes=_PERSISTED_MINUTES.format(lo=":lo", hi=":hi"))),
    "symbol",
    "interval",
    "step",
    "lo",
    "hi",
)

# The gaps of [lo, hi) that no earlier request computed, as ordered ranges.
_missing = _params(
    """
    SELECT lower(gap), upper(gap)
    FROM unnest(
        tstzmultirange(tstzrange(:lo, :hi))
        - coalesce(
            (SELECT covered FROM candle_coverage WHERE symbol = :symbol AND interval = :interval),
            '{}'::tstzmultirange
        )
    ) AS gap
    ORDER BY 1
    """,
    "symbol",
    "interval",
    "lo",
    "hi",
)

_cover = _params(
    """
    INSERT INTO candle_coverage AS c (symbol, interval, covered)
    VALUES (:symbol, :interval, tstzmultirange(tstzrange(:lo, :hi)))
    ON CONFLICT (symbol, interval) DO UPDATE SET covered = c.covered + excluded.covered
    """,
    "symbol",
    "interval",
    "lo",
    "hi",
)

_lock = _params("SELECT pg_advisory_lock(hashtext('mdp.candles'), hashtext(:symbol))", "symbol")
_unlock = _params("SELECT pg_advisory_unlock(hashtext('mdp.candles'), hashtext(:symbol))", "symbol")

# Whether every final bucket the request needs was computed before (an empty range is).
_COVERED = """
    SELECT coalesce(
        (SELECT covered @> tstzrange(:lo, :final)
         FROM candle_coverage WHERE symbol = :symbol AND interval = :interval),
        :lo >= :final
    ) AND coalesce(
        (SELECT covered @> tstzrange(:minutes_lo, :minutes_hi)
         FROM candle_coverage WHERE symbol = :symbol AND interval = '1m'),
        :minutes_lo >= :minutes_hi
    ) AS covered
"""
_SELECT_FINAL = """
    SELECT timestamp, open::float8, high::float8, low::float8, close::float8, volume,
           vwap::float8, trade_count
    FROM candles
    WHERE symbol = :symbol AND interval = :interval AND timestamp >= :lo AND timestamp < :final
"""
_SELECT_LIVE = """
    SELECT bucket, open::float8, high::float8, low::float8, close::float8, volume,
           round(notional / volume, 6)::float8, trade_count
    FROM ({source}) AS live
"""
# One statement, one snapshot: the coverage flag (on every row, or on a lone row of NULLs when
# there are no candles) and the candles, final rows plus the live open bucket. A snapshot can
# never see candles that a concurrent backfill has just invalidated but not the invalidation.
_READ = """
    WITH coverage AS ({covered}), candle AS ({final} UNION ALL {live})
    SELECT coverage.covered, candle.*
    FROM coverage LEFT JOIN candle ON true
    ORDER BY candle.timestamp
"""
_COMMON = ("symbol", "interval", "lo", "final", "minutes_lo", "minutes_hi", "open_lo", "hi")
_read_minutes = _params(
    _READ.format(
        covered=_COVERED,
        final=_SELECT_FINAL,
        live=_SELECT_LIVE.format(source=_AGGREGATE_TRADES.format(lo=":open_lo", hi=":hi")),
    ),
    *_COMMON,
)
_read_rollup = _params(
    _READ.format(
        covered=_COVERED,
        final=_SELECT_FINAL,
        live=_SELECT_LIVE.format(
            source=_ROLL_UP.format(
                minutes=_PERSISTED_MINUTES.format(lo=":open_lo", hi=":minutes_hi")
                + " UNION ALL "
                + _AGGREGATE_TRADES.format(lo=":minutes_hi", hi=":hi")
            )
        ),
    ),
    *_COMMON,
    "step",
)

_first_trade = _params(
    """
    SELECT timestamp FROM trades
    WHERE symbol = :symbol AND timestamp >= :lo AND timestamp < :hi
    ORDER BY timestamp, id
    LIMIT 1
    """,
    "symbol",
    "lo",
    "hi",
)


# Backfill writes trades into buckets computed before (perhaps as "no trades"): forget every
# candle whose bucket may hold them. Day-aligned covers every interval's buckets.
_forget_coverage = _params(
    """
    UPDATE candle_coverage
    SET covered = covered - tstzmultirange(tstzrange(
        date_bin(INTERVAL '1 day', :lo, TIMESTAMPTZ '1970-01-01 00:00:00+00'),
        date_bin(INTERVAL '1 day', :hi, TIMESTAMPTZ '1970-01-01 00:00:00+00') + INTERVAL '1 day'
    ))
    WHERE symbol = :symbol
    """,
    "symbol",
    "lo",
    "hi",
)
_forget_candles = _params(
    """
    DELETE FROM candles
    WHERE symbol = :symbol
      AND timestamp >= date_bin(INTERVAL '1 day', :lo, TIMESTAMPTZ '1970-01-01 00:00:00+00')
      AND timestamp < date_bin(INTERVAL '1 day', :hi, TIMESTAMPTZ '1970-01-01 00:00:00+00')
                      + INTERVAL '1 day'
    """,
    "symbol",
    "lo",
    "hi",
)
_lock_transaction = _params(
    "SELECT pg_advisory_xact_lock(hashtext('mdp.candles'), hashtext(:symbol))", "symbol"
)


async def lock_candles(conn: AsyncConnection, symbol: str) -> None:
    """Hold the symbol's candle lock until the transaction ends (writers of trades in the past)."""
    await conn.execute(_lock_transaction, {"symbol": symbol})


async def invalidate_candles(
    conn: AsyncConnection, symbol: str, lo: datetime, hi: datetime
) -> None:
    """Forget computed candles whose buckets may contain times in [lo, hi]."""
    params = {"symbol": symbol, "lo": lo, "hi": hi}
    await conn.execute(_forget_coverage, params)
    await conn.execute(_forget_candles, params)


async def first_trade_at(
    conn: AsyncConnection, symbol: str, lo: datetime, hi: datetime
) -> datetime | None:
    """Time of the first trade in [lo, hi): lets a page skip a stretch without trades."""
    value = (await conn.execute(_first_trade, {"symbol": symbol, "lo": lo, "hi": hi})).scalar()
    return value if isinstance(value, datetime) else None


def _clamp(moment: datetime, lo: datetime, hi: datetime) -> datetime:
    return min(max(moment, lo), hi)


async def _gaps(
    conn: AsyncConnection, symbol: str, interval: str, lo: datetime, hi: datetime
) -> list[tuple[datetime, datetime]]:
    if lo >= hi:
        return []
    result = await conn.execute(
        _missing, {"symbol": symbol, "interval": interval, "lo": lo, "hi": hi}
    )
    return [(start, end) for start, end in result]


async def _finalise(
    conn: AsyncConnection, symbol: str, interval: str, lo: datetime, hi: datetime
) -> None:
    """Persist every final bucket in [lo, hi) not computed before, then record the coverage.

    Candles are written before the coverage that vouches for them, each in its own statement:
    an interruption leaves at worst candles without coverage, which the next request redoes.
    """
    for start, end in await _gaps(conn, symbol, interval, lo, hi):
        if interval == BASE:
            # A day of trades per statement: the first request over a long history stays
            # within the statement timeout, and what it finished is kept if it is cut short.
            piece = start
            while piece < end:
                upto = min(end, piece + _MINUTES_PER_STATEMENT)
                params = {"symbol": symbol, "interval": interval, "lo": piece, "hi": upto}
                await conn.execute(_persist_minutes, params)
                await conn.execute(_cover, params)
                piece = upto
            continue
        # Roll-ups need their minutes first (same bounds: both are bucket-aligned).
        await _finalise(conn, symbol, BASE, start, end)
        params = {"symbol": symbol, "interval": interval, "lo": start, "hi": end}
        await conn.execute(_persist_rollup, {**params, "step": INTERVALS[interval]})
        await conn.execute(_cover, params)


async def read_candles(
    conn: AsyncConnection,
    *,
    symbol: str,
    interval: str,
    lo: datetime,
    hi: datetime,
    now: datetime,
) -> Sequence[CandleRow]:
    """Candles whose buckets start in [lo, hi) (both aligned to `interval`), ascending.

    Steady state: one read-only statement (final rows plus the live open bucket, and whether
    every final bucket was computed before). Final buckets nobody computed yet are computed
    then, once, under a per-symbol lock, and the statement runs again.
    """
    step = INTERVALS[interval]
    final = _clamp(final_before(now, step), lo, hi)
    # Longer open buckets roll up final minutes (persisted) and live minutes (from trades).
    minutes_final = _clamp(final_before(now, INTERVALS[BASE]), final, hi)
    params: dict[str, object] = {
        "symbol": symbol,
        "interval": interval,
        "lo": lo,
        "final": final,
        "open_lo": final,
        "hi": hi,
        # For 1m itself there is no minute range to check: an empty one.
        "minutes_lo": final if interval != BASE else lo,
        "minutes_hi": minutes_final if interval != BASE else lo,
    }
    statement = _read_minutes
    if interval != BASE:
        params["step"] = step
        statement = _read_rollup
    rows = (await conn.execute(statement, params)).all()
    if not rows[0][0]:
        key = {"symbol": symbol}
        # One writer per symbol: no duplicated work and no lock-order deadlocks. Session-level,
        # since reads run in autocommit; released below, or by the session's end on failure.
        await conn.execute(_lock, key)
        try:
            await _finalise(conn, symbol, interval, lo, final)
            if interval != BASE:
                await _finalise(conn, symbol, BASE, final, minutes_final)
        except BaseException:
            # A failed statement (a timeout, say) leaves the connection unable to unlock, and
            # an unlock error would hide the real one. Ending the session frees the lock.
            await conn.invalidate()
            raise
        await conn.execute(_unlock, key)
        rows = (await conn.execute(statement, params)).all()
    return [CandleRow(*row[1:]) for row in rows if row[1] is not None]
