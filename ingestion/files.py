"""Trade files in their vendors' own layouts, decoded whole (and checked) before any is stored.

Each format is one reader: file in, a list of trades out, or `FileRefused` naming the file and
line. pyarrow's CSV reader splits the file; prices and sizes stay text until Decimal reads
them, so no digit is lost to a binary float.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from persistence.trades import VenueTrade

__all__ = ["COLUMNS", "FORMATS", "FileRefused", "Options", "read_trades"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SYMBOL = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
# Epoch values from this on are microseconds, not milliseconds (year 5138 in milliseconds):
# Binance's spot dumps switched from one to the other on 2025-01-01.
_MICROSECONDS_FROM = 10**14
# What numeric(38, 18) holds.
_MAX_DIGITS, _MAX_DECIMALS = 38, 18


class FileRefused(ValueError):
    """A file that cannot be imported; the message names the file and the line."""


# The fields a file with a header maps its columns to, and their default column names.
COLUMNS = ("timestamp", "price", "size", "trade_id", "side", "symbol")
_REQUIRED = ("timestamp", "price", "size")
_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}


@dataclass(frozen=True, slots=True)
class Options:
    symbol: str | None = None
    # field -> the file's column name (for files with a header).
    columns: Mapping[str, str] = field(default_factory=dict)
    # Epoch timestamps in this unit; None: ISO 8601 with an offset.
    time_unit: str | None = None


def _decimal(path: Path, line: int, name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise FileRefused(f"{path}:{line}: {name} {raw!r} is not a decimal number") from None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or value <= 0:
        raise FileRefused(f"{path}:{line}: {name} {raw!r} is not a positive number")
    if isinstance(exponent, int) and -exponent > _MAX_DECIMALS:
        raise FileRefused(f"{path}:{line}: {name} {raw!r} has more than 18 decimals")
    if value.adjusted() >= _MAX_DIGITS - _MAX_DECIMALS:
        raise FileRefused(f"{path}:{line}: {name} {raw!r} is too large")
    return value


def _columns(path: Path, names: list[str], width: int) -> list[list[str]]:
    """The file's rows as text columns (no header), each row `width` fields."""
    if path.stat().st_size == 0:
        raise FileRefused(f"{path}: the file holds no trades")
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=names),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in names}
            ),
        )
    except pa.ArrowInvalid as exc:
        raise FileRefused(_parse_error(path, width, exc)) from None
    if table.num_rows == 0:
        raise FileRefused(f"{path}: the file holds no trades")
    return [table.column(i).to_pylist() for i in range(width)]


def _parse_error(path: Path, width: int, error: Exception) -> str:
    """pyarrow's parse error with the line it is about (it does not say which): found again
    on the error path only."""
    with path.open(newline="") as handle:
        for number, fields in enumerate(csv.reader(handle), start=1):
            if len(fields) != width:
                return f"{path}:{number}: expected {width} columns, got {len(fields)}"
    return f"{path}: {error}"


