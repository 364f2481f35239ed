"""Rolling 24-hour statistics: materialised 1m candles plus the trades at the window's edges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects.postgresql import ARRAY

from persistence.batches import latest_trades
from persistence.candles import materialised_minutes
from persistence.finality import bucket_ceil
from persistence.statements import TIMESTAMP, statement

__all__ = ["TICKER_WINDOW", "Stats", "ticker_stats"]

TICKER_WINDOW = timedelta(hours=1) * 24
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Stats:
    """A symbol's trades over a stretch of time, exact (Decimal prices)."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    last_at: datetime | None  # the newest trade's time, when the stretch knows it
    volume: Decimal
    notional: Decimal  # Σ price × volume
    trade_count: int

    def then(self, later: Stats) -> Stats:
        """This stretch followed by a later one."""
        return Stats(
            self.open,
            max(self.high, later.high),
            min(self.low, later.low),
            later.close,
            later.last_at or self.last_at,
            self.volume + later.volume,
            self.notional + later.notional,
            self.trade_count + later.trade_count,
        )


# The trades of the partial minute at the start and of the minutes not materialised yet at
# the end: a minute and a few seconds of trades per symbol, whatever the window.
_EDGES = statement(
    """
    SELECT symbol, edge,
           (array_agg(price ORDER BY timestamp, id))[1],
           max(price), min(price),
           (array_agg(price ORDER BY timestamp DESC, id DESC))[1],
           max(timestamp), sum(volume), sum(price * volume), count(*)
    FROM (
        SELECT symbol, price, volume, timestamp, id, 0 AS edge FROM trades
        WHERE symbol = ANY(:symbols) AND timestamp >= :start AND timestamp < :first_minute
        UNION ALL
        SELECT symbol, price, volume, timestamp, id, 1 FROM trades
        WHERE symbol = ANY(:symbols) AND timestamp >= :tail AND timestamp <= :now
    ) AS t
    GROUP BY symbol, edge
""",
    symbols=ARRAY(String),
    start=TIMESTAMP,
    first_minute=TIMESTAMP,
    tail=TIMESTAMP,
    now=TIMESTAMP,
)


def _fold(parts: Iterable[Stats]) -> Stats | None:
    total: Stats | None = None
    for part in parts:
        total = part if total is None else total.then(part)
    return total


async def ticker_stats(
    conn: asyncpg.Connection, symbols: Sequence[str], now: datetime
) -> dict[str, Stats]:
    """Each symbol's trades in [now - 24 h, now] (symbols without one are absent), read in
    one snapshot so the pieces agree."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        stats = await _stats(conn, symbols, now)
        unknown_last = [symbol for symbol, total in stats.items() if total.last_at is None]
        if unknown_last:
            # No trade in the minutes not materialised yet: the newest one is older.
            latest = await latest_trades(conn, unknown_last)
            for symbol in unknown_last:
                trade = latest[symbol]
                if trade is not None:
                    stats[symbol] = replace(stats[symbol], last_at=trade.timestamp)
    return stats


async def _stats(
    conn: asyncpg.Connection, symbols: Sequence[str], now: datetime
) -> dict[str, Stats]:
    start = now - TICKER_WINDOW
    first_minute = bucket_ceil(start, _MINUTE)
    until, minutes = await materialised_minutes(conn, symbols, first_minute, now)
    # Below the watermark every minute is materialised; from it on, read the trades.
    tail = max(until, first_minute)
    rows = await _EDGES.fetch(
        conn, symbols=list(symbols), start=start, first_minute=first_minute, tail=tail, now=now
    )
    edges = {(row[0], row[1]): Stats(*row[2:]) for row in rows}
    by_symbol: dict[str, list[Stats]] = {}
    for m in minutes:
        by_symbol.setdefault(m.symbol, []).append(
            Stats(m.open, m.high, m.low, m.close, None, m.volume, m.notional, m.trade_count)
        )
    result: dict[str, Stats] = {}
    for symbol in symbols:
        parts = [edges.get((symbol, 0)), *by_symbol.get(symbol, ()), edges.get((symbol, 1))]
        total = _fold(part for part in parts if part is not None)
        if total is not None:
            result[symbol] = total
    return result
