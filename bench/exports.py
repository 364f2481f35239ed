"""`make bench-exports`: /export/trades throughput against PostgreSQL's own COPY, and memory.

    .venv/bin/python -m bench.exports            # 5 symbols x 5 trade/s x 4.8 days (10.4M rows)

Measures, on one database and in one run: rows/s of a ~3M-row window exported as CSV and as
Arrow by the service, of `COPY (SELECT …) TO STDOUT (FORMAT csv)` of the same rows (the
export's own query, PostgreSQL's own text forms), and of walking `/trades` pages; then the
service's peak RSS while it exports every row (10M+) as CSV and as Arrow, against its idle RSS.
Writes bench/results/exports/<commit>.json and latest.md (under .mdp/bench/uncommitted/
instead when the tree has uncommitted changes).
Stops everything it started, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/exports.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.dataset import build_database  # noqa: E402
from bench.run import _mdp  # noqa: E402
from bench.support import (  # noqa: E402
    BENCH,
    HOST,
    ROOT,
    WORK,
    EmbeddedServer,
    Processes,
    Server,
    as_asyncpg_dsn,
    git_revision,
    log,
    machine,
    results_directory,
    terminate_on_sigterm,
    wait_http,
)
from persistence.exports import plan_trades, trades_query  # noqa: E402
from tests.support import free_port  # noqa: E402

RESULTS = BENCH / "results" / "exports"
# Uncompressed, with the run's API key (AUTH_MODE=required, as deployed).
HEADERS = {"Accept-Encoding": "identity"}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _bounds(dsn: str) -> tuple[datetime, datetime]:
    conn = await asyncpg.connect(dsn)
    try:
        low, high = await conn.fetchrow("SELECT min(timestamp), max(timestamp) FROM trades")
    finally:
        await conn.close()
    return low, high + timedelta(microseconds=1)


async def _copy(dsn: str, symbols: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    """The export's own query through COPY … TO STDOUT: the floor for any export."""
    conn = await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC", "jit": "off"})
    received = [0, 0]

    async def sink(chunk: bytes) -> None:
        received[0] += len(chunk)
        received[1] += chunk.count(b"\n")

    try:
        started = time.perf_counter()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            # The plan the export's COPY runs with: the floor reads the rows the same way.
            await plan_trades(conn)
            await conn.copy_from_query(
                trades_query(len(symbols), "typed"), start, end, *symbols, output=sink, format="csv"
            )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"rows": received[1], "bytes": received[0], "seconds": round(seconds, 3)}


def _export(
    base: str, symbols: list[str], start: datetime, end: datetime, fmt: str
) -> dict[str, Any]:
    params = {"symbols": ",".join(symbols), "start": _iso(start), "end": _iso(end), "format": fmt}
    size = 0
    started = time.perf_counter()
    with httpx.stream(
        "GET", f"{base}/export/trades", params=params, headers=HEADERS, timeout=600
    ) as r:
        r.raise_for_status()
        rows = int(r.headers["x-row-count"])
        for chunk in r.iter_raw():
            size += len(chunk)
    seconds = time.perf_counter() - started
    return {"rows": rows, "bytes": size, "seconds": round(seconds, 3)}


def _walk(
    base: str, symbols: list[str], start: datetime, end: datetime, pages: int
) -> dict[str, Any]:
    """`/trades` pages of 1,000, one symbol after the other, for at most `pages` pages."""
    rows = done = 0
    started = time.perf_counter()
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        for symbol in symbols:
            params: dict[str, Any] = {
                "symbol": symbol,
                "start": _iso(start),
                "end": _iso(end),
                "order": "asc",
                "limit": 1000,
            }
            while done < pages:
                body = client.get("/trades", params=params).json()
                rows += body["count"]
                done += 1
                if body["next_cursor"] is None:
                    break
                params["cursor"] = body["next_cursor"]
    seconds = time.perf_counter() - started
    return {"rows": rows, "pages": done, "seconds": round(seconds, 3)}


