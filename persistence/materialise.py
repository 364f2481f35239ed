"""Candles on the write path: final buckets aggregated once, and the watermarks that say so.

Two writers, serialised per symbol by a transaction-level advisory lock:
- the ingestion leader advances each symbol's watermark (`advance_watermark`): minutes that
  became final for the symbol are aggregated from its trades, and every longer bucket that
  ended with them is rolled up from 1m candles, in one transaction with the watermarks' moves.
  Each symbol follows its own horizon: a quiet or down feed holds back only its own candles;
- `mdp backfill` writes history below the oldest trade and recomputes, in the transaction of
  each chunk, every candle whose bucket holds one of its trades (`rematerialise`).
Either way a bucket below its symbol's watermark is in `candles` exactly when it has trades
(see `persistence.finality`). Recomputations replace rows: a bucket only ever gains trades. A
row that changes once its bucket is below the watermark (a late print, a backfill into it)
counts one more `revision`, in the transaction that changes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Interval, String, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from persistence.candles import MINUTES_FROM_TRADES, ROLL_UP, vwap_sql
from persistence.finality import (
    BASE,
    INTERVALS,
    bin_sql,
    bucket_floor,
    materialised_sql,
    symbol_horizon_sql,
)
from persistence.statements import TIMESTAMP, statement

__all__ = [
    "Advance",
    "advance_watermark",
    "lock_candles",
    "materialise_final",
    "rematerialise",
    "try_lock_candles",
]

_MINUTE = INTERVALS[BASE]

_UPSERT = f"""
    INSERT INTO candles AS c (symbol, interval, timestamp, open, high, low, close, volume,
                              notional, vwap, trade_count)
    SELECT symbol, :interval, timestamp, open, high, low, close, volume, notional,
           {vwap_sql("notional", "volume")}, trade_count
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
                   + CASE WHEN c.timestamp + :step <= {materialised_sql("c.symbol")}
                          THEN 1 ELSE 0 END
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


# A symbol's candle lock (transaction-level), the key of every writer of its candles.
def _candle_lock(symbol: str) -> str:
    return f"hashtext('mdp.candles'), hashtext({symbol})"


_lock_symbol = statement(f"SELECT pg_advisory_xact_lock({_candle_lock(':symbol')})", symbol=String)
# The symbols whose lock another transaction holds; this one holds the others' from then on.
_try_lock_symbols = statement(
    f"""
    SELECT symbol FROM unnest(CAST(:symbols AS varchar[])) AS s(symbol)
    WHERE NOT pg_try_advisory_xact_lock({_candle_lock("symbol")})
    """,
    symbols=ARRAY(String),
)
# All or nothing: the leader never waits behind a backfill chunk (its cadence matters more).
_try_lock_all = text(
    f"""
    SELECT array_agg(symbol ORDER BY symbol),
           coalesce(bool_and(pg_try_advisory_xact_lock({_candle_lock("symbol")})), true)
    FROM (SELECT symbol FROM symbols ORDER BY symbol) AS s
    """
)
# Where a symbol's watermark starts the first time a writer needs it: at its oldest trade
# (nothing before it to materialise), at its horizon without trades. Never later than its
# horizon: a watermark only ever covers final buckets.
_initialise = statement(
    f"""
    INSERT INTO candle_watermarks (symbol, candles_until)
    SELECT sy.symbol, least(
        {bin_sql("INTERVAL '1 minute'", symbol_horizon_sql("sy.symbol"))},
        (SELECT {bin_sql("INTERVAL '1 minute'", "timestamp")} FROM trades
         WHERE symbol = sy.symbol ORDER BY timestamp LIMIT 1)
    )
    FROM symbols AS sy
    WHERE sy.symbol = ANY(:symbols)
      AND NOT EXISTS (SELECT FROM candle_watermarks AS cw WHERE cw.symbol = sy.symbol)
    ON CONFLICT (symbol) DO NOTHING
    """,
    symbols=ARRAY(String),
)
# Each symbol's watermark and the start of the minute its horizon is in (final up to there).
_state = statement(
    f"""
    SELECT cw.symbol, cw.candles_until,
           {bin_sql("INTERVAL '1 minute'", symbol_horizon_sql("cw.symbol"))}
    FROM candle_watermarks AS cw
    WHERE cw.symbol = ANY(:symbols)
    ORDER BY cw.symbol
    """,
    symbols=ARRAY(String),
)
_move = statement(
    """
    UPDATE candle_watermarks AS cw SET candles_until = m.until
    FROM unnest(CAST(:symbols AS varchar[]), CAST(:untils AS timestamptz[])) AS m(symbol, until)
    WHERE cw.symbol = m.symbol
    """,
    symbols=ARRAY(String),
    untils=ARRAY(TIMESTAMP),
)
# A chunk's (or a catch-up step's) trades sort by minute in memory, not in temporary files:
# about a fifth off materialising a backfill chunk (measured at 50,000 rows). For this
# transaction only.
_sort_in_memory = text("SET LOCAL work_mem = '64MB'")


async def lock_candles(conn: AsyncConnection, symbol: str) -> None:
    """Hold the symbol's candle lock until the transaction ends."""
    await _lock_symbol.execute(conn, symbol=symbol)


