"""Reading OHLCV candles: a pure query over materialised candles, plus the still-open tail.

The write path (`persistence.materialise`) stores every final candle once; this module never
writes. `persistence.finality` says which buckets are final and which are materialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy import Integer, Interval, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine

from errors import SymbolNotFound
from persistence.finality import (
    bin_sql,
    materialised_sql,
    materialised_through_sql,
    symbol_horizon_sql,
)
from persistence.models import VWAP_SCALE
from persistence.statements import TIMESTAMP, statement

__all__ = [
    "MINUTES_FROM_TRADES",
    "ROLL_UP",
    "CandlePage",
    "CandleRow",
    "JsonCandlePage",
    "MinuteCandle",
    "materialised_minutes",
    "read_candle_page",
    "read_candle_page_json",
    "vwap",
    "vwap_sql",
]


class CandleRow(NamedTuple):
    timestamp: datetime
    # Exact, without trailing zeros (trim_scale).
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    vwap: Decimal
    trade_count: int
    closed: bool
    # Changes since the candle was materialised as final (late prints); 0 when rolled up
    # from trades here (not materialised yet, or the open bucket).
    revision: int


class CandlePage(NamedTuple):
    candles: list[CandleRow]
    # Where this page stops: a next page starts here when it is before the window's end.
    until: datetime
    # Buckets starting before this are closed, as the database that answered judged it.
    final: datetime
    # Part of the page was final but not materialised yet, and was aggregated from trades.
    from_trades: bool

    @property
    def closed(self) -> bool:
        """Every bucket the page spans is closed: the page can never change again."""
        return self.until <= self.final


class MinuteCandle(NamedTuple):
    """A materialised 1m candle, exact: longer or shifted buckets roll up from these."""

    symbol: str
    timestamp: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    notional: Decimal  # Σ price × volume: a rolled-up vwap is Σ notional / Σ volume
    trade_count: int


def vwap_sql(notional: str, volume: str) -> str:
    """SQL for a candle's vwap: Σ price × volume / Σ volume, rounded half away from zero to
    VWAP_SCALE decimals (what `candles.vwap` stores)."""
    return f"round({notional} / {volume}, {VWAP_SCALE})"


def vwap(notional: Decimal, volume: Decimal) -> Decimal:
    """`vwap_sql` for figures summed in Python (the ticker's)."""
    return (notional / volume).quantize(_VWAP_PLACES, rounding=ROUND_HALF_UP)


_VWAP_PLACES = Decimal(1).scaleb(-VWAP_SCALE)


# 1m buckets from trades `t` (one pass over an index range of (symbol, timestamp, id) INCLUDE
# (price, volume)). open/close are the first/last trade by (timestamp, id). `notional` keeps
# Σ price × volume exactly, so rolled-up vwaps equal the ones computed from trades.
MINUTES_FROM_TRADES = f"""
    SELECT symbol, timestamp, prices[1] AS open, high, low, prices[trade_count] AS close,
           volume, notional, trade_count
    FROM (
        -- One ordered array per minute serves both open and close: a single sort per group.
        SELECT t.symbol, {bin_sql("INTERVAL '1 minute'", "t.timestamp")} AS timestamp,
               array_agg(t.price ORDER BY t.timestamp, t.id) AS prices,
               max(t.price) AS high, min(t.price) AS low,
               sum(t.volume) AS volume, sum(t.price * t.volume) AS notional,
               count(*)::integer AS trade_count
        FROM {{source}}
        WHERE {{where}}
        GROUP BY 1, 2
    ) AS minute
"""

# Buckets of width :step from 1m rows `m` (same columns as above).
ROLL_UP = f"""
    SELECT m.symbol, {bin_sql(":step", "m.timestamp")} AS timestamp,
           (array_agg(m.open ORDER BY m.timestamp))[1] AS open,
           max(m.high) AS high, min(m.low) AS low,
           (array_agg(m.close ORDER BY m.timestamp DESC))[1] AS close,
           sum(m.volume) AS volume, sum(m.notional) AS notional,
           sum(m.trade_count)::integer AS trade_count
    FROM ({{minutes}}) AS m
    GROUP BY 1, 2
"""

_CANDLE_COLUMNS = "c.symbol, c.timestamp, c.open, c.high, c.low, c.close, c.volume"

# One statement, one snapshot, no writes. The page starts at the bucket of the first trade in
# [lo, hi) (skipping a stretch without trades) and spans at most :limit buckets. Buckets below
# the watermark come from `candles`; the rest (the open bucket, and final buckets not
# materialised yet) roll up materialised minutes plus minutes aggregated from trades.
# The page's bounds come from the `page` CTE, which the planner cannot see into: it would
# guess a third of the symbol's rows for each bound and, at tens of millions of candles, scan
# the whole table. The request's own window (wider than the page, so it changes no answer)
# gives it bounds it can estimate, and prunes the trade partitions while planning.
_WINDOW = f"AND {{column}} >= {bin_sql(':step', ':lo')} AND {{column}} < :hi"

_PAGE_CANDLES = f"""
    WITH clock AS MATERIALIZED (
        SELECT {bin_sql(":step", symbol_horizon_sql(":symbol"))} AS final,
               {materialised_sql(":symbol")} AS minutes_done
    ), page AS MATERIALIZED (
        SELECT first.lo, least(:hi, first.lo + :step * :limit) AS hi, clock.final,
               clock.minutes_done, {bin_sql(":step", "clock.minutes_done")} AS done
        FROM clock, (
            -- Without a trade in the window the page is empty and ends at `hi`.
            SELECT coalesce((
                SELECT {bin_sql(":step", "timestamp")} FROM trades
                WHERE symbol = :symbol AND timestamp >= :lo AND timestamp < :hi
                ORDER BY timestamp LIMIT 1
            ), :hi) AS lo
        ) AS first
    ), stored AS (
        SELECT c.timestamp, c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trade_count,
               c.revision
        FROM page, candles AS c
        WHERE c.symbol = :symbol AND c.interval = :interval
          AND c.timestamp >= page.lo AND c.timestamp < least(page.done, page.hi)
          {_WINDOW.format(column="c.timestamp")}
    ), computed AS (
        SELECT timestamp, open, high, low, close, volume, {vwap_sql("notional", "volume")} AS vwap,
               trade_count, 0 AS revision
        FROM ({
    ROLL_UP.format(
        minutes=f'''
                SELECT {_CANDLE_COLUMNS}, c.notional, c.trade_count FROM page, candles AS c
                WHERE c.symbol = :symbol AND c.interval = '1m'
                  AND c.timestamp >= greatest(page.lo, page.done)
                  AND c.timestamp < least(page.minutes_done, page.hi)
                  {_WINDOW.format(column="c.timestamp")}
                UNION ALL
                {
            MINUTES_FROM_TRADES.format(
                source="page, trades AS t",
                where="t.symbol = :symbol AND t.timestamp < page.hi"
                " AND t.timestamp >= greatest(page.lo, page.done, page.minutes_done) "
                + _WINDOW.format(column="t.timestamp"),
            )
        }'''
    )
}) AS rolled
    )
    SELECT page.hi, page.final,
           greatest(page.lo, page.done) < least(page.final, page.hi),
           EXISTS (SELECT FROM symbols WHERE symbol = :symbol)"""
_PAGE_FROM = (
    "FROM page LEFT JOIN (SELECT * FROM stored UNION ALL SELECT * FROM computed) AS c ON true"
)
_PAGE_TYPES: dict[str, TypeEngine[Any]] = {
    "symbol": String(),
    "interval": String(),
    "step": Interval(),
    "lo": TIMESTAMP,
    "hi": TIMESTAMP,
    "limit": Integer(),
}
_PAGE = statement(
    f"""{_PAGE_CANDLES},
           c.timestamp, trim_scale(c.open), trim_scale(c.high), trim_scale(c.low),
           trim_scale(c.close), trim_scale(c.volume), trim_scale(c.vwap), c.trade_count,
           c.timestamp < page.final, c.revision
    {_PAGE_FROM}
    ORDER BY c.timestamp
    """,
    **_PAGE_TYPES,
)
# The same page with its candles as one JSON array, composed by PostgreSQL: for a page of
# thousands of candles, decoding rows and encoding them again in Python costs more than the
# query. Keys in the order the API writes them; bucket starts are whole UTC minutes, written
# as RFC 3339 with `Z`; decimals as `web.encoding` writes them.


def _json_number(column: str) -> str:
    """SQL for a numeric as the API writes it: exact, without trailing zeros, and with a
    fraction even when whole (`14.0`, never `14`), as `web.encoding.number` writes it."""
    return (
        f"CASE WHEN scale(trim_scale({column})) = 0 THEN trim_scale({column}) || '.0'"
        f" ELSE trim_scale({column})::text END"
    )


_CANDLE_JSON = f"""concat(
    '{{"timestamp":"', to_char(c.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    '","open":', {_json_number("c.open")}, ',"high":', {_json_number("c.high")},
    ',"low":', {_json_number("c.low")}, ',"close":', {_json_number("c.close")},
    ',"volume":', {_json_number("c.volume")}, ',"vwap":', {_json_number("c.vwap")},
    ',"trade_count":', c.trade_count, ',"closed":', (c.timestamp < page.final)::text,
    ',"revision":', c.revision, '}}'
)"""
_PAGE_JSON = statement(
    f"""{_PAGE_CANDLES},
           count(c.timestamp)::integer,
           '[' || coalesce(
               string_agg({_CANDLE_JSON}, ',' ORDER BY c.timestamp)
                   FILTER (WHERE c.timestamp IS NOT NULL),
               ''
           ) || ']'
    {_PAGE_FROM}
    GROUP BY page.hi, page.final, page.lo, page.done
    """,
    **_PAGE_TYPES,
)


async def read_candle_page(
    conn: asyncpg.Connection,
    *,
    symbol: str,
    interval: str,
    step: timedelta,
    lo: datetime,
    hi: datetime,
    limit: int,
) -> CandlePage:
    """Candles of `interval` whose buckets start in [lo, hi) (both aligned to `step`),
    ascending, at most `limit` buckets from the first one with a trade. Raises SymbolNotFound
    for a symbol that does not exist."""
    rows = await _PAGE.fetch(
        conn, symbol=symbol, interval=interval, step=step, lo=lo, hi=hi, limit=limit
    )
    until, final, from_trades, exists = rows[0][:4]
    candles = [CandleRow(*tuple(row)[4:]) for row in rows if row[4] is not None]
    if not candles and not exists:
        raise SymbolNotFound(symbol)
    return CandlePage(candles, until, final, from_trades)


class JsonCandlePage(NamedTuple):
    """A `CandlePage` whose candles are one JSON array (text), and how many it holds."""

    candles: str
    size: int
    until: datetime
    final: datetime
    from_trades: bool

    @property
    def closed(self) -> bool:
        return self.until <= self.final


async def read_candle_page_json(
    conn: asyncpg.Connection,
    *,
    symbol: str,
    interval: str,
    step: timedelta,
    lo: datetime,
    hi: datetime,
    limit: int,
) -> JsonCandlePage:
    """`read_candle_page`, its candles as the JSON array the API sends."""
    row = await _PAGE_JSON.fetchrow(
        conn, symbol=symbol, interval=interval, step=step, lo=lo, hi=hi, limit=limit
    )
    assert row is not None  # `page` is one row: the grouping always answers
    until, final, from_trades, exists, size, candles = row
    if not size and not exists:
        raise SymbolNotFound(symbol)
    return JsonCandlePage(candles, size, until, final, from_trades)


_MINUTES = statement(
    f"""
    SELECT {_CANDLE_COLUMNS}, c.notional, c.trade_count
    FROM candles AS c
    WHERE c.symbol = ANY(:symbols) AND c.interval = '1m'
      AND c.timestamp >= :lo AND c.timestamp < least(:hi, :until)
    ORDER BY c.symbol, c.timestamp
    """,
    symbols=ARRAY(String),
    lo=TIMESTAMP,
    hi=TIMESTAMP,
    until=TIMESTAMP,
)
_WATERMARK = statement(f"SELECT {materialised_through_sql(':symbols')}", symbols=ARRAY(String))


async def materialised_minutes(
    conn: asyncpg.Connection, symbols: Sequence[str], lo: datetime, hi: datetime
) -> tuple[datetime, list[MinuteCandle]]:
    """How far every one of `symbols` is materialised, and their materialised 1m candles
    starting in [lo, hi) below that, by symbol then time. Below it a minute without a row had
    no trades; from it on aggregate trades."""
    until: datetime = await _WATERMARK.fetchval(conn, symbols=list(symbols))
    rows = await _MINUTES.fetch(conn, symbols=list(symbols), lo=lo, hi=hi, until=until)
    return until, [MinuteCandle(*row) for row in rows]