class PeakRss(threading.Thread):
    """Samples a process's RSS every 20 ms until stopped; keeps the largest."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.join()


def _mib(size: float) -> float:
    return round(size / 2**20, 1)


def _rate(run: dict[str, Any]) -> float:
    return run["rows"] / run["seconds"]


def measure(args: argparse.Namespace, server: Server, processes: Processes) -> dict[str, Any]:
    database = build_database(server, args, own_server=args.database_url is None)
    dsn = database["dsn"]
    symbols = database["symbols"]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATABASE_READ_URL")},
        "DATABASE_URL": dsn,
        "HOST": HOST,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "INGESTION_ENABLED": "false",
        "SYMBOLS": ",".join(symbols),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scopes = ("--scopes", "read,export", "--rate-limit", "1000000/s")
    HEADERS["X-API-Key"] = _mdp(env, "keys", "create", "--name", "bench-exports", *scopes)
    service = processes.start(
        "service",
        [sys.executable, "-m", "mdp.cli", "serve"],
        env,
        WORK / "logs" / stamp / "exports.log",
    )
    base = f"http://{HOST}:{port}"
    wait_http(f"{base}/health", service)
    low, high = asyncio.run(_bounds(dsn))
    # The newest ~window_rows rows of every symbol together.
    start = high - timedelta(seconds=args.window_rows / (len(symbols) * args.trades_per_second))
    log(f"window {_iso(start)} .. {_iso(high)}; warm-up export")
    _export(base, symbols, high - timedelta(minutes=10), high, "csv")
    runs: dict[str, list[dict[str, Any]]] = {"copy": [], "csv": [], "arrow": []}
    for attempt in range(args.repeat):
        runs["copy"].append(asyncio.run(_copy(dsn, symbols, start, high)))
        for fmt in ("csv", "arrow"):
            runs[fmt].append(_export(base, symbols, start, high, fmt))
        log(
            f"run {attempt + 1}/{args.repeat}: "
            + ", ".join(f"{k} {_rate(v[-1]):,.0f} rows/s" for k, v in runs.items())
        )
    walk = _walk(base, symbols, start, high, args.walk_pages)
    log(f"/trades walk: {_rate(walk):,.0f} rows/s over {walk['pages']} pages")
    memory: dict[str, Any] = {"idle_mib": _mib(psutil.Process(service.pid).memory_info().rss)}
    for fmt in ("csv", "arrow"):
        with PeakRss(service.pid) as peak:
            whole = _export(base, symbols, low, high, fmt)
        memory[fmt] = {**whole, "peak_mib": _mib(peak.peak)}
        log(f"whole history as {fmt}: {whole['rows']:,} rows, peak RSS {_mib(peak.peak)} MiB")
    median = {k: statistics.median(_rate(r) for r in v) for k, v in runs.items()}
    return {
        "timestamp": stamp,
        "git": git_revision(),
        "machine": machine(),
        "database": {k: v for k, v in database.items() if k != "dsn"},
        "window": {"start": _iso(start), "end": _iso(high), "rows": runs["csv"][0]["rows"]},
        "runs": runs,
        "rows_per_second": {k: round(v) for k, v in median.items()},
        "walk": {**walk, "rows_per_second": round(_rate(walk))},
        "memory": memory,
    }


def markdown(result: dict[str, Any]) -> str:
    rps = result["rows_per_second"]
    walk = result["walk"]["rows_per_second"]
    mem = result["memory"]
    m = result["machine"]

    def met(flag: bool) -> str:
        return "yes" if flag else "**no**"

    rows = [
        ("CSV export ÷ COPY", rps["csv"] / rps["copy"], 0.7),
        ("Arrow export ÷ COPY", rps["arrow"] / rps["copy"], 1.0),
        ("CSV export ÷ `/trades` walk", rps["csv"] / walk, 20.0),
        ("Arrow export ÷ `/trades` walk", rps["arrow"] / walk, 20.0),
    ]
    lines = [
        f"# Export benchmark {result['timestamp']}",
        "",
        f"Service at {result['git']}; {m['nproc']} CPUs ({m['cpu_model']}), shared with other "
        f"work (figures are noisy). Window: {result['window']['rows']:,} trades of "
        f"{len(result['database']['symbols'])} symbols; median of "
        f"{len(result['runs']['csv'])} runs, COPY and exports alternating.",
        "",
        "| what | rows/s |",
        "|---|---:|",
        f"| `COPY (SELECT …) TO STDOUT (FORMAT csv)` of the export's query | {rps['copy']:,} |",
        f"| `/export/trades` CSV | {rps['csv']:,} |",
        f"| `/export/trades` Arrow | {rps['arrow']:,} |",
        f"| `/trades` walk, pages of 1,000 ({result['walk']['pages']} pages) | {walk:,} |",
        "",
        "| ratio | value | goal | met? |",
        "|---|---:|---|---|",
        *(
            f"| {name} | {value:.2f} | ≥ {goal:g} | {met(value >= goal)} |"
            for name, value, goal in rows
        ),
        "",
        "| export of every row | rows | peak RSS MiB | idle RSS MiB | growth | goal | met? |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for fmt in ("csv", "arrow"):
        growth = mem[fmt]["peak_mib"] - mem["idle_mib"]
        lines.append(
            f"| {fmt} | {mem[fmt]['rows']:,} | {mem[fmt]['peak_mib']} | {mem['idle_mib']} "
            f"| {growth:+.1f} | ≤ +50 MiB | {met(growth <= 50)} |"
        )
    return "\n".join([*lines, ""])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=4.8, help="history to backfill (4.8)")
    parser.add_argument("--symbols", type=int, default=5, help="symbols (5)")
    parser.add_argument("--trades-per-second", type=float, default=5.0, help="per symbol (5)")
    parser.add_argument("--window-rows", type=int, default=3_000_000, help="rows per timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (3)")
    parser.add_argument("--walk-pages", type=int, default=300, help="/trades pages walked (300)")
    parser.add_argument("--database-url", help="an existing server's database instead")
    args = parser.parse_args(argv)
    # Exports do not care how fresh the history is: never rebuild it for a gap.
    args.max_gap_minutes = 10**6
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes = Processes()
    embedded = None if args.database_url else EmbeddedServer()
    with terminate_on_sigterm():
        try:
            server = (
                embedded.start()
                if embedded is not None
                else Server(as_asyncpg_dsn(args.database_url))
            )
            result = measure(args, server, processes)
            results = results_directory(RESULTS)
            results.mkdir(parents=True, exist_ok=True)
            # Named by the commit measured: results of other commits go, never left stale.
            for stale in results.glob("*.json"):
                stale.unlink()
            (results / f"{result['git']}.json").write_text(
                json.dumps(result, indent=2, default=str)
            )
            (results / "latest.md").write_text(markdown(result))
            print((results / "latest.md").read_text())
            return 0
        except KeyboardInterrupt:
            log("interrupted: stopping everything this run started")
            return 130
        finally:
            processes.stop_all()
            if embedded is not None:
                embedded.stop()


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