async def try_lock_candles(conn: AsyncConnection, symbols: Sequence[str]) -> set[str]:
    """Take the candle locks of `symbols` that no other transaction holds, until this one
    ends, without waiting; returns the symbols whose lock another transaction holds (a
    backfill chunk, an import: for as long as it runs)."""
    return {row[0] for row in await _try_lock_symbols.fetch(conn, symbols=list(symbols))}


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


class Advance(NamedTuple):
    # Every symbol's candles were materialised up to `before` and now are up to `after`.
    before: datetime
    after: datetime
    # Every symbol's watermark reached its final horizon: nothing is left to catch up.
    caught_up: bool
    # The most any symbol's watermark moved in this step.
    moved: timedelta


async def advance_watermark(
    conn: AsyncConnection,
    *,
    span: timedelta,
    until: datetime | None = None,
    deadline: float | None = None,
) -> Advance | None:
    """For every symbol, materialise its oldest not yet materialised final minutes, at most
    `span` of them (and none from `until` on), with the longer buckets they complete, and
    move its watermark past them. Run it in a transaction of its own. None when a backfill
    holds a symbol's candle lock (try again later) or there is no symbol.

    With a `deadline` (`time.monotonic()`), symbols are materialised one at a time and the
    step ends with the first one done past it: the others' watermarks stay, for the next
    step. A busy feed's minute (20 symbols of 60,000 trades each) took 1.8 s in one go,
    holding back the leader's next batch as long."""
    symbols, locked = (await conn.execute(_try_lock_all)).one()
    if not locked or not symbols:
        return None
    await _initialise.execute(conn, symbols=symbols)
    rows = await _state.fetch(conn, symbols=symbols)
    # Symbols that move by the same steps are materialised together: with the clock's
    # horizon (the synthetic walk) or feeds in step, that is all of them at once.
    moves: dict[tuple[datetime, datetime], list[str]] = {}
    afters: dict[str, datetime] = {}
    caught_up = True
    for symbol, before, final in rows:
        after = afters[symbol] = max(
            before, bucket_floor(min(final, before + span, until or final), _MINUTE)
        )
        caught_up = caught_up and after >= final
        if after > before:
            moves.setdefault((before, after), []).append(symbol)
    done = await _materialise(conn, moves, afters, deadline=deadline)
    left = [symbol for group in moves.values() for symbol in group if symbol not in done]
    for symbol, before, _ in rows:
        if symbol in left:
            afters[symbol] = before
    return Advance(
        min(before for _, before, _ in rows),
        min(afters.values()),
        caught_up and not left,
        max(
            (after - before for (before, after), group in moves.items() if done & set(group)),
            default=timedelta(0),
        ),
    )


async def _materialise(
    conn: AsyncConnection,
    moves: dict[tuple[datetime, datetime], list[str]],
    afters: dict[str, datetime],
    *,
    deadline: float | None = None,
) -> set[str]:
    """Materialise each group of symbols from `before` to `after` (its key) and move their
    watermarks there; returns the symbols done. With a `deadline`, a symbol at a time, until
    the first one done past it."""
    if not moves:
        return set()
    await conn.execute(_sort_in_memory)
    moved: list[str] = []
    for (before, after), group in moves.items():
        chunks = [group] if deadline is None else [[symbol] for symbol in group]
        done: list[str] = []
        for chunk in chunks:
            await _upsert(conn, chunk, BASE, bucket_floor(before, _MINUTE), after)
            done.extend(chunk)
            if deadline is not None and time.monotonic() >= deadline:
                break
        for interval, step in INTERVALS.items():
            # Then every longer bucket that ended within (before, after], from the minutes.
            if interval != BASE:
                await _upsert(
                    conn, done, interval, bucket_floor(before, step), bucket_floor(after, step)
                )
        moved.extend(done)
        if len(done) < len(group):
            break
    await _move.execute(conn, symbols=moved, untils=[afters[s] for s in moved])
    return set(moved)


async def materialise_final(conn: AsyncConnection, symbol: str) -> datetime:
    """Materialise every final bucket of `symbol` not materialised yet, as the leader's step
    would, in the caller's transaction (which holds `lock_candles(symbol)`); returns its
    watermark. Before a late print is stored: the candles clients already read as closed
    (aggregated from trades) are stored as they were, so the print revises them."""
    await _initialise.execute(conn, symbols=[symbol])
    ((_, before, final),) = await _state.fetch(conn, symbols=[symbol])
    assert isinstance(before, datetime) and isinstance(final, datetime)
    if final <= before:
        return before
    await _materialise(conn, {(before, final): [symbol]}, {symbol: final})
    return final


async def rematerialise(
    conn: AsyncConnection, symbol: str, oldest: datetime, newest: datetime
) -> None:
    """Recompute every candle of `symbol` whose bucket holds a time in [oldest, newest], in the
    caller's transaction: the one that wrote the trades, holding `lock_candles(symbol)` from
    before it wrote them (so the leader cannot roll up a bucket from a snapshot without them)."""
    # Start the symbol's watermark (if nothing did yet) at its oldest trade, these ones
    # included: they are materialised here, so the leader has nothing of them to catch up.
    await _initialise.execute(conn, symbols=[symbol])
    await conn.execute(_sort_in_memory)
    for interval, step in INTERVALS.items():
        await _upsert(
            conn, [symbol], interval, bucket_floor(oldest, step), bucket_floor(newest, step) + step
        )
