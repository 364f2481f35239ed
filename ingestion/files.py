"""Trade files in their vendors' own layouts, decoded whole (and checked) before any is stored.

Each format is one reader: file in, an Arrow table of trades (`TRADES`) out, or `FileRefused`
naming the file and line. pyarrow's readers decode and check the columns at C speed; prices
and sizes stay decimal text, so no digit is lost to a binary float, and only a value the fast
check does not accept is read again by Decimal (for its exact verdict and message).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

__all__ = [
    "COLUMNS",
    "FORMATS",
    "TRADES",
    "FileRefused",
    "Options",
    "Where",
    "read_trades",
    "trades_table",
]

# What every reader returns: one row per trade, prices and sizes as decimal text.
TRADES = pa.schema(
    [
        ("symbol", pa.string()),
        ("price", pa.string()),
        ("volume", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("venue_trade_id", pa.string()),
        ("side", pa.string()),
    ]
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SYMBOL = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
# Epoch values from this on are microseconds, not milliseconds (year 5138 in milliseconds):
# Binance's spot dumps switched from one to the other on 2025-01-01.
_MICROSECONDS_FROM = 10**14
# What numeric(38, 18) holds.
_MAX_DIGITS, _MAX_DECIMALS = 38, 18
# Decimal text that needs no second look: positive, at most 20 + 18 digits.
_PLAIN = r"^[0-9]{1,20}(\.[0-9]{1,18})?$"
_ZERO = r"^0*(\.0*)?$"
# Instants Python's datetime (and so every reader of an export) can hold: before year 10000.
_LAST_MICROSECOND = 253_402_300_800_000_000


class FileRefused(ValueError):
    """A file that cannot be imported; the message names the file and the line."""


# The fields a file with a header maps its columns to, and their default column names.
COLUMNS = ("timestamp", "price", "size", "trade_id", "side", "symbol")
_REQUIRED = ("timestamp", "price", "size")
_MICROS_PER = {"s": 1_000_000, "ms": 1_000, "us": 1}


@dataclass(frozen=True, slots=True)
class Options:
    symbol: str | None = None
    # field -> the file's column name (for files with a header).
    columns: Mapping[str, str] = field(default_factory=dict)
    # Epoch timestamps in this unit; None: ISO 8601 with an offset.
    time_unit: str | None = None


@dataclass(frozen=True, slots=True)
class Where:
    """Where a column's values came from, for messages: the file, and the line (or, in a
    binary file, the record number) of its first row."""

    path: Path
    first: int
    binary: bool = False

    def at(self, row: int) -> str:
        if self.binary:
            return f"{self.path}: record {self.first + row}"
        return f"{self.path}:{self.first + row}"


def _first(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """The index of the first true value of a boolean mask, or None."""
    found = pc.indices_nonzero(mask)
    return found[0].as_py() if len(found) else None


def _decimal(where: str, name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise FileRefused(f"{where}: {name} {raw!r} is not a decimal number") from None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or value <= 0:
        raise FileRefused(f"{where}: {name} {raw!r} is not a positive number")
    if isinstance(exponent, int) and -exponent > _MAX_DECIMALS:
        raise FileRefused(f"{where}: {name} {raw!r} has more than 18 decimals")
    if value.adjusted() >= _MAX_DIGITS - _MAX_DECIMALS:
        raise FileRefused(f"{where}: {name} {raw!r} is too large")
    return value


def _decimals(where: Where, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Positive decimal text numeric(38, 18) holds; other spellings Decimal reads (`1e-05`,
    a float column's) are rewritten plainly; anything else is refused."""
    column = pc.coalesce(column, "")
    plain = pc.and_(
        pc.match_substring_regex(column, _PLAIN),
        pc.invert(pc.match_substring_regex(column, _ZERO)),
    )
    if pc.all(plain).as_py():
        return column
    values = column.to_pylist()
    for row in pc.indices_nonzero(pc.invert(plain)).to_pylist():
        values[row] = format(_decimal(where.at(row), name, values[row]), "f")
    return pa.chunked_array([pa.array(values, pa.string())])


