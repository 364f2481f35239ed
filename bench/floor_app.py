"""The benchmark's "floor": the service's read endpoints on bare Starlette, asyncpg and orjson.

No request validation, no ORM, no middleware stack, no persistence of candles: the same SQL as
the service, imported from `persistence/`, so every service figure can be read as a ratio to
what the database and the HTTP stack alone allow. Candles are the seed's original model: one
set-based aggregation over the window's trades per request.

    BENCH_DATABASE_URL=postgresql://… python -m bench.floor_app 8001

Not part of the service: nothing imports it but the benchmark.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from persistence import symbols, trades
from persistence.finality import (
    EPOCH,
    INTERVALS,
    VISIBILITY_DEADLINE,
    bucket_ceil,
    bucket_floor,
)
from persistence.models import VWAP_SCALE
from web import encoding

# The service's own statements, imported (never copied) from persistence/: what the hot reads
# send through the driver connection.
LATEST_TRADE = trades.LATEST
SYMBOLS_PAGE = symbols.FIRST_PAGE
SYMBOLS_PAGE_AFTER = symbols.NEXT_PAGE
SYMBOL_EXISTS = symbols.EXISTS

# The seed's candles (before the incremental model), as a plain read: aggregate the window's
# trades into epoch-aligned buckets, nothing persisted; exact volumes and vwap rounded to the
# contract's scale, as the service's candles are (contract 2.0).
CANDLES = f"""
SELECT bucket, (array_agg(price ORDER BY timestamp, id))[1]::float8,
       max(price)::float8, min(price)::float8,
       (array_agg(price ORDER BY timestamp DESC, id DESC))[1]::float8,
       sum(volume)::float8, round(sum(price * volume) / sum(volume), {VWAP_SCALE})::float8,
       count(*)::integer