_BINANCE = ["trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]


def _binance_trades(path: Path, options: Options) -> list[VenueTrade]:
    """Binance's public trade dump (data.binance.vision, spot `trades`): no header; trade id,
    price, qty, quoteQty, time (ms, or µs from 2025), isBuyerMaker, isBestMatch."""
    symbol = _needed_symbol(path, options)
    ids, prices, sizes, _, times, makers, _ = _columns(path, _BINANCE, len(_BINANCE))
    trades = []
    for row, (trade_id, price, size, epoch, maker) in enumerate(
        zip(ids, prices, sizes, times, makers, strict=True), start=1
    ):
        if not trade_id or not epoch or not epoch.isdigit() or maker is None:
            raise FileRefused(f"{path}:{row}: expected trade id, price, qty, quoteQty, time…")
        units = int(epoch)
        moment = _EPOCH + (
            timedelta(microseconds=units)
            if units >= _MICROSECONDS_FROM
            else timedelta(milliseconds=units)
        )
        if maker.lower() not in ("true", "false"):
            raise FileRefused(f"{path}:{row}: isBuyerMaker {maker!r} is not True or False")
        trades.append(
            VenueTrade(
                symbol,
                _decimal(path, row, "price", price or ""),
                _decimal(path, row, "qty", size or ""),
                moment,
                trade_id,
                # The buyer was the maker: the seller took the bid, so the aggressor sold.
                "sell" if maker.lower() == "true" else "buy",
            )
        )
    return trades


def _needed_symbol(path: Path, options: Options) -> str:
    if options.symbol is None:
        raise FileRefused(f"{path}: the file names no symbol: give --symbol")
    return options.symbol


def _moment(path: Path, line: int, raw: str | datetime | None, unit: str | None) -> datetime:
    if isinstance(raw, datetime):
        # A typed timestamp column (Parquet): naive ones are UTC, as Arrow's convention has it.
        return raw.astimezone(UTC) if raw.tzinfo is not None else raw.replace(tzinfo=UTC)
    raw = raw or ""
    if unit is not None:
        if not raw.isdigit():
            raise FileRefused(f"{path}:{line}: timestamp {raw!r} is not a whole number of {unit}")
        value = int(raw)
        # PostgreSQL keeps microseconds: nanoseconds are cut to them.
        micros = value // 1000 if unit == "ns" else value * _UNITS[unit]
        try:
            return _EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise FileRefused(f"{path}:{line}: timestamp {raw!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise FileRefused(
            f"{path}:{line}: timestamp {raw!r} is not ISO 8601 with an offset "
            "(or give --time-unit for epoch numbers)"
        )
    return moment.astimezone(UTC)


def _headed(
    path: Path,
    options: Options,
    venue_id: Callable[[dict[str, Any]], str] | None = None,
    extra: tuple[str, ...] = (),
) -> list[VenueTrade]:
    """A CSV file with a header (gzip or zstd by its extension), columns mapped to fields."""
    if path.stat().st_size == 0:
        raise FileRefused(f"{path}: the file holds no trades")
    names = {name: options.columns.get(name, name) for name in COLUMNS}
    try:
        header = pa_csv.open_csv(path).schema.names
    except pa.ArrowInvalid as exc:
        raise FileRefused(f"{path}: {exc}") from None
    for name in _REQUIRED:
        if names[name] not in header:
            raise FileRefused(f"{path}:1: no column {names[name]!r} for the {name}")
    wanted = [column for column in (*names.values(), *extra) if column in header]
    try:
        table = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                include_columns=wanted,
                column_types={column: pa.string() for column in wanted},
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise FileRefused(_parse_error(path, len(header), exc)) from None
    # Line 1 is the header.
    return _mapped(path, table, names, options, venue_id, first=2)


def _mapped(
    path: Path,
    table: pa.Table,
    names: Mapping[str, str],
    options: Options,
    venue_id: Callable[[dict[str, Any]], str] | None,
    *,
    first: int,
) -> list[VenueTrade]:
    """Trades from a table whose columns are named by `names` (`first`: the first row's
    line, or row number, for messages)."""
    if table.num_rows == 0:
        raise FileRefused(f"{path}: the file holds no trades")
    trades = []
    for line, row in enumerate(table.to_pylist(), start=first):
        symbol = row.get(names["symbol"]) or options.symbol
        if symbol is None or not _SYMBOL.match(symbol):
            raise FileRefused(f"{path}:{line}: symbol {symbol!r}: give --symbol or a column")
        side = (row.get(names["side"]) or "").lower() or None
        if side not in (None, "buy", "sell"):
            raise FileRefused(f"{path}:{line}: side {side!r} is not buy or sell")
        trade_id = venue_id(row) if venue_id is not None else row.get(names["trade_id"])
        trades.append(
            VenueTrade(
                symbol.upper(),
                _decimal(path, line, "price", row[names["price"]] or ""),
                _decimal(path, line, "size", row[names["size"]] or ""),
                _moment(path, line, row[names["timestamp"]], options.time_unit),
                trade_id or None,
                side,
            )
        )
    return trades


def _parquet(path: Path, options: Options) -> list[VenueTrade]:
    """A Parquet file, columns mapped to fields like a CSV header's. Decimal and integer
    columns keep their exact digits; float columns (lossy already) their shortest form;
    timestamp columns their instants; epoch numbers need --time-unit."""
    names = {name: options.columns.get(name, name) for name in COLUMNS}
    try:
        schema = pq.read_schema(path)
        for name in _REQUIRED:
            if names[name] not in schema.names:
                raise FileRefused(f"{path}: no column {names[name]!r} for the {name}")
        wanted = [column for column in names.values() if column in schema.names]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRefused(f"{path}: not a Parquet file this can read ({exc})") from None
    columns = {
        column: (
            table.column(column)
            if pa.types.is_timestamp(table.schema.field(column).type)
            else table.column(column).cast(pa.string())
        )
        for column in wanted
    }
    return _mapped(path, pa.table(columns), names, options, None, first=1)


_POLYGON = {"timestamp": "sip_timestamp", "price": "price", "size": "size", "symbol": "ticker"}


def _polygon_trades(path: Path, options: Options) -> list[VenueTrade]:
    """Polygon/Massive flat-file trades: a header (ticker, conditions, correction, exchange, id,
    participant_timestamp, price, sequence_number, sip_timestamp, size, tape, trf_id,
    trf_timestamp), nanosecond SIP timestamps. A trade id is unique per ticker, exchange and
    TRF, so the venue id names all three."""
    polygon = Options(options.symbol, _POLYGON, "ns")

    def venue_id(row: dict[str, str]) -> str:
        return f"{row.get('exchange') or ''}:{row.get('trf_id') or ''}:{row.get('id') or ''}"

    return _headed(path, polygon, venue_id, extra=("exchange", "trf_id", "id"))


FORMATS: dict[str, Callable[[Path, Options], list[VenueTrade]]] = {
    "binance-trades": _binance_trades,
    "csv": _headed,
    "parquet": _parquet,
    "polygon-trades": _polygon_trades,
}


def read_trades(path: Path, fmt: str, options: Options) -> list[VenueTrade]:
    """Every trade of the file, or FileRefused: nothing is stored from a file that fails."""
    return FORMATS[fmt](path, options)
