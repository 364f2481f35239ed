"""Candle buckets aligned to local time in an IANA zone, as UTC instants (zoneinfo's rules).

A bucket is a local clock period: `1d` one local calendar day (23 or 25 hours on DST change
days), `4h` local 00:00–04:00, 04:00–08:00, …, shorter intervals local clock multiples. Its
start is the first instant whose local time is in the period: on a fall-back day the repeated
hour belongs to one (longer) bucket; a period skipped by a spring-forward has no bucket.
Buckets are made of whole UTC minutes, so they roll up from 1m candles: where a zone's offset
was not a whole number of minutes (local mean time, before about 1900–1940), a boundary is the
start of the UTC minute that holds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
from sqlalchemy import String
from sqlalchemy.dialects.postgresql import ARRAY

from persistence.candles import MINUTES_FROM_TRADES, vwap_sql
from persistence.finality import (
    HORIZON_SQL,
    feed_watermark_sql,
    materialised_through_sql,
    symbols_horizon_sql,
)
from persistence.statements import TIMESTAMP, Connection, statement

__all__ = [
    "Clock",
    "UnknownZone",
    "bucket_ceil",
    "bucket_end",
    "bucket_floor",
    "bucket_starts",
    "first_trade",
    "pages",
    "candles_query",
    "clock",
    "FILLED_COLUMNS",
    "filled_candles_query",
    "read_zoned_candles",
    "zone",
]

# Local labels count from a local midnight, so 4h and 1d buckets start at local midnight.
_ORIGIN = datetime(2000, 1, 1)
_MINUTE = timedelta(minutes=1)


class UnknownZone(ValueError):
    """Not an IANA time zone name this service knows."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError: a key zoneinfo refuses outright (an absolute path, `..`).
        raise UnknownZone(name) from None


def _label(moment: datetime, tz: ZoneInfo, step: timedelta) -> datetime:
    """The local period (naive local start) that holds `moment`."""
    local = moment.astimezone(tz).replace(tzinfo=None)
    return _ORIGIN + (local - _ORIGIN) // step * step


def _start(label: datetime, tz: ZoneInfo) -> datetime:
    """The first instant of a local period, to the whole UTC minute. fold=0 is the earlier of
    two instants with that local time; in a gap, the instant the gap ends."""
    first = label.replace(tzinfo=tz, fold=0).astimezone(UTC)
    return first - (first - datetime(2000, 1, 1, tzinfo=UTC)) % _MINUTE


def _starts_from(moment: datetime, tz: ZoneInfo, step: timedelta) -> Iterator[datetime]:
    """Bucket starts, ascending and distinct, from the bucket that holds `moment` on."""
    label = _label(moment, tz, step)
    previous = None
    while True:
        start = _start(label, tz)
        if previous is None or start > previous:
            yield start
            previous = start
        label += step


def bucket_floor(tz: ZoneInfo, step: timedelta, moment: datetime) -> datetime:
    """The start of the bucket that holds `moment`."""
    return next(_starts_from(moment, tz, step))


def bucket_ceil(tz: ZoneInfo, step: timedelta, moment: datetime) -> datetime:
    """The start of the first bucket that starts at or after `moment`."""
    return next(start for start in _starts_from(moment, tz, step) if start >= moment)


def bucket_end(tz: ZoneInfo, step: timedelta, moment: datetime) -> datetime:
    """Where the bucket that holds `moment` ends."""
    return next(start for start in _starts_from(moment, tz, step) if start > moment)


def bucket_starts(
    tz: ZoneInfo, step: timedelta, lo: datetime, hi: datetime, *, limit: int
) -> tuple[list[datetime], datetime]:
    """The starts of at most `limit` buckets starting in [lo, hi), ascending, and where the
    last of them ends (the next bucket's start; `hi` rounded up to a bucket start when none)."""
    starts: list[datetime] = []
    for start in _starts_from(lo, tz, step):
        if start < lo:
            continue
        if start >= hi or len(starts) == limit:
            return starts, start
        starts.append(start)
    raise AssertionError("unreachable: the bucket starts never end")


def pages(
    tz: ZoneInfo, step: timedelta, lo: datetime, hi: datetime, *, size: int
) -> Iterator[list[datetime]]:
    """The buckets starting in [lo, hi), `size` at a time, each list followed by where its
    last bucket ends (the boundaries `read_zoned_candles` takes); at least one list."""
    while True:
        starts, end = bucket_starts(tz, step, lo, hi, limit=size)
        yield [*starts, end]
        if end >= hi or not starts:
            return
        lo = end