def _moments(where: Where, column: pa.ChunkedArray, unit: str | None) -> pa.ChunkedArray:
    """Instants in microseconds: from a typed timestamp column (naive ones are UTC, as
    Arrow's convention has it), epoch numbers in `unit`, or ISO 8601 text with an offset."""
    utc = pa.timestamp("us", tz="UTC")
    if pa.types.is_timestamp(column.type):
        missing = _first(column.is_null())
        if missing is not None:
            raise FileRefused(f"{where.at(missing)}: no timestamp")
        return column.cast(pa.timestamp("us", tz=column.type.tz or "UTC")).cast(utc)
    column = pc.coalesce(column, "")
    if unit is not None:
        bad = _first(pc.invert(pc.match_substring_regex(column, r"^[0-9]{1,19}$")))
        if bad is not None:
            raw = column[bad].as_py()
            raise FileRefused(f"{where.at(bad)}: timestamp {raw!r} is not a whole number of {unit}")
        numbers = column.cast(pa.uint64())
        # PostgreSQL keeps microseconds: nanoseconds are cut to them.
        if unit == "ns":
            micros = pc.divide(numbers, 1000)
        else:
            limit = _LAST_MICROSECOND // _MICROS_PER[unit]
            micros = pc.multiply(pc.min_element_wise(numbers, limit), _MICROS_PER[unit])
        late = _first(pc.greater_equal(micros, _LAST_MICROSECOND))
        if late is not None:
            raw = column[late].as_py()
            raise FileRefused(f"{where.at(late)}: timestamp {raw!r} is out of range")
        return micros.cast(pa.int64()).cast(utc)
    try:
        # Arrow's ISO 8601 parser refuses a time without an offset, as the contract does.
        return column.cast(utc)
    except pa.ArrowInvalid:
        # Its parser is stricter than Python's (a lowercase `z`): Python has the last word.
        return pa.chunked_array(
            [pa.array([_moment(where.at(row), raw) for row, raw in enumerate(column.to_pylist())])]
        ).cast(utc)


