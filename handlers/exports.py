"""Bulk exports (tag `export`): whole windows of many symbols, streamed as files."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg
import pyarrow as pa

from errors import ExportTooLarge, SymbolsNotFound
from handlers.context import api_key_id, app_state, key_cap, request_header
from handlers.export_formats import (
    ExportFormat,
    choose_coding,
    choose_format,
    make_encoder,
)
from handlers.export_response import ExportResponse, Produce
from handlers.params import parse_window, parse_zone, symbol_code
from persistence import exports, zoned
from persistence import fill as filling
from persistence.budget import Claim
from persistence.finality import INTERVALS

__all__ = ["export_candles", "export_trades"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
# Buckets per COPY statement of a candle export.
_BUCKETS = 5000

logger = logging.getLogger(__name__)

# The columns and types of the JSON operations: exact decimals (the stored numeric(38, 18)),
# UTC microsecond timestamps.
_DECIMAL = pa.decimal128(38, 18)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
CANDLES_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("timestamp", _TIMESTAMP),
        *((name, _DECIMAL) for name in ("open", "high", "low", "close", "volume", "vwap")),
        ("trade_count", pa.int64()),
        ("closed", pa.bool_()),
        ("revision", pa.int32()),
    ]
)
# With `fill`: every bucket, empty ones with null prices, and whether each is a gap.
FILLED_CANDLES_SCHEMA = CANDLES_SCHEMA.append(pa.field("gap", pa.bool_()))
TRADES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("symbol", pa.string()),
        ("price", _DECIMAL),
        ("volume", _DECIMAL),
        ("timestamp", _TIMESTAMP),
        ("venue_trade_id", pa.string()),
        ("side", pa.string()),
    ]
)


def _window(start: str, end: str) -> tuple[datetime, datetime]:
    start_at, end_at = parse_window(start, end)
    assert start_at is not None and end_at is not None  # both are required by the contract
    max_days = app_state().settings.export_max_days
    days = (end_at - start_at).total_seconds() / 86400
    if days > max_days:
        raise ExportTooLarge(
            f"The window spans {days:g} days; an export covers at most {max_days} days "
            "(EXPORT_MAX_DAYS). Split it into shorter windows."
        )
    return start_at, end_at


def _filename(kind: str, codes: Sequence[str], start: datetime, end: datetime, ext: str) -> str:
    named = "-".join(codes) if len(codes) <= 3 else f"{codes[0]}-and-{len(codes) - 1}-more"
    stamp = "%Y%m%dT%H%M%SZ"
    return f"{kind}_{named}_{start:{stamp}}_{end:{stamp}}.{ext}"


@dataclass(frozen=True, slots=True)
class Opened(Generic[T_co]):
    """An export's snapshot: its connection (released by `stack`), its share of the export
    budget, and what the handler's check found."""

    stack: contextlib.AsyncExitStack
    conn: asyncpg.Connection
    claim: Claim
    checked: T_co


async def _snapshot(
    codes: Sequence[str], check: Callable[[asyncpg.Connection], Awaitable[T]]
) -> Opened[T]:
    """A connection in the export's snapshot, once every symbol is known and `check` passed.

    The connection outlives the handler: the response streams from it and releases it. It
    comes from the export pool, within the instance's and the key's share of it.
    """
    state = app_state()
    settings = state.settings
    claim = state.db.export_budget.claim(
        api_key_id(), key_cap("max_exports", settings.export_max_per_key)
    )
    stack = contextlib.AsyncExitStack()
    stack.callback(claim.release)
    try:
        conn = await stack.enter_async_context(state.db.export_connection())
        transaction = exports.snapshot(conn)
        await transaction.start()

        async def end() -> None:
            if not conn.is_closed():
                await transaction.rollback()

        stack.push_async_callback(end)
        await exports.configure_snapshot(conn, timeout_seconds=settings.export_timeout_seconds)
        known = await exports.existing_symbols(conn, codes)
        unknown = [code for code in codes if code not in known]
        if unknown:
            raise SymbolsNotFound(unknown)
        checked = await check(conn)
    except BaseException as exc:
        # Into the connection's context, which turns an unreachable database into a 503.
        if not await stack.__aexit__(type(exc), exc, exc.__traceback__):
            raise
        raise  # pragma: no cover - the context never swallows errors
    return Opened(stack, conn, claim, checked)


