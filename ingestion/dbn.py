"""Databento's DBN files of the trades schema, decoded by Databento's own `databento-dbn`.

A trade record carries its instrument's numeric id, a price in units of 1e-9, nanosecond
times and the aggressor's side; the file's metadata (or, in a live capture, its symbol
mapping records) names each instrument. DBN has no trade id: a trade is named by its
publisher, capture time and venue sequence number, and its place among the records that share
them (one venue message may print several fills), so the same file read again names each
trade the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from ingestion.files import FileRefused, Options, Where, trades_table

__all__ = ["read_dbn"]

_READ_BYTES = 1 << 20


def _package(path: Path) -> Any:
    try:
        import databento_dbn
    except ImportError:
        raise FileRefused(
            f"{path}: reading DBN needs the databento-dbn package: "
            "install market-data-platform[dbn]"
        ) from None
    return databento_dbn


def _records(dbn: Any, path: Path) -> Iterator[Any]:
    zstd = path.suffix == ".zst"
    decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD if zstd else dbn.Compression.NONE)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_READ_BYTES):
                yield from decoder.write_and_decode(chunk)
    except dbn.DBNError as exc:
        raise FileRefused(f"{path}: not a DBN file this can read ({exc})") from None


class _Instruments:
    """Instrument id to symbol: the metadata's dated mappings, then mapping records."""

    def __init__(self, metadata: Any) -> None:
        self._dated: dict[int, list[tuple[date, date, str]]] = {}
        for raw_symbol, intervals in (metadata.mappings or {}).items():
            for interval in intervals:
                if interval["symbol"].isdigit():
                    self._dated.setdefault(int(interval["symbol"]), []).append(
                        (interval["start_date"], interval["end_date"], raw_symbol)
                    )
        self._live: dict[int, str] = {}

    def learn(self, instrument_id: int, symbol: str) -> None:
        self._live[instrument_id] = symbol

    def symbol(self, instrument_id: int, moment: datetime) -> str | None:
        day = moment.date()
        for start, end, symbol in self._dated.get(instrument_id, ()):
            if start <= day < end:
                return symbol
        return self._live.get(instrument_id)


def read_dbn(path: Path, options: Options) -> pa.Table:
    """Every trade record of a DBN file (`.dbn`, or `.dbn.zst`) as a TRADES table."""
    dbn = _package(path)
    if path.stat().st_size == 0:
        raise FileRefused(f"{path}: the file holds no trades")
    records = _records(dbn, path)
    metadata = next(records, None)
    if not isinstance(metadata, dbn.Metadata):
        raise FileRefused(f"{path}: not a DBN file (no metadata)")
    if metadata.schema is not None and metadata.schema != dbn.Schema.TRADES:
        raise FileRefused(f"{path}: holds {metadata.schema} records, not trades")
    instruments = _Instruments(metadata)
    where = Where(path, 1, binary=True)
    symbols: list[str | None] = []
    prices, sizes, stamps, ids, sides = [], [], [], [], []
    seen: dict[tuple[int, int, int], int] = {}
    number = 0
    for record in records:
        if isinstance(record, dbn.SymbolMappingMsg):
            instruments.learn(record.instrument_id, record.stype_in_symbol)
            continue
        if isinstance(record, dbn.SystemMsg | dbn.ErrorMsg):
            continue
        number += 1
        if not isinstance(record, dbn.TradeMsg):
            raise FileRefused(f"{where.at(number - 1)}: a {type(record).__name__}, not a trade")
        if record.price == dbn.UNDEF_PRICE:
            raise FileRefused(f"{where.at(number - 1)}: a trade without a price")
        moment = datetime.fromtimestamp(record.ts_event // 1_000_000_000, UTC)
        symbols.append(options.symbol or instruments.symbol(record.instrument_id, moment))
        prices.append(format(Decimal(record.price).scaleb(-9), "f"))
        sizes.append(str(record.size))
        stamps.append(str(record.ts_event))
        key = (record.publisher_id, record.ts_recv, record.sequence)
        seen[key] = place = seen.get(key, -1) + 1
        ids.append(f"{record.publisher_id}:{record.ts_recv}:{record.sequence}:{place}")
        # Databento's side is the aggressor's: Ask, a sell; Bid, a buy; None, not known.
        sides.append({dbn.Side.ASK: "sell", dbn.Side.BID: "buy"}.get(record.side))
    unnamed = next((row for row, symbol in enumerate(symbols) if symbol is None), None)
    if unnamed is not None:
        raise FileRefused(
            f"{where.at(unnamed)}: an instrument the file does not name: give --symbol"
        )
    columns = {
        "symbol": pa.chunked_array([pa.array(symbols, pa.string())]),
        "price": pa.chunked_array([pa.array(prices, pa.string())]),
        "size": pa.chunked_array([pa.array(sizes, pa.string())]),
        "timestamp": pa.chunked_array([pa.array(stamps, pa.string())]),
        "trade_id": pa.chunked_array([pa.array(ids, pa.string())]),
        "side": pa.chunked_array([pa.array(sides, pa.string())]),
    }
    return trades_table(where, columns, Options(), time_unit="ns")
