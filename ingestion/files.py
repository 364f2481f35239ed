"""Trade files in their vendors' own layouts, decoded whole (and checked) before any is stored.

Each format is one reader: file in, a list of trades out, or `FileRefused` naming the file and
line. pyarrow's CSV reader splits the file; prices and sizes stay text until Decimal reads
them, so no digit is lost to a binary float.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from persistence.trades import VenueTrade

__all__ = ["FORMATS", "FileRefused", "read_trades"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Epoch values from this on are microseconds, not milliseconds (year 5138 in milliseconds):
# Binance's spot dumps switched from one to the other on 2025-01-01.
_MICROSECONDS_FROM = 10**14
# What numeric(38, 18) holds.
_MAX_DIGITS, _MAX_DECIMALS = 38, 18


class FileRefused(ValueError):
    """A file that cannot be imported; the message names the file and the line."""


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


def _binance_trades(path: Path, symbol: str) -> list[VenueTrade]:
    """Binance's public trade dump (data.binance.vision, spot `trades`): no header; trade id,
    price, qty, quoteQty, time (ms, or µs from 2025), isBuyerMaker, isBestMatch."""
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


FORMATS: dict[str, Callable[[Path, str], list[VenueTrade]]] = {
    "binance-trades": _binance_trades,
}


def read_trades(path: Path, fmt: str, symbol: str) -> list[VenueTrade]:
    """Every trade of the file, or FileRefused: nothing is stored from a file that fails."""
    return FORMATS[fmt](path, symbol)