class Clock(NamedTuple):
    # Buckets ending at or before `horizon` are final by the clock (persistence.finality);
    # 1m candles starting before `minutes_done` are materialised for every symbol read; every
    # symbol read has all its trades before `complete` (its feed's watermark held back too).
    horizon: datetime
    minutes_done: datetime
    complete: datetime


_CLOCK = statement(
    f"SELECT {HORIZON_SQL}, {materialised_through_sql(':symbols')},"
    f" {symbols_horizon_sql(':symbols')}",
    symbols=ARRAY(String),
)


async def clock(conn: Connection, symbols: Sequence[str]) -> Clock:
    """The clock of a read of `symbols`."""
    row = await _CLOCK.fetchrow(conn, symbols=list(symbols))
    assert row is not None
    return Clock(row[0], row[1], row[2])


# $1 symbols, $2 bucket starts followed by the end of the last bucket, $3 the horizon, $4 the
# materialisation watermark. Materialised minutes below the watermark, minutes aggregated from
# trades above it (the open tail), rolled up into the buckets by binary search in $2.
_S = "($2::timestamptz[])"
_END = f"{_S}[cardinality({_S})]"
_MINUTES = f"""
    WITH minutes AS (
        SELECT c.symbol, c.timestamp, c.open, c.high, c.low, c.close, c.volume, c.notional,
               c.trade_count, c.revision
        FROM candles AS c
        WHERE c.symbol = ANY($1::varchar[]) AND c.interval = '1m'
          AND c.timestamp >= {_S}[1] AND c.timestamp < least({_END}, $4::timestamptz)
        UNION ALL
        SELECT f.*, 0 FROM ({
    MINUTES_FROM_TRADES.format(
        source="trades AS t",
        where=f"t.symbol = ANY($1::varchar[]) AND t.timestamp < {_END}"
        f" AND t.timestamp >= greatest({_S}[1], $4::timestamptz)",
    )
}) AS f
    )
"""
_ROLLED = f"""{_MINUTES}
    SELECT m.symbol, width_bucket(m.timestamp, {_S}) AS n,
           (array_agg(m.open ORDER BY m.timestamp))[1] AS open, max(m.high) AS high,
           min(m.low) AS low, (array_agg(m.close ORDER BY m.timestamp DESC))[1] AS close,
           sum(m.volume) AS volume, {vwap_sql("sum(m.notional)", "sum(m.volume)")} AS vwap,
           sum(m.trade_count)::bigint AS trade_count,
           -- Rises whenever one of its minutes is revised (a late print changed it).
           sum(m.revision)::integer AS revision
    FROM minutes AS m
    GROUP BY 1, 2
"""
_START = f"{_S}[r.n]"
# $3 is the clock's horizon; a venue symbol's own watermark holds it back, read here.
_CLOSED = f"{_S}[r.n + 1] <= least($3::timestamptz, {feed_watermark_sql('r.symbol')})"


def _columns(shape: str, start: str, closed: str, gap: str | None = None) -> str:
    """The candle columns of one shape from rows `r`: their bucket start is `start`, whether
    it is final `closed`, and (only for filled candles) whether it is a gap `gap`."""
    if shape == "decimal":
        # JSON operations: exact decimals without trailing zeros, and the revision (exports
        # do not carry it yet).
        return (
            f"r.symbol, {start}, trim_scale(r.open), trim_scale(r.high), trim_scale(r.low), "
            f"trim_scale(r.close), trim_scale(r.volume), trim_scale(r.vwap), r.trade_count, "
            f"{closed} AS closed, r.revision"
        )
    if shape == "typed":
        return (
            f"r.symbol, {start} AS timestamp, r.open, r.high, r.low, r.close, r.volume, "
            f"r.vwap, r.trade_count, {closed} AS closed, r.revision"
            + (f", {gap} AS gap" if gap else "")
        )
    rfc3339 = f"to_char({start} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    flags = [(closed, "closed"), *([(gap, "gap")] if gap else [])]
    return (
        f"r.symbol, {rfc3339} AS timestamp, trim_scale(r.open) AS open, "
        "trim_scale(r.high) AS high, trim_scale(r.low) AS low, trim_scale(r.close) AS close, "
        "trim_scale(r.volume) AS volume, trim_scale(r.vwap) AS vwap, r.trade_count, "
        + ", ".join(
            f"CASE WHEN {flag} THEN 'true' ELSE 'false' END AS {name}"
            + (", r.revision" if name == "closed" else "")
            for flag, name in flags
        )
    )