def _moment(where: str, raw: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise FileRefused(
            f"{where}: timestamp {raw!r} is not ISO 8601 with an offset "
            "(or give --time-unit for epoch numbers)"
        )
    return moment.astimezone(UTC)


def _symbols(where: Where, column: pa.ChunkedArray | None, rows: int, given: str | None) -> Any:
    """The file's symbol column where it has one (else `given`), checked and upper case."""
    if column is None:
        if given is None or not _SYMBOL.match(given):
            raise FileRefused(f"{where.at(0)}: symbol {given!r}: give --symbol or a column")
        return pa.repeat(pa.scalar(given.upper()), rows)
    column = pc.if_else(pc.equal(column, ""), None, column)
    if given is not None:
        column = pc.coalesce(column, given)
    bad = _first(pc.invert(pc.match_substring_regex(pc.coalesce(column, ""), _SYMBOL.pattern)))
    if bad is not None:
        raise FileRefused(
            f"{where.at(bad)}: symbol {column[bad].as_py()!r}: give --symbol or a column"
        )
    return pc.utf8_upper(column)


def _sides(where: Where, column: pa.ChunkedArray | None, rows: int) -> Any:
    if column is None:
        return pa.nulls(rows, pa.string())
    column = pc.utf8_lower(column)
    column = pc.if_else(pc.equal(column, ""), None, column)
    known = pc.is_in(column, pa.array(["buy", "sell"]))
    bad = _first(pc.and_(column.is_valid(), pc.invert(known)))
    if bad is not None:
        raise FileRefused(f"{where.at(bad)}: side {column[bad].as_py()!r} is not buy or sell")
    return column


def _ids(column: pa.ChunkedArray | None, rows: int) -> Any:
    if column is None:
        return pa.nulls(rows, pa.string())
    return pc.if_else(pc.equal(column, ""), None, column)


def trades_table(
    where: Where,
    columns: Mapping[str, pa.ChunkedArray | None],
    options: Options,
    *,
    time_unit: str | None,
) -> pa.Table:
    """The TRADES table from a file's columns, by field (`symbol`, `price`, `size`,
    `timestamp`, `trade_id`, `side`; None where the file has none), each row checked."""
    moment, price, size = (_required(where, columns, name) for name in _REQUIRED)
    rows = len(price)
    if rows == 0:
        raise FileRefused(f"{where.path}: the file holds no trades")
    return pa.table(
        [
            _symbols(where, columns.get("symbol"), rows, options.symbol),
            _decimals(where, "price", price),
            _decimals(where, "size", size),
            _moments(where, moment, time_unit),
            _ids(columns.get("trade_id"), rows),
            _sides(where, columns.get("side"), rows),
        ],
        schema=TRADES,
    )


def _required(where: Where, columns: Mapping[str, Any], name: str) -> pa.ChunkedArray:
    column = columns.get(name)
    if column is None:
        raise FileRefused(f"{where.path}: no column for the {name}")
    return pa.chunked_array([column]) if isinstance(column, pa.Array) else column


def _csv_table(path: Path, width: int | None, **options: Any) -> pa.Table:
    """The file as text columns (gzip or zstd by its extension); a row of the wrong width is
    refused naming its line."""
    if path.stat().st_size == 0:
        raise FileRefused(f"{path}: the file holds no trades")
    try:
        return pa_csv.read_csv(path, **options)
    except pa.ArrowInvalid as exc:
        raise FileRefused(_parse_error(path, width, exc)) from None


def _parse_error(path: Path, width: int | None, error: Exception) -> str:
    """pyarrow's parse error with the line it is about (it does not say which): found again
    on the error path only."""
    if width is not None and not re.search(r"\.(gz|zst)$", path.name):
        with path.open(newline="") as handle:
            for number, fields in enumerate(csv.reader(handle), start=1):
                if len(fields) != width:
                    return f"{path}:{number}: expected {width} columns, got {len(fields)}"
    return f"{path}: {error}"


_BINANCE = ["trade_id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match"]


def _binance_trades(path: Path, options: Options) -> pa.Table:
    """Binance's public trade dump (data.binance.vision, spot `trades`): no header; trade id,
    price, qty, quoteQty, time (ms, or µs from 2025), isBuyerMaker, isBestMatch."""
    if options.symbol is None:
        raise FileRefused(f"{path}: the file names no symbol: give --symbol")
    table = _csv_table(
        path,
        len(_BINANCE),
        read_options=pa_csv.ReadOptions(column_names=_BINANCE),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in _BINANCE},
            include_columns=["trade_id", "price", "qty", "time", "is_buyer_maker"],
            strings_can_be_null=True,
        ),
    )
    where = Where(path, 1)
    maker = pc.utf8_lower(pc.coalesce(table["is_buyer_maker"], ""))
    whole = r"^[0-9]{1,19}$"
    bad = _first(
        pc.invert(
            pc.and_(
                pc.match_substring_regex(pc.coalesce(table["trade_id"], ""), whole),
                pc.match_substring_regex(pc.coalesce(table["time"], ""), whole),
            )
        )
    )
    if bad is not None:
        raise FileRefused(f"{where.at(bad)}: expected trade id, price, qty, quoteQty, time…")
    bad = _first(pc.invert(pc.is_in(maker, pa.array(["true", "false"]))))
    if bad is not None:
        raw = table["is_buyer_maker"][bad].as_py()
        raise FileRefused(f"{where.at(bad)}: isBuyerMaker {raw!r} is not True or False")
    epoch = table["time"].cast(pa.int64())
    micros = pc.if_else(
        pc.greater_equal(epoch, _MICROSECONDS_FROM), epoch, pc.multiply(epoch, 1000)
    )
    columns = {
        "price": table["price"],
        "size": table["qty"],
        "timestamp": micros.cast(pa.string()),
        "trade_id": table["trade_id"],
        # The buyer was the maker: the seller took the bid, so the aggressor sold.
        "side": pc.if_else(pc.equal(maker, "true"), "sell", "buy"),
    }
    return trades_table(where, columns, options, time_unit="us")