FROM (
    SELECT date_bin($2::INTERVAL, timestamp, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket,
           timestamp, id, price, volume
    FROM trades
    WHERE symbol = $1::VARCHAR AND timestamp >= $3::TIMESTAMPTZ AND timestamp < $4::TIMESTAMPTZ
) AS t
GROUP BY bucket
ORDER BY bucket
"""

HEALTH = "SELECT 1"


class Counters:
    """What /metrics reports: in memory, nothing queried."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.count = 0
        self.total_ms = 0.0
        self.max_ms = 0.0


class CountRequests:
    """The one middleware: counts requests and their latency, as the service's telemetry does."""

    def __init__(self, app: ASGIApp, counters: Counters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                elapsed = (time.perf_counter() - started) * 1000
                counters = self.counters
                counters.count += 1
                counters.total_ms += elapsed
                counters.max_ms = max(counters.max_ms, elapsed)


COUNTERS = Counters()


def _json(body: Any, status: int = 200) -> Response:
    # The service's encoder: prices and volumes are exact decimals, as the service sends them.
    return Response(encoding.dumps(body), status, media_type="application/json")


def _problem(status: int, detail: str) -> Response:
    return Response(
        orjson.dumps({"status": status, "detail": detail}),
        status,
        media_type="application/problem+json",
    )


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.upper()).astimezone(UTC) if value else None


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _cursor(kind: str, filters: list[Any], position: list[Any]) -> str:
    fingerprint = hashlib.blake2b(orjson.dumps([kind, *filters]), digest_size=8).hexdigest()
    payload = orjson.dumps([1, fingerprint, *position])
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


def _position(token: str) -> list[Any]:
    payload: list[Any] = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return payload[2:]


async def latest_price(request: Request) -> Response:
    code = request.query_params["symbol"].upper()
    async with _pool(request).acquire() as conn:
        row = await LATEST_TRADE.fetchrow(conn, symbol=code)
    if row is None:
        return _problem(404, f"no trades for {code}")
    return _json(
        {"symbol": row[1], "price": row[2], "volume": row[3], "timestamp": row[4]},
    )


async def symbols(request: Request) -> Response:
    params = request.query_params
    limit = int(params.get("limit", 100))
    cursor = params.get("cursor")
    async with _pool(request).acquire() as conn:
        if cursor:
            rows = await SYMBOLS_PAGE_AFTER.fetch(conn, after=_position(cursor)[0], limit=limit + 1)
        else:
            rows = await SYMBOLS_PAGE.fetch(conn, limit=limit + 1)
    page = rows[:limit]
    return _json(
        {
            "symbols": [{"symbol": r[0], "name": r[1], "created_at": r[2]} for r in page],
            "count": len(page),
            "next_cursor": _cursor("symbols", [], [page[-1][0]]) if len(rows) > limit else None,
        }
    )


async def trades(request: Request) -> Response:
    params = request.query_params
    code = params["symbol"].upper()
    start, end = params.get("start"), params.get("end")
    start_at = _time(start)
    end_at = _time(end)
    limit = int(params.get("limit", 100))
    order = params.get("order", "desc")
    descending = order == "desc"
    cursor = params.get("cursor")
    values: dict[str, Any] = {"symbol": code, "limit": limit + 1}
    if start_at is not None:
        values["start"] = start_at
    if end_at is not None:
        values["end"] = end_at
    if cursor:
        micros, values["after_id"] = _position(cursor)
        values["after_timestamp"] = EPOCH + timedelta(microseconds=micros)
    page = trades.page_sql(
        start=start_at is not None,
        end=end_at is not None,
        after=bool(cursor),
        descending=descending,
    )
    async with _pool(request).acquire() as conn:
        rows = await page.fetch(conn, **values)
        if not rows and not await SYMBOL_EXISTS.fetchval(conn, symbol=code):
            return _problem(404, f"unknown symbol {code}")
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        filters = [code, start, end, order]
        next_cursor = _cursor("trades", filters, [_micros(page[-1][4]), page[-1][0]])
    return _json(
        {
            "symbol": code,
            "start": start_at,
            "end": end_at,
            "order": order,
            "count": len(page),
            "trades": [
                {"id": r[0], "symbol": r[1], "price": r[2], "volume": r[3], "timestamp": r[4]}
                for r in page
            ],
            "next_cursor": next_cursor,
        }
    )


async def candles(request: Request) -> Response:
    params = request.query_params
    code = params["symbol"].upper()
    interval = params.get("interval", "1m")
    step = INTERVALS[interval]
    limit = int(params.get("limit", 500))
    now = datetime.now(UTC)
    start_at = _time(params.get("start"))
    end_at = _time(params.get("end")) or bucket_floor(now, step) + step
    if start_at is None:
        start_at = bucket_ceil(end_at, step) - limit * step
    lo = bucket_ceil(start_at, step)
    hi = bucket_ceil(end_at, step)
    # Bounded by `limit`, as the service's pages are.
    page_hi = min(hi, lo + limit * step)
    async with _pool(request).acquire() as conn:
        rows = await conn.fetch(CANDLES, code, step, lo, page_hi)
    final = bucket_floor(now - VISIBILITY_DEADLINE, step)
    next_cursor = _cursor("candles", [code, interval], [_micros(page_hi)]) if page_hi < hi else None
    return _json(
        {
            "symbol": code,
            "interval": interval,
            "start": start_at,
            "end": end_at,
            "count": len(rows),
            "candles": [
                {
                    "timestamp": r[0],
                    "open": r[1],
                    "high": r[2],
                    "low": r[3],
                    "close": r[4],
                    "volume": r[5],
                    "vwap": r[6],
                    "trade_count": r[7],
                    "closed": r[0] < final,
                }
                for r in rows
            ],
            "next_cursor": next_cursor,
        }
    )


async def health(request: Request) -> Response:
    started = time.perf_counter()
    async with _pool(request).acquire() as conn:
        await conn.fetchval(HEALTH)
    latency = round((time.perf_counter() - started) * 1000, 3)
    return _json({"status": "pass", "checks": {"database": {"latency_ms": latency}}})


async def metrics(request: Request) -> Response:
    counters = COUNTERS
    return _json(
        {
            "uptime_seconds": round(time.monotonic() - counters.started, 3),
            "requests": {
                "count": counters.count,
                "average_ms": round(counters.total_ms / counters.count, 3)
                if counters.count
                else 0.0,
                "max_ms": round(counters.max_ms, 3),
            },
        }
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    pool = await asyncpg.create_pool(
        os.environ["BENCH_DATABASE_URL"],
        min_size=int(os.environ.get("DB_POOL_SIZE", "10")),
        max_size=int(os.environ.get("DB_POOL_SIZE", "10")),
        # The service's session settings, so the planner sees the same thing.
        server_settings={
            "application_name": "mdp-bench-floor",
            "jit": "off",
            "max_parallel_workers_per_gather": "0",
        },
    )
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


def create_app() -> ASGIApp:
    starlette = Starlette(
        routes=[
            Route("/price/latest", latest_price),
            Route("/symbols", symbols),
            Route("/trades", trades),
            Route("/candles", candles),
            Route("/health", health),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    return CountRequests(starlette, COUNTERS)


app = create_app()


def main() -> None:
    """uvicorn (uvloop, httptools, no access log) on `mdp serve`'s listeners (mdp.cli), so
    that a burst of new connections is accepted alike by both."""
    import sys

    import uvicorn

    from mdp.cli import listeners

    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", access_log=False, log_level="warning"
    )
    uvicorn.Server(config).run(sockets=listeners("127.0.0.1", int(sys.argv[1])))


if __name__ == "__main__":
    main()
