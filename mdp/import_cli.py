"""`mdp import FILE...`: trades from vendors' files, each file checked whole, then stored once."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.files import FORMATS, FileRefused, read_trades
from persistence.imports import BucketsTaken, TooNew, import_trades
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
        "--repair",
        action="store_true",
        help="allow changing minutes that already hold trades (lists them, for a CDN purge)",
    )


def _format(path: Path, given: str | None) -> str:
    if given is not None:
        return given
    if _BINANCE_NAME.match(path.name):
        return "binance-trades"
    raise FileRefused(f"{path}: cannot tell the format from the name: give --format")


def _symbol(path: Path, given: str | None) -> str:
    match = _BINANCE_NAME.match(path.name)
    symbol = given or (match.group(1) if match else None)
    if symbol is None or not _SYMBOL.match(symbol):
        raise FileRefused(f"{path}: give --symbol (a code like BTCUSDT)")
    return symbol.upper()


async def _one(engine: AsyncEngine, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    symbol = _symbol(path, args.symbol)
    # Decoded and checked whole before anything is written: a refused file leaves nothing.
    trades = await asyncio.to_thread(read_trades, path, _format(path, args.format), symbol)
    async with engine.begin() as conn:
        await ensure_symbols(conn, [(symbol, symbol)])
        result = await import_trades(conn, symbol, trades, repair=args.repair)
    elapsed = time.perf_counter() - started
    return {
        "file": str(path),
        "symbol": symbol,
        "rows": len(trades),
        "stored": result.stored,
        "skipped": result.skipped,
        "bytes": path.stat().st_size,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(len(trades) / elapsed) if elapsed else None,
        "repaired_minutes": [minute.isoformat() for minute in result.repaired],
    }


async def run(engine: AsyncEngine, args: argparse.Namespace) -> int:
    """Each file in its own transaction: a rerun after Ctrl-C skips what is stored."""
    for path in args.files:
        try:
            line = await _one(engine, path, args)
        except (FileRefused, TooNew, OSError) as exc:
            print(f"mdp import: {exc}", file=sys.stderr)
            return 1
        except BucketsTaken as exc:
            print(f"mdp import: {path}: {exc}; rerun with --repair to change them", file=sys.stderr)
            return 1
        print(json.dumps(line), flush=True)
    return 0