_Columns = dict[str, pa.ChunkedArray | None]


def _headed(
    path: Path, options: Options, extra: tuple[str, ...] = ()
) -> tuple[_Columns, Where, pa.Table]:
    """A CSV file with a header (gzip or zstd by its extension): its columns by field (None
    where it has none), where its rows are, and the table read (`extra` columns too)."""
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
    table = _csv_table(
        path,
        len(header),
        convert_options=pa_csv.ConvertOptions(
            include_columns=wanted,
            column_types={column: pa.string() for column in wanted},
            strings_can_be_null=True,
        ),
    )
    columns = {name: table[column] if column in wanted else None for name, column in names.items()}
    # Line 1 is the header.
    return columns, Where(path, 2), table


def _csv(path: Path, options: Options) -> pa.Table:
    columns, where, _ = _headed(path, options)
    return trades_table(where, columns, options, time_unit=options.time_unit)


def _parquet(path: Path, options: Options) -> pa.Table:
    """A Parquet file, columns mapped to fields like a CSV header's. Decimal and integer
    columns keep their exact digits; float columns (lossy already) their shortest form;
    timestamp columns their instants; epoch numbers need --time-unit."""
    names = {name: options.columns.get(name, name) for name in COLUMNS}
    try:
        schema = pq.read_schema(path)
        for name in _REQUIRED:
            if names[name] not in schema.names:
                raise FileRefused(f"{path}: no column {names[name]!r} for the {name}")
        wanted = [column for column in set(names.values()) if column in schema.names]
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRefused(f"{path}: not a Parquet file this can read ({exc})") from None

    def text(column: str) -> pa.ChunkedArray | None:
        if column not in wanted:
            return None
        values = table[column]
        return values if pa.types.is_timestamp(values.type) else values.cast(pa.string())

    columns = {name: text(column) for name, column in names.items()}
    return trades_table(Where(path, 1), columns, options, time_unit=options.time_unit)


_POLYGON = {"timestamp": "sip_timestamp", "price": "price", "size": "size", "symbol": "ticker"}


def _polygon_trades(path: Path, options: Options) -> pa.Table:
    """Polygon/Massive flat-file trades: a header (ticker, conditions, correction, exchange, id,
    participant_timestamp, price, sequence_number, sip_timestamp, size, tape, trf_id,
    trf_timestamp), nanosecond SIP timestamps. A trade id is unique per ticker, exchange and
    TRF, so the venue id names all three."""
    polygon = Options(options.symbol, _POLYGON, "ns")
    columns, where, table = _headed(path, polygon, extra=("exchange", "trf_id", "id"))

    def part(name: str) -> pa.ChunkedArray:
        if name in table.column_names:
            return pc.coalesce(table[name], "")
        return pa.chunked_array([pa.repeat(pa.scalar(""), table.num_rows)])

    columns["trade_id"] = pc.binary_join_element_wise(
        part("exchange"), part("trf_id"), part("id"), ":"
    )
    return trades_table(where, columns, polygon, time_unit="ns")


def _dbn(path: Path, options: Options) -> pa.Table:
    # Its reader lives apart: the DBN package is an optional extra.
    from ingestion.dbn import read_dbn

    return read_dbn(path, options)


FORMATS: dict[str, Callable[[Path, Options], pa.Table]] = {
    "binance-trades": _binance_trades,
    "csv": _csv,
    "dbn": _dbn,
    "parquet": _parquet,
    "polygon-trades": _polygon_trades,
}


def read_trades(path: Path, fmt: str, options: Options) -> pa.Table:
    """Every trade of the file (the TRADES schema), in time order and otherwise in the file's,
    or FileRefused: nothing is stored from a file that fails."""
    table = FORMATS[fmt](path, options)
    moments = table["timestamp"]
    if len(moments) < 2 or pc.all(pc.greater_equal(moments[1:], moments[:-1])).as_py():
        return table  # already in time order, as most files are: no copy
    return table.take(pc.sort_indices(table, [("timestamp", "ascending")]))
