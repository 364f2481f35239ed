"""Candles on the write path: final buckets aggregated once, and the watermark that says so.

Two writers, serialised per symbol by a transaction-level advisory lock:
- the ingestion leader advances the watermark (`advance_watermark`): minutes that became final
  are aggregated from trades for every symbol, and every longer bucket that ended with them is
  rolled up from 1m candles, in one transaction with the watermark's move;
- `mdp backfill` writes history below the oldest trade and recomputes, in the transaction of
  each chunk, every candle whose bucket holds one of its trades (`rematerialise`).
Either way a bucket below the watermark is in `candles` exactly when it has trades (see
`persistence.finality`). Recomputations replace rows: a bucket only ever gains trades. A row
that changes once its bucket is below the watermark (a late print, a backfill into it) counts
one more `revision`, in the transaction that changes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Interval, String, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from persistence.candles import MINUTES_FROM_TRADES, ROLL_UP
from persistence.finality import (
    BASE,
    INTERVALS,
    MATERIALISE_HORIZON_SQL,
    WATERMARK_SQL,
    bin_sql,
    bucket_floor,
)
from persistence.models import VWAP_SCALE
from persistence.statements import TIMESTAMP, statement

__all__ = ["Advance", "advance_watermark", "lock_candles", "rematerialise"]

_MINUTE = INTERVALS[BASE]

_UPSERT = f"""
    INSERT INTO candles AS c (symbol, interval, timestamp, open, high, low, close, volume,
                              notional, vwap, trade_count)
    SELECT symbol, :interval, timestamp, open, high, low, close, volume, notional,
           round(notional / volume, {VWAP_SCALE}), trade_count
    FROM ({{source}}) AS a
    ORDER BY symbol, timestamp
    ON CONFLICT (symbol, interval, timestamp) DO UPDATE
    SET open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
        volume = excluded.volume, notional = excluded.notional, vwap = excluded.vwap,
        trade_count = excluded.trade_count,
        -- A bucket that ended below the watermark was served final: changing it is a
        -- revision. Above it the row is a partial roll-up nobody reads yet (a late minute's
        -- longer bucket), which the leader completes later: still the first version.
        revision = c.revision
                   + CASE WHEN c.timestamp + :step <= {WATERMARK_SQL} THEN 1 ELSE 0 END
    -- A re-materialised final bucket is unchanged: leave its row (and the WAL) alone.
    WHERE (c.volume, c.trade_count, c.notional, c.open, c.close)
          IS DISTINCT FROM (excluded.volume, excluded.trade_count, excluded.notional,
                            excluded.open, excluded.close)
"""
# The parameters of both upserts.
_UPSERT_TYPES: dict[str, TypeEngine[Any]] = {
    "symbols": ARRAY(String),
    "interval": String(),
    "step": Interval(),
    "lo": TIMESTAMP,
    "hi": TIMESTAMP,
}
_upsert_minutes = statement(
    _UPSERT.format(
        source=MINUTES_FROM_TRADES.format(
            source="trades AS t",
            where="t.symbol = ANY(:symbols) AND t.timestamp >= :lo AND t.timestamp < :hi",
        )
    ),
    **_UPSERT_TYPES,
)
_upsert_rollup = statement(
    _UPSERT.format(
        source=ROLL_UP.format(
            minutes="""
                SELECT symbol, timestamp, open, high, low, close, volume, notional, trade_count
                FROM candles
                WHERE symbol = ANY(:symbols) AND interval = '1m'
                  AND timestamp >= :lo AND timestamp < :hi
            """
        )
    ),
    **_UPSERT_TYPES,
)

_lock_symbol = statement(
    "SELECT pg_advisory_xact_lock(hashtext('mdp.candles'), hashtext(:symbol))", symbol=String
)
# All or nothing: the leader never waits behind a backfill chunk (its cadence matters more).
_try_lock_all = text(
    """
    SELECT array_agg(symbol ORDER BY symbol),
           coalesce(bool_and(pg_try_advisory_xact_lock(hashtext('mdp.candles'), hashtext(symbol))),
                    true)
    FROM (SELECT symbol FROM symbols ORDER BY symbol) AS s
    """
)
# Where the watermark starts the first time a writer needs it: at the oldest trade of any
# symbol (nothing before it to materialise), at the horizon without trades. Never later than
# the horizon: the watermark only ever covers final buckets. Once set, the WHERE matches no
# row and locks none (live batches update this row every cycle).
_HORIZON_MINUTE = bin_sql("INTERVAL '1 minute'", MATERIALISE_HORIZON_SQL)
_initialise = text(
    f"""
    UPDATE ingestion_state SET candles_until = least(
        {_HORIZON_MINUTE},
        (SELECT {bin_sql("INTERVAL '1 minute'", "min(o.timestamp)")}
         FROM symbols AS s, LATERAL (
             SELECT timestamp FROM trades WHERE symbol = s.symbol ORDER BY timestamp LIMIT 1
         ) AS o)
    )
    WHERE id = 1 AND candles_until IS NULL
    """
)
_state = text(f"SELECT candles_until, {_HORIZON_MINUTE} FROM ingestion_state WHERE id = 1")
_move = statement("UPDATE ingestion_state SET candles_until = :until WHERE id = 1", until=TIMESTAMP)
# A chunk's (or a catch-up step's) trades sort by minute in memory, not in temporary files:
# about a fifth off materialising a 50,000-row backfill chunk. For this transaction only.
_sort_in_memory = text("SET LOCAL work_mem = '64MB'")


async def lock_candles(conn: AsyncConnection, symbol: str) -> None:
    """Hold the symbol's candle lock until the transaction ends."""
    await _lock_symbol.execute(conn, symbol=symbol)


