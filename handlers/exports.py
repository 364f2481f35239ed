"""Bulk exports (tag `export`): whole windows of many symbols, streamed as files."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa
from sqlalchemy.ext.asyncio import AsyncConnection

from handlers.context import app_state, request_header
from handlers.params import parse_window, symbol_code
from mdp.export_formats import ExportFormat, choose_coding, choose_format, make_encoder
from mdp.streaming import ExportResponse
from persistence import exports
from persistence.errors import ExportTooLarge, SymbolsNotFound

__all__ = ["export_trades"]

logger = logging.getLogger(__name__)

# The columns and types of the JSON operations: exact decimals, UTC microsecond timestamps.
_PRICE = pa.decimal128(18, 6)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
TRADES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("symbol", pa.string()),
        ("price", _PRICE),
        ("volume", pa.int64()),
        ("timestamp", _TIMESTAMP),
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


async def _checked(
    conn: AsyncConnection, codes: Sequence[str], start: datetime, end: datetime
) -> int:
    """Every symbol known and the window within the row limit, in the export's snapshot."""
    settings = app_state().settings
    await exports.begin_snapshot(conn, timeout_seconds=settings.export_timeout_seconds)
    known = await exports.existing_symbols(conn, codes)
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise SymbolsNotFound(unknown)
    limit = settings.export_max_rows
    rows = await exports.count_trades(conn, codes, start, end, cap=limit + 1)
    if rows > limit:
        raise ExportTooLarge(
            f"The window holds more than {limit} rows, the most one export may hold "
            "(EXPORT_MAX_ROWS). Split it into shorter windows or fewer symbols."
        )
    return rows


async def _release(
    stack: contextlib.AsyncExitStack, conn: AsyncConnection, *, complete: bool
) -> None:
    try:
        if not complete:
            # A COPY cut short leaves the driver mid-protocol: close the connection (which
            # ends the query in PostgreSQL at once) rather than wait to roll it back.
            await conn.invalidate()
        await stack.aclose()
    except Exception:
        # The stream is over either way; a connection that cannot be reset is discarded.
        logger.warning("export connection could not be reset cleanly", exc_info=True)


async def export_trades(
    symbols: list[str], start: str, end: str, format: str | None = None
) -> ExportResponse:
    codes = list(dict.fromkeys(symbol_code(symbol) for symbol in symbols))
    start_at, end_at = _window(start, end)
    fmt: ExportFormat = choose_format(format, request_header("accept"))
    coding = choose_coding(fmt, request_header("accept-encoding"))
    settings = app_state().settings
    # The connection outlives this function: the response streams from it and releases it.
    stack = contextlib.AsyncExitStack()
    try:
        conn = await stack.enter_async_context(app_state().db.connect(long=True))
        rows = await _checked(conn, codes, start_at, end_at)
    except BaseException as exc:
        # Into the connection's context, which turns an unreachable database into a 503.
        if not await stack.__aexit__(type(exc), exc, exc.__traceback__):
            raise
        raise  # pragma: no cover - the context never swallows errors
    shape = "typed" if not fmt.text else "json" if fmt.name == "ndjson" else "text"
    produce = functools.partial(
        exports.copy_out,
        conn,
        exports.trades_query(len(codes), shape),
        [start_at, end_at, *codes],
        csv=shape != "json",
        header=fmt.name == "csv",
        timeout_seconds=settings.export_timeout_seconds,
    )
    return ExportResponse(
        fmt=fmt,
        encoder=make_encoder(fmt, TRADES_SCHEMA),
        produce=produce,
        release=functools.partial(_release, stack, conn),
        coding=coding,
        filename=_filename("trades", codes, start_at, end_at, fmt.extension),
        rows=rows,
        what=f"trades of {len(codes)} symbols as {fmt.name}",
    )
