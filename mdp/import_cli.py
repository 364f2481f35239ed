"""`mdp import FILE...`: trades from vendors' files, each file checked whole, then stored once."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from ingestion.files import COLUMNS, FORMATS, FileRefused, Options, read_trades
from persistence.imports import BucketsTaken, InDroppedMonths, TooNew, import_trades
from persistence.symbols import ensure_symbols

__all__ = ["add_command", "run"]

_SYMBOL = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
# Binance names its dumps SYMBOL-trades-YYYY-MM(-DD).csv.
_BINANCE_NAME = re.compile(r"^([A-Za-z0-9]{1,16})-trades-\d{4}-\d{2}(-\d{2})?\.csv$")


def add_command(commands: Any) -> None:
    parser = commands.add_parser(
        "import", help="load trades from files (each venue trade stored once), with candles"
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--symbol", help="the symbol of every trade (default: from the file name)")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), help="the file's layout (default: from its name)"
    )
    parser.add_argument(
        "--columns",
        type=_columns,
        default={},
        help="map fields to a header's columns: timestamp=ts,price=px,size=qty,trade_id=id,"
        "side=side,symbol=sym (default: those names)",
    )
    parser.add_argument(
        "--time-unit",
        choices=("s", "ms", "us", "ns"),
        help="epoch timestamps in this unit (default: ISO 8601 with an offset)",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="allow changing minutes that already hold trades (lists them, for a CDN purge)",
    )


def _columns(value: str) -> dict[str, str]:
    mapping = {}
    for item in value.split(","):
        name, _, column = item.partition("=")
        if name.strip() not in COLUMNS or not column.strip():
            raise argparse.ArgumentTypeError(
                f"expected field=column with a field among {', '.join(COLUMNS)}, got {item!r}"
            )
        mapping[name.strip()] = column.strip()
    return mapping


def _format(path: Path, given: str | None) -> str:
    """The format given, else from the name (Binance's dumps), else from the header."""
    if given is not None:
        return given
    if _BINANCE_NAME.match(path.name):
        return "binance-trades"
    if path.suffix == ".parquet":
        return "parquet"
    if re.search(r"\.dbn(\.zst)?$", path.name):
        return "dbn"
    if re.search(r"\.csv(\.gz|\.zst)?$", path.name):
        try:
            header = set(pa_csv.open_csv(path).schema.names)
        except (pa.ArrowInvalid, OSError):
            header = set()
        return "polygon-trades" if {"ticker", "sip_timestamp"} <= header else "csv"
    raise FileRefused(f"{path}: cannot tell the format from the name: give --format")


def _symbol(path: Path, given: str | None) -> str | None:
    match = _BINANCE_NAME.match(path.name)
    symbol = given or (match.group(1) if match else None)
    if symbol is not None and not _SYMBOL.match(symbol):
        raise FileRefused(f"{path}: --symbol {symbol!r} is not a code like BTCUSDT")
    return symbol.upper() if symbol is not None else None


def _rate(rows: int, started: float) -> int | None:
    elapsed = time.perf_counter() - started
    return round(rows / elapsed) if elapsed else None


async def _one(
    engine: AsyncEngine,
    path: Path,
    args: argparse.Namespace,
    progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    started = time.perf_counter()
    options = Options(_symbol(path, args.symbol), args.columns, args.time_unit)
    # Decoded and checked whole before anything is written: a refused file leaves nothing.
    trades = await asyncio.to_thread(read_trades, path, _format(path, args.format), options)
    symbols = sorted(pc.unique(trades["symbol"]).to_pylist())
    size = path.stat().st_size
    line = {"file": str(path), "symbols": symbols, "rows": trades.num_rows, "bytes": size}
    progress({**line, "phase": "checked", "rows_per_second": _rate(trades.num_rows, started)})
    stored = skipped = 0
    repaired: list[str] = []
    # One transaction per file, whatever symbols it holds.
    async with engine.begin() as conn:
        await ensure_symbols(conn, ((symbol, symbol) for symbol in symbols))
        for symbol in symbols:
            only = len(symbols) == 1
            rows = trades if only else trades.filter(pc.equal(trades["symbol"], symbol))
            result = await import_trades(conn, symbol, rows, repair=args.repair)
            stored, skipped = stored + result.stored, skipped + result.skipped
            repaired += [f"{symbol} {minute.isoformat()}" for minute in result.repaired]
    return {
        **line,
        "phase": "stored",
        "stored": stored,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 3),
        "rows_per_second": _rate(trades.num_rows, started),
        "repaired_minutes": repaired,
    }


async def run(engine: AsyncEngine, args: argparse.Namespace) -> int:
    """Each file in its own transaction: a rerun after Ctrl-C skips what is stored. A bar on
    a terminal; otherwise JSON lines: one when a file is checked, one when it is stored (with
    the changed minutes under --repair)."""
    sizes = {path: path.stat().st_size if path.is_file() else 0 for path in args.files}
    bar = tqdm(
        total=sum(sizes.values()), unit="B", unit_scale=True, disable=not sys.stderr.isatty()
    )

    def progress(line: dict[str, Any]) -> None:
        if bar.disable:
            print(json.dumps(line), flush=True)

    try:
        for path in args.files:
            bar.set_description(path.name)
            try:
                line = await _one(engine, path, args, progress)
            except (FileRefused, TooNew, OSError) as exc:
                print(f"mdp import: {exc}", file=sys.stderr)
                return 1
            except InDroppedMonths as exc:
                print(f"mdp import: {path}: {exc}", file=sys.stderr)
                return 1
            except BucketsTaken as exc:
                print(
                    f"mdp import: {path}: {exc}; rerun with --repair to change them",
                    file=sys.stderr,
                )
                return 1
            bar.update(sizes[path])
            progress(line)
            if not bar.disable:
                bar.set_postfix(rows=line["rows"], stored=line["stored"])
                for minute in line["repaired_minutes"]:
                    bar.write(f"repaired {minute}")
    finally:
        bar.close()
    return 0