async def _upsert(
    conn: AsyncConnection, symbols: Sequence[str], interval: str, lo: datetime, hi: datetime
) -> None:
    """Compute and store the `interval` buckets of `symbols` starting in [lo, hi) (aligned)."""
    if lo >= hi:
        return
    # Roll-ups read the minutes: callers store those first.
    upsert = _upsert_minutes if interval == BASE else _upsert_rollup
    await upsert.execute(
        conn, symbols=list(symbols), interval=interval, step=INTERVALS[interval], lo=lo, hi=hi
    )


async def _watermark(conn: AsyncConnection) -> tuple[datetime, datetime] | None:
    """(watermark, horizon's minute), initialising the watermark on first use; None without
    the ingestion state row."""
    await conn.execute(_initialise)
    row = (await conn.execute(_state)).first()
    return (row[0], row[1]) if row is not None else None


class Advance(NamedTuple):
    before: datetime
    after: datetime
    # The watermark reached the final horizon: nothing is left to catch up.
    caught_up: bool


async def advance_watermark(
    conn: AsyncConnection, *, span: timedelta, until: datetime | None = None
) -> Advance | None:
    """Materialise the oldest not yet materialised final minutes, at most `span` of them (and
    none from `until` on), with the longer buckets they complete, and move the watermark past
    them. Run it in a transaction of its own. None when a backfill holds a symbol's candle
    lock (try again later) or the ingestion state is missing."""
    symbols, locked = (await conn.execute(_try_lock_all)).one()
    if not locked:
        return None
    state = await _watermark(conn)
    if state is None:
        return None
    before, final = state
    after = bucket_floor(min(final, before + span, until or final), _MINUTE)
    if after <= before:
        return Advance(before, before, before >= final)
    symbols = symbols or []
    await conn.execute(_sort_in_memory)
    for interval, step in INTERVALS.items():
        # Minutes first; then every longer bucket that ended within (before, after].
        lo, hi = bucket_floor(before, step), bucket_floor(after, step)
        await _upsert(conn, symbols, interval, lo, hi)
    await _move.execute(conn, until=after)
    return Advance(before, after, after >= final)


async def rematerialise(
    conn: AsyncConnection, symbol: str, oldest: datetime, newest: datetime
) -> None:
    """Recompute every candle of `symbol` whose bucket holds a time in [oldest, newest], in the
    caller's transaction: the one that wrote the trades, holding `lock_candles(symbol)` from
    before it wrote them (so the leader cannot roll up a bucket from a snapshot without them)."""
    # Start the watermark (if nothing did yet) at the oldest trade, these ones included: they
    # are materialised here, so the leader has nothing of them to catch up.
    await conn.execute(_initialise)
    await conn.execute(_sort_in_memory)
    for interval, step in INTERVALS.items():
        await _upsert(
            conn, [symbol], interval, bucket_floor(oldest, step), bucket_floor(newest, step) + step
        )
