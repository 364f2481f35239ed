"""`make bench-import`: `mdp import` (CSV, Parquet) and `mdp backfill` against a plain COPY.

The same rows, side by side in one run, each into a fresh database at head (the same
partitioned `trades`, indexes and constraints): a plain `COPY trades FROM STDIN (FORMAT csv)`
of them, `mdp import` of a CSV and of a Parquet file holding them (decoding, checks,
de-duplication and candles included), and `mdp backfill` writing as many. `--profile` runs
each `mdp` command under py-spy too (flame graphs in `.mdp/bench/profiles/`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from bench.support import (
    BENCH,
    ROOT,
    WORK,
    EmbeddedServer,
    Server,
    as_asyncpg_dsn,
    backfill,
    git_revision,
    log,
    machine,
    recreate_database,
    results_directory,
    terminate_on_sigterm,
)
from persistence.migrate import upgrade
from tests.support import open_test_engine

RESULTS = BENCH / "results" / "imports"
FILES = WORK / "imports"
SYMBOL = "BENCH"
# The rows' span: one trade every 20 ms from here (10M rows: 2.3 days).
START = datetime(2025, 6, 2, tzinfo=UTC)
SPACING_US = 20_000
DATABASE = "mdp_bench_import"


def _rows(count: int) -> pa.Table:
    """Trades shaped like a venue's: a few hundred distinct prices, fractional sizes,
    venue ids and sides; one symbol."""
    n = pa.array(range(count), pa.int64())
    micros = pc.add(pc.multiply(n, SPACING_US), int(START.timestamp() * 1_000_000))
    cents = pc.add(10_000, pc.bit_wise_and(pc.multiply(n, 7919), 511))
    whole = pc.divide(cents, 100)  # integer division
    fraction = pc.subtract(cents, pc.multiply(whole, 100))
    price = pc.binary_join_element_wise(
        whole.cast(pa.string()), pc.utf8_lpad(fraction.cast(pa.string()), 2, "0"), "."
    )
    size = pc.binary_join_element_wise(
        "0", pc.cast(pc.add(1000, pc.bit_wise_and(pc.multiply(n, 104729), 8191)), pa.string()), "."
    )
    return pa.table(
        {
            "timestamp": micros.cast(pa.timestamp("us", tz="UTC")),
            "price": price,
            "size": size,
            "trade_id": pc.cast(pc.add(n, 5_000_000_000), pa.string()),
            "side": pc.if_else(pc.equal(pc.bit_wise_and(n, 1), 0), "buy", "sell"),
        }
    )


def write_files(count: int) -> dict[str, Path]:
    """The rows as the importer's CSV and Parquet, and as the table's own CSV for COPY."""
    FILES.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": FILES / f"trades-{count}.csv",
        "parquet": FILES / f"trades-{count}.parquet",
        "copy": FILES / f"copy-{count}.csv",
    }
    if all(path.exists() for path in paths.values()):
        return paths
    log(f"writing {count:,} rows as CSV, Parquet and COPY's CSV to {FILES.relative_to(ROOT)}")
    table = _rows(count)
    pa_csv.write_csv(table, paths["csv"])
    typed = table.set_column(1, "price", table["price"].cast(pa.decimal128(18, 2)))
    typed = typed.set_column(2, "size", typed["size"].cast(pa.decimal128(18, 4)))
    pq.write_table(typed, paths["parquet"])
    own = pa.table(
        {
            "symbol": pa.repeat(pa.scalar(SYMBOL), count),
            "price": table["price"],
            "volume": table["size"],
            "timestamp": table["timestamp"],
            "venue_trade_id": table["trade_id"],
            "side": table["side"],
        }
    )
    pa_csv.write_csv(own, paths["copy"], pa_csv.WriteOptions(include_header=False))
    return paths


async def _fresh(server: Server) -> str:
    dsn = await recreate_database(server, DATABASE)
    engine = open_test_engine(as_url(dsn))
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    return dsn


def as_url(dsn: str) -> Any:
    from sqlalchemy.engine import make_url

    return make_url(dsn).set(drivername="postgresql+asyncpg")


async def _copy(dsn: str, path: Path, count: int) -> float:
    """A plain COPY of the rows into `trades`; rows/s."""
    conn = await asyncpg.connect(dsn)
    try:
        end = START + timedelta(microseconds=count * SPACING_US)
        await conn.execute("INSERT INTO symbols (symbol, name) VALUES ($1, $2)", SYMBOL, SYMBOL)
        await conn.fetchval("SELECT mdp_ensure_trade_partitions($1, $2)", START, end)
        started = time.perf_counter()
        await conn.copy_to_table(
            "trades",
            source=path,
            columns=["symbol", "price", "volume", "timestamp", "venue_trade_id", "side"],
            format="csv",
        )
        return count / (time.perf_counter() - started)
    finally:
        await conn.close()


def _timed_copy(server: Server, path: Path, count: int) -> int:
    log(f"COPY of {count:,} rows into trades")
    dsn = asyncio.run(_fresh(server))
    rate = round(asyncio.run(_copy(dsn, path, count)))
    log(f"COPY: {rate:,} rows/s")
    return rate


def _spied(command: list[str], name: str, profile: Path | None) -> list[str]:
    if profile is None:
        return command
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    profile.mkdir(parents=True, exist_ok=True)
    return [spy, "record", "--subprocesses", "-o", str(profile / f"{name}.svg"), "--", *command]


def _import(dsn: str, path: Path, profile: Path | None) -> dict[str, Any]:
    """`mdp import` of one file: its own JSON line (time from reading the file to commit)."""
    command = [sys.executable, "-m", "mdp.cli", "import", "--symbol", SYMBOL, str(path)]
    env = {**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    done = subprocess.run(
        _spied(command, path.suffix.lstrip("."), profile),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"mdp import failed ({done.returncode}): {done.stderr}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stored = lines[-1]
    return {
        "rows": stored["rows"],
        "stored": stored["stored"],
        "seconds": stored["seconds"],
        "wall_seconds": round(wall, 1),
        "checked_seconds": round(lines[0]["rows"] / lines[0]["rows_per_second"], 1),
        "rows_per_second": stored["rows_per_second"],
    }


def measure(args: argparse.Namespace, server: Server) -> dict[str, Any]:
    paths = write_files(args.rows)
    profile = (
        WORK / "profiles" / f"imports-{time.strftime('%Y%m%dT%H%M%S')}" if args.profile else None
    )
    result: dict[str, Any] = {
        "git": git_revision(),
        "machine": machine(),
        "rows": args.rows,
        "at": datetime.now(UTC).isoformat(),
    }
    copies = [_timed_copy(server, paths["copy"], args.rows)]
    for name in ("csv", "parquet"):
        log(f"mdp import of the {name} file")
        dsn = asyncio.run(_fresh(server))
        result[f"import_{name}"] = _import(dsn, paths[name], profile)
        log(f"import {name}: {result[f'import_{name}']}")
    log(f"mdp backfill of {args.rows:,} rows")
    dsn = asyncio.run(_fresh(server))
    built = backfill(
        dsn, days=1, symbols=[SYMBOL], trades_per_second=args.rows / 86_400 + 0.01, seed=3
    )
    result["backfill"] = {"rows": built.rows, "rows_per_second": round(built.rows_per_second or 0)}
    # COPY again last: the writers are compared with the mean of a COPY before and after
    # them, so a machine that got busier or quieter meanwhile does not favour either side.
    copies.append(_timed_copy(server, paths["copy"], args.rows))
    asyncio.run(_drop(server))
    result["copy_rows_per_second_runs"] = copies
    result["copy_rows_per_second"] = copy = round(sum(copies) / len(copies))
    result["ratios"] = {
        "import_csv": round(result["import_csv"]["rows_per_second"] / copy, 3),
        "import_parquet": round(result["import_parquet"]["rows_per_second"] / copy, 3),
        "backfill": round(result["backfill"]["rows_per_second"] / copy, 3),
    }
    return result


async def _drop(server: Server) -> None:
    admin = await asyncpg.connect(server.dsn(server.database))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await admin.close()


def markdown(result: dict[str, Any]) -> str:
    copy = result["copy_rows_per_second"]
    rows = [
        (
            "plain `COPY trades FROM STDIN (FORMAT csv)`, mean of "
            + " and ".join(f"{rate:,}" for rate in result["copy_rows_per_second_runs"])
            + " (first and last)",
            copy,
            None,
        ),
        (
            "`mdp import` CSV",
            result["import_csv"]["rows_per_second"],
            result["ratios"]["import_csv"],
        ),
        (
            "`mdp import` Parquet",
            result["import_parquet"]["rows_per_second"],
            result["ratios"]["import_parquet"],
        ),
        ("`mdp backfill`", result["backfill"]["rows_per_second"], result["ratios"]["backfill"]),
    ]
    lines = [
        f"# Imports at commit {result['git']}: {result['rows']:,} rows",
        "",
        f"Load average at start {result['machine'].get('load_average')}; each writer into a "
        "fresh database at head; `mdp import` timed from reading the file to its commit.",
        "",
        "| writer | rows/s | × COPY | goal |",
        "|---|---:|---:|---|",
        *(
            f"| {name} | {rate:,} | {'' if ratio is None else f'{ratio:.2f}'} "
            f"| {'' if ratio is None else '≥ 0.6: ' + ('met' if ratio >= 0.6 else 'NOT met')} |"
            for name, rate, ratio in rows
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows (10,000,000)")
    parser.add_argument("--profile", action="store_true", help="py-spy each mdp command")
    parser.add_argument("--database-url", help="an existing server's database instead")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    embedded = None if args.database_url else EmbeddedServer()
    with terminate_on_sigterm():
        try:
            server = (
                embedded.start()
                if embedded is not None
                else Server(as_asyncpg_dsn(args.database_url))
            )
            result = measure(args, server)
            results = results_directory(RESULTS)
            results.mkdir(parents=True, exist_ok=True)
            # Named by the commit measured: results of other commits go, never left stale.
            for stale in results.glob("*.json"):
                stale.unlink()
            (results / f"{result['git']}.json").write_text(json.dumps(result, indent=2))
            (results / "latest.md").write_text(markdown(result))
            print((results / "latest.md").read_text())
            return 0
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        finally:
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