async def _release(
    stack: contextlib.AsyncExitStack, conn: asyncpg.Connection, *, complete: bool
) -> None:
    try:
        if not complete:
            # A COPY cut short leaves the driver mid-protocol: close the connection (which
            # ends the query in PostgreSQL at once) rather than wait to roll it back.
            conn.terminate()
        await stack.aclose()
    except Exception:
        # The stream is over either way; a connection that cannot be reset is discarded.
        logger.warning("export connection could not be reset cleanly", exc_info=True)


def _shape(fmt: ExportFormat) -> str:
    """The COPY output each format is made from (see persistence.exports): NDJSON's objects
    are built by PostgreSQL, every other format is made from the stored types."""
    return "json" if fmt.name == "ndjson" else "typed"


def _copy(conn: asyncpg.Connection, fmt: ExportFormat) -> Callable[..., Awaitable[None]]:
    """COPY of a query into the export's sink: text for NDJSON's lines, CSV for the CSV
    export, binary for Parquet and Arrow (decoded without PostgreSQL printing a value)."""
    copy_format: exports.CopyFormat = (
        "text" if fmt.name == "ndjson" else "csv" if fmt.name == "csv" else "binary"
    )
    return functools.partial(
        exports.copy_out,
        conn,
        format=copy_format,
        timeout_seconds=app_state().settings.export_timeout_seconds,
    )


def _response(
    fmt: ExportFormat,
    schema: pa.Schema,
    price_type: str,
    produce: Produce,
    opened: Opened[object],
    *,
    filename: str,
    rows: int | None,
    what: str,
) -> ExportResponse:
    return ExportResponse(
        fmt=fmt,
        encoder=make_encoder(fmt, schema, price_type),
        produce=produce,
        release=functools.partial(_release, opened.stack, opened.conn),
        ended=opened.claim.ended,
        coding=choose_coding(fmt, request_header("accept-encoding")),
        filename=filename,
        rows=rows,
        what=what,
    )


async def export_trades(
    symbols: list[str],
    start: str,
    end: str,
    format: str | None = None,
    price_type: str = "decimal",
) -> ExportResponse:
    codes = list(dict.fromkeys(symbol_code(symbol) for symbol in symbols))
    start_at, end_at = _window(start, end)
    fmt = choose_format(format, request_header("accept"))
    limit = app_state().settings.export_max_rows

    async def within_limit(conn: asyncpg.Connection) -> int:
        rows = await exports.count_trades(conn, codes, start_at, end_at, cap=limit + 1)
        if rows > limit:
            raise ExportTooLarge(
                f"The window holds more than {limit} rows, the most one export may hold "
                "(EXPORT_MAX_ROWS). Split it into shorter windows or fewer symbols."
            )
        return rows

    opened = await _snapshot(codes, within_limit)
    copy = _copy(opened.conn, fmt)

    async def produce(sink: Callable[[bytes], Awaitable[None]]) -> None:
        await exports.plan_trades(opened.conn)
        await copy(exports.trades_query(len(codes), _shape(fmt)), [start_at, end_at, *codes], sink)

    return _response(
        fmt,
        TRADES_SCHEMA,
        price_type,
        produce,
        opened,
        filename=_filename("trades", codes, start_at, end_at, fmt.extension),
        rows=opened.checked,
        what=f"trades of {len(codes)} symbols as {fmt.name}",
    )