def _select(shape: str, rows: str, start: str, closed: str, gap: str | None = None) -> str:
    """SELECT … FROM `rows` AS r in one of the shapes (`json`: one object per row)."""
    if shape == "json":
        lateral = f"CROSS JOIN LATERAL (SELECT {_columns('text', start, closed, gap)}) AS j"
        return f"SELECT row_to_json(j) FROM {rows} AS r {lateral}"
    return f"SELECT {_columns(shape, start, closed, gap)} FROM {rows} AS r"


def candles_query(shape: str) -> str:
    """Candles of the buckets in $2, by (timestamp, symbol), in one of the export shapes
    (`text`, `json`, `typed`) or `decimal` for the JSON operations."""
    select = _select(shape, "rolled", _START, _CLOSED)
    return f"WITH rolled AS ({_ROLLED}) {select} ORDER BY {_START}, r.symbol"


def filled_candles_query(shape: str) -> str:
    """Filled candles (`persistence.fill`) given as one array per column ($1 symbols … $12
    gaps), by (timestamp, symbol), in one of the export shapes: the same text forms as
    `candles_query`, and a `gap` column."""
    rows = (
        "unnest($1::varchar[], $2::timestamptz[], $3::numeric[], $4::numeric[], $5::numeric[], "
        "$6::numeric[], $7::numeric[], $8::numeric[], $9::bigint[], $10::boolean[], "
        "$11::integer[], $12::boolean[])"
    )
    named = f"(SELECT * FROM {rows} AS u({', '.join(FILLED_COLUMNS)}))"
    select = _select(shape, named, "r.timestamp", "r.closed", "r.gap")
    return f"{select} ORDER BY r.timestamp, r.symbol"


# The columns of a filled candle, in `filled_candles_query`'s argument order.
FILLED_COLUMNS = (
    "symbol",
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "trade_count",
    "closed",
    "revision",
    "gap",
)


# The candles `candles_query` would return: one per symbol and bucket with a minute in it,
# counted without rolling the minutes up. It takes no horizon: the watermark moves to $3.
_COUNT = f"""{_MINUTES.replace("$4::", "$3::")}
    SELECT count(*)
    FROM (SELECT DISTINCT m.symbol, width_bucket(m.timestamp, {_S}) FROM minutes AS m) AS b
"""


async def count_candles(
    conn: asyncpg.Connection,
    symbols: Sequence[str],
    pages: Iterable[Sequence[datetime]],
    now: Clock,
) -> int:
    """How many candles the bucket lists of `pages` hold (as `pages()` yields them)."""
    total = 0
    for starts in pages:
        total += await conn.fetchval(_COUNT, list(symbols), list(starts), now.minutes_done)
    return total


async def read_zoned_candles(
    conn: asyncpg.Connection,
    symbols: Sequence[str],
    starts: Sequence[datetime],
    now: Clock,
    *,
    shape: str = "decimal",
) -> list[Any]:
    """Rows (symbol, timestamp, open, high, low, close, volume, vwap, trade_count, closed)
    for the buckets `starts` (the last element is where the last bucket ends); prices as
    exact decimals without trailing zeros followed by the revision, or as stored (`typed`)."""
    rows: list[Any] = await conn.fetch(
        candles_query(shape), list(symbols), list(starts), now.horizon, now.minutes_done
    )
    return rows


_FIRST_TRADE = statement(
    "SELECT timestamp FROM trades WHERE symbol = :symbol AND timestamp >= :lo "
    "AND timestamp < :hi ORDER BY timestamp LIMIT 1",
    symbol=String,
    lo=TIMESTAMP,
    hi=TIMESTAMP,
)


async def first_trade(conn: Connection, symbol: str, lo: datetime, hi: datetime) -> datetime | None:
    """When the symbol's first trade in [lo, hi) happened: pages skip a stretch without any."""
    moment: datetime | None = await _FIRST_TRADE.fetchval(conn, symbol=symbol, lo=lo, hi=hi)
    return moment
