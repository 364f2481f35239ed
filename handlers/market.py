"""Market data operations (tag `market`): symbols, latest price, trades, candles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from handlers import cursors
from handlers.context import app_state
from handlers.params import parse_window, symbol_code
from mdp.caching import cache_control
from persistence import candles, finality, live, symbols, trades
from persistence.errors import NoTrades, SymbolNotFound, SymbolsNotFound
from persistence.finality import VISIBILITY_DEADLINE

__all__ = ["get_latest_price", "get_latest_prices", "list_candles", "list_symbols", "list_trades"]


# A data answer: the body, its status, and the caching headers its finality allows.
Answer = tuple[dict[str, Any], int, dict[str, str]]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


async def list_symbols(limit: int = 100, cursor: str | None = None) -> Answer:
    after = None
    if cursor is not None:
        (code,) = cursors.decode(cursor, "symbols", (), (str,))
        after = cast(str, code)
    async with app_state().db.driver() as conn:
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
    return body, 200, cache_control(final=False)


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
    trade = state.live.latest(code)
    if trade is None:
        async with state.db.driver() as conn:
            stored = await trades.latest_trade(conn, code)
            if stored is None and not await symbols.symbol_exists(conn, code):
                raise SymbolNotFound(code)
        trade = state.live.newest(code, stored)
        if trade is None:
            raise NoTrades(code)
    return _price(trade), 200, cache_control(final=False)


async def get_latest_prices(symbols: list[str]) -> Answer:
    codes = list(dict.fromkeys(symbol_code(symbol) for symbol in symbols))
    state = app_state()
    found = {code: state.live.latest(code) for code in codes}
    missing = [code for code, trade in found.items() if trade is None]
    if missing:
        async with state.db.driver() as conn:
            stored = await live.latest_trades(conn, missing)
        unknown = [code for code in missing if code not in stored]
        if unknown:
            raise SymbolsNotFound(unknown)
        found.update({code: state.live.newest(code, stored[code]) for code in missing})
    prices = [_price(trade) for trade in found.values() if trade is not None]
    body = {
        "prices": prices,
        "count": len(prices),
        "without_trades": [code for code, trade in found.items() if trade is None],
    }
    return body, 200, cache_control(final=False)


async def list_trades(
    symbol: str,
    start: str | None = None,
    end: str | None = None,
    limit: int = 100,
    order: str = "desc",
    cursor: str | None = None,
) -> Answer:
    code = symbol_code(symbol)
    # Taken before the query: every trade older than this was visible to it.
    horizon = datetime.now(UTC) - VISIBILITY_DEADLINE
    start_at, end_at = parse_window(start, end)
    filters = (code, _iso(start_at), _iso(end_at), order)
    after = None
    if cursor is not None:
        moment, trade_id = cursors.decode(cursor, "trades", filters, (datetime, int))
        after = (cast(datetime, moment), cast(int, trade_id))
    async with app_state().db.driver() as conn:
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
        # Dict literals from the driver's records: big pages are hot.
        "trades": [
            {"id": i, "symbol": s, "price": p, "volume": v, "timestamp": t}
            for i, s, p, v, t in page
        ],
        "next_cursor": next_cursor,
    }
    # A window that ended before the horizon holds every trade it will ever hold, so each page
    # of its walk (and the cursor to the next) is the same bytes for ever.
    return body, 200, cache_control(final=end_at is not None and end_at <= horizon)


async def list_candles(
    symbol: str,
    interval: str = "1m",
    start: str | None = None,
    end: str | None = None,
    limit: int = 500,
    cursor: str | None = None,
) -> Answer:
    code = symbol_code(symbol)
    step = finality.INTERVALS[interval]
    start_at, end_at = parse_window(start, end)
    filters = (code, interval, _iso(start_at), _iso(end_at))
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
    async with state.db.driver() as conn:
        page = await candles.read_candle_page(
            conn, symbol=code, interval=interval, step=step, lo=lo, hi=hi, limit=limit
        )
    if page.from_trades:
        state.prometheus.candles_from_trades.labels(interval).inc()
    next_cursor = None
    if page.until < hi:
        next_cursor = cursors.encode("candles", filters, (page.until, start_at, end_at))
    body = {
        "symbol": code,
        "interval": interval,
        "start": start_at,
        "end": end_at,
        "count": len(page.candles),
        "candles": [
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
            }
            for t, o, h, lo_, c, v, w, n, closed in page.candles
        ],
        "next_cursor": next_cursor,
    }
    # Final when every bucket the page spans is closed: no trade can join it or start it.
    return body, 200, cache_control(final=page.closed)