def _refuse_past_max_rows(
    codes: Sequence[str], start_at: datetime, end_at: datetime, interval: str
) -> None:
    """Refuses a candle export before any query when its window may hold more candles than
    EXPORT_MAX_ROWS."""
    limit = app_state().settings.export_max_rows
    # Local buckets are a step long give or take a DST hour: two more bound the count.
    most = ((end_at - start_at) // INTERVALS[interval] + 2) * len(codes)
    if most > limit:
        raise ExportTooLarge(
            f"The window may hold {most} candles ({len(codes)} symbols x {interval} buckets), "
            f"more than the {limit} rows one export may hold (EXPORT_MAX_ROWS). Split it into "
            "shorter windows, fewer symbols or a longer interval."
        )


async def export_candles(
    symbols: list[str],
    start: str,
    end: str,
    interval: str = "1m",
    format: str | None = None,
    price_type: str = "decimal",
    timezone: str = "UTC",
    fill: str = "none",
) -> ExportResponse:
    codes = list(dict.fromkeys(symbol_code(symbol) for symbol in symbols))
    start_at, end_at = _window(start, end)
    tz = parse_zone(timezone)
    step = INTERVALS[interval]
    fmt = choose_format(format, request_header("accept"))
    _refuse_past_max_rows(codes, start_at, end_at, interval)

    def pages() -> Iterator[list[datetime]]:
        # A few thousand buckets per statement, all in the export's one snapshot.
        return zoned.pages(tz, step, start_at, end_at, size=_BUCKETS)

    async def counted(conn: asyncpg.Connection) -> tuple[zoned.Clock, int]:
        now = await zoned.clock(conn, codes)
        if fill != "none":
            # Every bucket of every symbol.
            return now, sum(len(bounds) - 1 for bounds in pages()) * len(codes)
        return now, await zoned.count_candles(conn, codes, pages(), now)

    opened = await _snapshot(codes, counted)
    (now, rows), conn, copy = opened.checked, opened.conn, _copy(opened.conn, fmt)
    shape = _shape(fmt)
    query = zoned.candles_query(shape) if fill == "none" else zoned.filled_candles_query(shape)

    async def produce(sink: Callable[[bytes], Awaitable[None]]) -> None:
        for bounds in pages():
            arguments: Sequence[Any]
            if fill == "none":
                arguments = [codes, bounds, now.horizon, now.minutes_done]
            else:
                arguments = await _filled_columns(conn, codes, bounds, now, fill)
            await copy(query, arguments, sink)

    kind = f"candles-{interval}" + ("" if timezone == "UTC" else f"-{timezone.replace('/', '-')}")
    schema = CANDLES_SCHEMA if fill == "none" else FILLED_CANDLES_SCHEMA
    return _response(
        fmt,
        schema,
        price_type,
        produce,
        opened,
        filename=_filename(kind, codes, start_at, end_at, fmt.extension),
        rows=rows,
        what=f"{interval} candles of {len(codes)} symbols in {timezone} as {fmt.name}",
    )


async def _filled_columns(
    conn: asyncpg.Connection,
    codes: Sequence[str],
    bounds: Sequence[datetime],
    now: zoned.Clock,
    fill: str,
) -> list[list[Any]]:
    """Every bucket of `bounds` for each symbol, filled as `/candles` fills them, as the
    column arrays `zoned.filled_candles_query` takes (it orders them)."""
    rows = await zoned.read_zoned_candles(conn, codes, bounds, now, shape="typed")
    traded: dict[str, list[Any]] = {code: [] for code in codes}
    for row in rows:
        traded[row[0]].append(row[1:])
    filled: list[tuple[Any, ...]] = []
    lo, hi = bounds[0], bounds[-1]
    for code in codes:
        before = await filling.last_trade_before(conn, code, lo) if fill == "previous" else None
        # An empty bucket is final once this symbol's feed has stored everything through it,
        # as `/candles` judges it: not by the clock, nor held back by the other symbols.
        complete = (await zoned.clock(conn, [code])).complete
        buckets = filling.fill_buckets(
            traded[code],
            bounds,
            fill,
            horizon=complete,
            spans=await filling.ingested_spans(conn, code, lo, hi),
            before=before,
        )
        filled += [(code, *bucket) for bucket in buckets]
    return [list(column) for column in zip(*filled, strict=True)] or [
        [] for _ in zoned.FILLED_COLUMNS
    ]
