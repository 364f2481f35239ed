"""Market data operations (tag `market`): symbols, latest price, trades, candles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast
from zoneinfo import ZoneInfo

import asyncpg

from errors import NoTrades, SymbolNotFound, SymbolsNotFound
from handlers import cursors
from handlers.context import app_state
from handlers.params import parse_window, parse_zone, symbol_code, symbol_codes
from persistence import batches, candles, finality, symbols, ticker, trades, zoned
from persistence import fill as filling
from web import encoding
from web.answer import Answer

__all__ = [
    "get_latest_price",
    "get_latest_prices",
    "get_ticker",
    "list_candles",
    "list_symbols",
    "list_trades",
]


# An answer that can never change again: caches (a CDN in front of Cloud Run) keep it a year
# and browsers do not even revalidate it on reload.
IMMUTABLE = "public, max-age=31536000, immutable"
# Anything else may be stored, but must be revalidated with its ETag before every reuse.
REVALIDATE = "no-cache"


def _settlement() -> timedelta:
    return timedelta(seconds=app_state().settings.feed_settlement_seconds)


def _cache_control(*, final: bool) -> dict[str, str]:
    """The headers a data handler returns: whether its answer is final decides how it caches."""
    return {"Cache-Control": IMMUTABLE if final else REVALIDATE}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


async def list_symbols(limit: int = 100, cursor: str | None = None) -> Answer:
    after = None
    if cursor is not None:
        (code,) = cursors.decode(cursor, "symbols", (), (str,))
        after = cast(str, code)
    async with app_state().db.connect() as conn:
        rows = await symbols.list_symbols(conn, limit=limit + 1, after=after)
    page = rows[:limit]
    body = {
        "symbols": [
            {"symbol": code, "name": name, "created_at": created} for code, name, created in page
        ],
        "count": len(page),
        "next_cursor": (
            cursors.encode("symbols", (), (page[-1]["symbol"],)) if len(rows) > limit else None
        ),
    }
    # New symbols can be registered at any time.
    return Answer(body, 200, _cache_control(final=False), rows=len(page))


def _price(trade: trades.TradeRow) -> dict[str, Any]:
    return {
        "symbol": trade.symbol,
        "price": trade.price,
        "volume": trade.volume,
        "timestamp": trade.timestamp,
    }


async def get_latest_price(symbol: str) -> Answer:
    code = symbol_code(symbol)
    state = app_state()
    # From memory while the live feed is heard; from the database otherwise.
    trade = state.broadcaster.latest(code)
    if trade is None:
        async with state.db.connect() as conn:
            stored = await trades.latest_trade(conn, code)
            if stored is None and not await symbols.symbol_exists(conn, code):
                raise SymbolNotFound(code)
        trade = state.broadcaster.newest(code, stored)
        if trade is None:
            raise NoTrades(code)
    return Answer(_price(trade), 200, _cache_control(final=False))


async def get_latest_prices(symbols: list[str]) -> Answer:
    codes = symbol_codes(symbols)
    state = app_state()
    found = {code: state.broadcaster.latest(code) for code in codes}
    missing = [code for code, trade in found.items() if trade is None]
    if missing:
        async with state.db.connect() as conn:
            stored = await batches.latest_trades(conn, missing)
        unknown = [code for code in missing if code not in stored]
        if unknown:
            raise SymbolsNotFound(unknown)
        found.update({code: state.broadcaster.newest(code, stored[code]) for code in missing})
    prices = [_price(trade) for trade in found.values() if trade is not None]
    body = {
        "prices": prices,
        "count": len(prices),
        "without_trades": [code for code, trade in found.items() if trade is None],
    }
    return Answer(body, 200, _cache_control(final=False), rows=len(prices))


async def list_trades(
    symbol: str,
    start: str | None = None,
    end: str | None = None,
    limit: int = 100,
    order: str = "desc",
    cursor: str | None = None,
) -> Answer:
    code = symbol_code(symbol)
    start_at, end_at = parse_window(start, end)
    filters = (code, _iso(start_at), _iso(end_at), order)
    after = None
    if cursor is not None:
        moment, trade_id = cursors.decode(cursor, "trades", filters, (datetime, int))
        after = (cast(datetime, moment), cast(int, trade_id))
    final = False
    async with app_state().db.connect() as conn:
        # Only a window with an end may be final: the database serving the read decides (a
        # replica only as far as it has replayed), before the query, so that every trade
        # before its horizon is visible to the query.
        if end_at is not None:
            final = end_at <= await finality.settled(conn, code, _settlement())
        rows = await trades.list_trades(
            conn,
            symbol=code,
            start=start_at,
            end=end_at,
            descending=order == "desc",
            after=after,
            limit=limit + 1,
        )
        if not rows and not await symbols.symbol_exists(conn, code):
            raise SymbolNotFound(code)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = cursors.encode("trades", filters, (page[-1]["timestamp"], page[-1]["id"]))
    body = {
        "symbol": code,
        "start": start_at,
        "end": end_at,
        "order": order,
        "count": len(page),
        "trades": _trades(page),
        "next_cursor": next_cursor,
    }
    # A window that ended before the horizon holds every trade it will ever hold, so each page
    # of its walk (and the cursor to the next) is the same bytes for ever.
    return Answer(body, 200, _cache_control(final=final), rows=len(page))


def _trades(page: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    # Dict literals from the driver's records: big pages are hot.
    return [
        {
            "id": i,
            "symbol": s,
            "price": p,
            "volume": v,
            "timestamp": t,
            "venue_trade_id": venue_id,
            "side": side,
        }
        for i, s, p, v, t, venue_id, side in page
    ]


async def list_candles(
    symbol: str,
    interval: str = "1m",
    start: str | None = None,
    end: str | None = None,
    limit: int = 500,
    cursor: str | None = None,
    timezone: str = "UTC",
    fill: str = "none",
) -> Answer:
    code = symbol_code(symbol)
    step = finality.INTERVALS[interval]
    start_at, end_at = parse_window(start, end)
    filters = (code, interval, _iso(start_at), _iso(end_at))
    if timezone != "UTC" or fill != "none":
        # Cursors are bound to the zone and the fill too; a UTC cursor without a fill is bound
        # to the window alone, so the cursors clients already hold stay valid.
        bound = (*filters, timezone, *((fill,) if fill != "none" else ()))
        window = _Window(code, interval, step, start_at, end_at, limit, bound)
        return await _zoned_candles(window, parse_zone(timezone), timezone, cursor, fill)
    if cursor is not None:
        # The window is pinned by the first page, so "now" moving on cannot shift it.
        position = cursors.decode(cursor, "candles", filters, (datetime, datetime, datetime))
        lo, start_at, end_at = (cast(datetime, value) for value in position)
    else:
        if end_at is None:
            # Up to and including the bucket that is still open.
            end_at = finality.bucket_floor(datetime.now(UTC), step) + step
        if start_at is None:
            # The `limit` most recent buckets before `end`.
            start_at = finality.bucket_ceil(end_at, step) - limit * step
        lo = finality.bucket_ceil(start_at, step)
    hi = finality.bucket_ceil(end_at, step)
    state = app_state()
    async with state.db.connect() as conn:
        # Before the page: what is settled then is settled in the page's later snapshot too.
        settled = await finality.settled(conn, code, _settlement())
        page = await candles.read_candle_page_json(
            conn, symbol=code, interval=interval, step=step, lo=lo, hi=hi, limit=limit
        )
    if page.from_trades:
        state.prometheus.candles_from_trades.labels(interval).inc()
    next_cursor = None
    if page.until < hi:
        next_cursor = cursors.encode("candles", filters, (page.until, start_at, end_at))
    window = _Window(code, interval, step, start_at, end_at, limit, filters)
    # Final when every bucket the page spans is closed and settled: nothing can change it.
    final = page.closed and min(page.until, hi) <= settled
    body = _candle_body(window, "UTC", encoding.composed(page.candles), page.size, next_cursor)
    return Answer(body, 200, _cache_control(final=final), rows=page.size)


class _Window(NamedTuple):
    symbol: str
    interval: str
    step: timedelta
    start: datetime | None
    end: datetime | None
    limit: int
    filters: tuple[str | None, ...]


def _candle_body(
    window: _Window, timezone: str, candles: Any, count: int, next_cursor: str | None
) -> dict[str, Any]:
    return {
        "symbol": window.symbol,
        "interval": window.interval,
        "timezone": timezone,
        "start": window.start,
        "end": window.end,
        "count": count,
        "candles": candles,
        "next_cursor": next_cursor,
    }


def _candle_answer(
    window: _Window,
    timezone: str,
    rows: Sequence[Sequence[Any]],
    next_cursor: str | None,
    *,
    final: bool,
) -> Answer:
    candles = [
        {
            "timestamp": t,
            "open": o,
            "high": h,
            "low": lo_,
            "close": c,
            "volume": v,
            "vwap": w,
            "trade_count": n,
            "closed": closed,
            "revision": revision,
            # Only with `fill`: whether the symbol was not being ingested through it.
            **({"gap": marks[0]} if marks else {}),
        }
        for t, o, h, lo_, c, v, w, n, closed, revision, *marks in rows
    ]
    body = _candle_body(window, timezone, candles, len(candles), next_cursor)
    return Answer(body, 200, _cache_control(final=final), rows=len(candles))


async def _zoned_candles(
    window: _Window, tz: ZoneInfo, timezone: str, cursor: str | None, fill: str = "none"
) -> Answer:
    """`/candles` with buckets aligned to local time in `tz`: rolled up from 1m candles; with
    `fill`, every bucket of the window (persistence/fill.py)."""
    code, step, start_at, end_at = window.symbol, window.step, window.start, window.end
    if cursor is not None:
        position = cursors.decode(cursor, "candles", window.filters, (datetime,) * 3)
        lo, start_at, end_at = (cast(datetime, value) for value in position)
    else:
        if end_at is None:
            end_at = zoned.bucket_end(tz, step, datetime.now(UTC))
        if start_at is None:
            start_at = end_at - window.limit * step
        lo = zoned.bucket_ceil(tz, step, start_at)
    hi = zoned.bucket_ceil(tz, step, end_at)
    rows: list[Any] = []
    until = hi
    state = app_state()
    async with state.db.connect() as conn:
        settled = await finality.settled(conn, code, _settlement())
        now = await zoned.clock(conn, [code])
        if fill != "none":
            answered = window._replace(start=start_at, end=end_at)
            return await _filled_candles(conn, answered, tz, timezone, (lo, hi), now, fill)
        first = await zoned.first_trade(conn, code, lo, hi) if lo < hi else None
        if first is not None:
            # Skip the stretch without trades; at most `limit` buckets per page.
            lo = zoned.bucket_floor(tz, step, first)
            starts, until = zoned.bucket_starts(tz, step, lo, hi, limit=window.limit)
            rows = await zoned.read_zoned_candles(conn, [code], [*starts, until], now)
        elif not await symbols.symbol_exists(conn, code):
            raise SymbolNotFound(code)
    if now.minutes_done < min(now.horizon, until) and rows:
        state.prometheus.candles_from_trades.labels(window.interval).inc()
    next_cursor = None
    if until < hi:
        next_cursor = cursors.encode("candles", window.filters, (until, start_at, end_at))
    answered = window._replace(start=start_at, end=end_at)
    return _candle_answer(
        answered,
        timezone,
        [row[1:] for row in rows],
        next_cursor,
        final=until <= min(now.horizon, settled),
    )


async def _filled_candles(
    conn: asyncpg.Connection,
    window: _Window,
    tz: ZoneInfo,
    timezone: str,
    bounds: tuple[datetime, datetime],
    now: zoned.Clock,
    fill: str,
) -> Answer:
    """Every bucket of the page, not only those with trades: no stretch is skipped."""
    code, step, (lo, hi) = window.symbol, window.step, bounds
    starts, until = zoned.bucket_starts(tz, step, lo, hi, limit=window.limit)
    if not await symbols.symbol_exists(conn, code):
        raise SymbolNotFound(code)
    rows: list[Any] = []
    filled: list[tuple[Any, ...]] = []
    if starts:
        edges = [*starts, until]
        rows = await zoned.read_zoned_candles(conn, [code], edges, now)
        filled = filling.fill_buckets(
            [row[1:] for row in rows],
            edges,
            fill,
            horizon=now.complete,
            spans=await filling.ingested_spans(conn, code, lo, until),
            before=await filling.last_trade_before(conn, code, lo) if fill == "previous" else None,
        )
    next_cursor = None
    if until < hi:
        next_cursor = cursors.encode("candles", window.filters, (until, window.start, window.end))
    return _candle_answer(window, timezone, filled, next_cursor, final=until <= now.complete)


async def get_ticker(symbols: list[str]) -> Answer:
    codes = symbol_codes(symbols)
    now = datetime.now(UTC)
    async with app_state().db.connect() as conn:
        known = await batches.latest_trades(conn, codes)
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise SymbolsNotFound(unknown)
        stats = await ticker.ticker_stats(conn, codes, now)
    tickers = [_ticker(code, stats[code], now) for code in codes if code in stats]
    body = {
        "tickers": tickers,
        "count": len(tickers),
        "without_trades": [code for code in codes if code not in stats],
    }
    return Answer(body, 200, _cache_control(final=False), rows=len(tickers))


def _ticker(code: str, stats: ticker.Stats, now: datetime) -> dict[str, Any]:
    change = stats.close - stats.open
    return {
        "symbol": code,
        "window_start": now - ticker.TICKER_WINDOW,
        "last_price": _trimmed(stats.close),
        "last_timestamp": stats.last_at,
        "open": _trimmed(stats.open),
        "high": _trimmed(stats.high),
        "low": _trimmed(stats.low),
        "volume": _trimmed(stats.volume),
        "vwap": _trimmed(candles.vwap(stats.notional, stats.volume)),
        "trade_count": stats.trade_count,
        "change": _trimmed(change),
        "change_percent": _trimmed(round(100 * change / stats.open, 4)),
    }


def _trimmed(value: Decimal) -> Decimal:
    """`value` without trailing zeros, as PostgreSQL's trim_scale() writes the other answers'
    decimals (and in plain notation: 100, not 1E+2)."""
    return value.quantize(_ONE) if value == value.to_integral_value() else value.normalize()


_ONE = Decimal(1)
