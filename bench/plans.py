"""Query plans of the hot queries at scale: `EXPLAIN (ANALYZE, BUFFERS)` of the SQL the service
really sends, captured from the persistence functions themselves, on the partitioned trades table.

    .venv/bin/python -m bench.plans                        # 30M and 100M trades, embedded server
    .venv/bin/python -m bench.plans --sizes 30m --server postgresql://postgres@127.0.0.1/postgres

Each size is a database (`mdp_plans_<size>`) built once and reused afterwards: 5 symbols over
36 months of history, written by COPY (bench.dataset.copy_history), not the service's loop.
The 30M one is written into the schema before trades v2 (migration 0008) and then migrated, so
its build also times migration 0009 at 30M rows; the 100M one is written into today's schema.
Candles are materialised by the leader's own function, a week per transaction. Plans go to
bench/plans/<commit>/<size>/<query>.txt, with the custom plan (what a first execution gets) and
the generic plan (what a prepared statement may switch to after five executions);
bench/plans/<commit>/summary.md compares the sizes and records how each database was built.
A run removes the plans of other commits (`--build-only` leaves them); with uncommitted
changes it writes under .mdp/bench/uncommitted/plans/ instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/plans.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from bench.dataset import copy_history, execute  # noqa: E402
from bench.support import (  # noqa: E402
    BENCH,
    EmbeddedServer,
    Server,
    as_asyncpg_dsn,
    ensure_database,
    git_revision,
    log,
    recreate_database,
    results_directory,
    symbol_codes,
    terminate_on_sigterm,
)
from mdp.engines import open_engine  # noqa: E402
from mdp.settings import Settings  # noqa: E402
from persistence import candles, finality, symbols, trades  # noqa: E402
from persistence.connections import driver_connection  # noqa: E402
from persistence.materialise import advance_watermark  # noqa: E402
from persistence.partitions import ensure_ahead  # noqa: E402
from persistence.symbols import ensure_symbols  # noqa: E402

PLANS = BENCH / "plans"


@dataclass(frozen=True)
class Size:
    rows: int
    # Written into the schema before trades v2 and migrated (timing migration 0009).
    migrated: bool


SIZES = {"30m": Size(30_000_000, migrated=True), "100m": Size(100_000_000, migrated=False)}
SYMBOL = "AAPL"
# History of every size: 36 whole months before the build (37 monthly partitions holding
# trades, and the 3 the leader keeps ahead).
HISTORY = timedelta(days=36 * 365.25 / 12)
# Before trades v2 prices had 6 decimals and sizes were whole; after it, a venue's digits.
LEGACY_SCALES = {"price_scale": 6, "volume_scale": 0}
VENUE_SCALES = {"price_scale": 8, "volume_scale": 5}
# Candles materialised per transaction while building.
CANDLE_SPAN = timedelta(days=7)
# The service's session settings (persistence.connections.create_engine).
SESSION = {"jit": "off", "max_parallel_workers_per_gather": "0"}


@dataclass
class Captured:
    name: str
    sql: str
    params: tuple[Any, ...]


class Recorder:
    """Records every statement an engine sends, under the name of the step running."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.step = ""
        self.statements: list[Captured] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if self.step:
            self.statements.append(Captured(self.step, sql, tuple(params or ())))

    def driver(self, conn: asyncpg.Connection) -> _RecordingDriver:
        """The hot reads go to the driver connection itself, past SQLAlchemy's events."""
        return _RecordingDriver(self, conn)

    async def run(self, step: str, call: Callable[[], Awaitable[object]]) -> list[Captured]:
        self.step, start = step, len(self.statements)
        try:
            await call()
        finally:
            self.step = ""
        return self.statements[start:]


class _RecordingDriver:
    """An asyncpg connection whose fetches are recorded under the step running."""

    def __init__(self, recorder: Recorder, conn: asyncpg.Connection) -> None:
        self.recorder = recorder
        self.conn = conn

    def _note(self, sql: str, args: tuple[Any, ...]) -> None:
        if self.recorder.step:
            self.recorder.statements.append(Captured(self.recorder.step, sql, args))

    async def fetch(self, sql: str, *args: Any) -> Any:
        self._note(sql, args)
        return await self.conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self._note(sql, args)
        return await self.conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        self._note(sql, args)
        return await self.conn.fetchval(sql, *args)


async def capture(engine: AsyncEngine, anchor: datetime) -> list[Captured]:
    """Runs the service's query functions as its handlers do, recording their SQL.

    `now` is pinned just after the newest trade, so the open buckets hold trades whatever the
    age of the database. A candle read is one statement, the same on every request.
    """
    recorder = Recorder(engine)
    now = anchor + timedelta(milliseconds=500)
    hour, day, week = timedelta(hours=1), timedelta(days=1), timedelta(days=7)
    wanted: list[Captured] = []

    async with engine.connect() as conn:
        oldest = await trades.oldest_trade(conn, SYMBOL)
        assert oldest is not None
        middle = oldest[0] + (anchor - oldest[0]) / 2
        row = (
            await conn.exec_driver_sql(
                "SELECT timestamp, id FROM trades WHERE symbol = $1 AND timestamp <= $2 "
                "ORDER BY timestamp DESC, id DESC LIMIT 1",
                (SYMBOL, middle),
            )
        ).one()
        deep = (row[0], row[1])

        def one(name: str, call: Callable[[], Awaitable[object]]) -> Awaitable[list[Captured]]:
            return recorder.run(name, call)

        driver = recorder.driver(await driver_connection(conn))

        async def page(**kw: Any) -> object:
            return await trades.list_trades(driver, symbol=SYMBOL, limit=101, **kw)

        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("health_select_1", lambda: conn.exec_driver_sql("SELECT 1")),
            ("latest_price", lambda: trades.latest_trade(driver, SYMBOL)),
            ("symbol_exists", lambda: symbols.symbol_exists(driver, SYMBOL)),
            ("symbols_page", lambda: symbols.list_symbols(driver, limit=101, after=None)),
            ("symbols_page_after", lambda: symbols.list_symbols(driver, limit=101, after="AMZN")),
            (
                "trades_desc_1h",
                lambda: page(start=now - hour, end=None, descending=True, after=None),
            ),
            (
                "trades_asc_1h",
                lambda: page(start=now - hour, end=None, descending=False, after=None),
            ),
            (
                "trades_desc_no_window",
                lambda: page(start=None, end=None, descending=True, after=None),
            ),
            (
                "trades_desc_deep_cursor",
                lambda: page(start=None, end=None, descending=True, after=deep),
            ),
            (
                "trades_asc_deep_cursor",
                lambda: page(start=None, end=None, descending=False, after=deep),
            ),
            (
                "trades_asc_day_window_deep_cursor",
                lambda: page(start=deep[0] - day, end=deep[0] + day, descending=False, after=deep),
            ),
        ]
        for name, call in steps:
            wanted += await one(name, call)

        windows = [
            ("candles_1m_1h", "1m", now - hour, 500),
            ("candles_1m_24h", "1m", now - day, 5000),
            ("candles_1h_7d", "1h", now - week, 500),
            # The default page of daily candles: 500 days, i.e. the whole history here.
            ("candles_1d_default", "1d", now - 500 * day, 500),
        ]
        for name, interval, start, limit in windows:
            step = finality.INTERVALS[interval]
            lo = finality.bucket_ceil(start, step)
            hi = finality.bucket_floor(now, step) + step

            def read(
                interval: str = interval,
                step: timedelta = step,
                lo: datetime = lo,
                hi: datetime = hi,
                limit: int = limit,
            ) -> Any:
                # What `/candles` sends: the page with its candles as one JSON array.
                return candles.read_candle_page_json(
                    driver, symbol=SYMBOL, interval=interval, step=step, lo=lo, hi=hi, limit=limit
                )

            for statement in await one(f"{name}.page", read):
                wanted.append(_named(statement, f"{name}.page"))
    # A step may send several statements (a bounded read, then the unbounded one when the
    # bound found nothing): keep names unique.
    seen: dict[str, int] = {}
    for item in wanted:
        seen[item.name] = seen.get(item.name, 0) + 1
        if seen[item.name] > 1:
            item.name = f"{item.name}_{seen[item.name]}"
    return wanted


def _named(statement: Captured, name: str) -> Captured:
    return Captured(name, statement.sql, statement.params)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'"
    if isinstance(value, timedelta):
        return f"'{value.total_seconds()} seconds'"
    return "'" + str(value).replace("'", "''") + "'"


async def explain(dsn: str, statement: Captured) -> tuple[str, str, str]:
    """The custom and the generic plan, each from EXPLAIN (ANALYZE, BUFFERS) EXECUTE of the
    statement prepared as the driver prepares it (asyncpg uses named prepared statements)."""
    conn = await asyncpg.connect(dsn, server_settings=SESSION)
    plans = []
    try:
        await conn.execute(f"PREPARE bench_plan AS {statement.sql}")
        arguments = ", ".join(_literal(v) for v in statement.params)
        execute = f"EXECUTE bench_plan({arguments})" if arguments else "EXECUTE bench_plan"
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {execute}")
            plans.append("\n".join(r[0] for r in rows))
        # What the service's prepared statement ends up with: PostgreSQL tries five custom
        # plans, then keeps the generic one if it is not estimated dearer.
        await conn.execute("RESET plan_cache_mode; DEALLOCATE bench_plan")
        await conn.execute(f"PREPARE bench_plan AS {statement.sql}")
        for _ in range(7):
            await conn.execute(execute)
        generic, _ = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE name = 'bench_plan'"
        )
        chosen = "generic" if generic else "custom"
    finally:
        await conn.close()
    return plans[0], plans[1], chosen


@dataclass
class Summary:
    name: str
    nodes: list[str]
    buffers: int
    rows: int
    heap_fetches: int
    ms: float
    generic_nodes: list[str]
    generic_ms: float
    generic_planning_ms: float
    chosen: str
    planning_ms: float
    # Partitions of `trades` each plan reads (EXPLAIN ANALYZE lists only those not pruned).
    partitions: int
    generic_partitions: int


_NODE = re.compile(
    r"(Seq Scan|Index Only Scan(?: Backward)?|Index Scan(?: Backward)?|Bitmap Heap Scan|"
    r"Bitmap Index Scan|Result|Function Scan)(?: using (\w+))? on (\w+)|(Result|Function Scan)"
)


_PARTITION = re.compile(r"trades_y\d{4}m\d{2}")


def summarise(name: str, custom: str, generic: str, chosen: str) -> Summary:
    def nodes(plan: str) -> list[str]:
        found = []
        for m in _NODE.finditer(plan):
            if m[4]:
                continue
            found.append(f"{m[1]} {m[3]}" + (f" ({m[2]})" if m[2] else ""))
        return found

    def partitions(plan: str) -> int:
        # Run-time pruning leaves the plan's other partitions "never executed".
        read = (line for line in plan.splitlines() if "never executed" not in line)
        return len({name for line in read for name in _PARTITION.findall(line)})

    first_buffers = re.search(r"Buffers: shared (?:hit=(\d+))?\s*(?:read=(\d+))?", custom)
    buffers = sum(int(x) for x in first_buffers.groups() if x) if first_buffers else 0
    rows = re.search(r"actual time=[\d.]+\.\.[\d.]+ rows=([\d.]+)", custom)
    fetches = sum(int(x) for x in re.findall(r"Heap Fetches: (\d+)", custom))

    def ms(plan: str, what: str = "Execution") -> float:
        match = re.search(rf"{what} Time: ([\d.]+) ms", plan)
        return float(match[1]) if match else float("nan")

    return Summary(
        name,
        nodes(custom),
        buffers,
        int(float(rows[1])) if rows else 0,
        fetches,
        ms(custom),
        nodes(generic),
        ms(generic),
        ms(generic, "Planning"),
        chosen,
        ms(custom, "Planning"),
        partitions(custom),
        partitions(generic),
    )


async def table_facts(dsn: str) -> dict[str, Any]:
    """Rows, partitions and sizes of `trades` (summed over its partitions), and the depth of
    the symbol index in its largest partition."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        parts = await conn.fetch(
            "SELECT relid::regclass::text AS name, pg_relation_size(relid) AS heap "
            "FROM pg_partition_tree('trades') WHERE isleaf ORDER BY heap DESC"
        )
        sizes = {
            index: await conn.fetchval(
                "SELECT pg_size_pretty(sum(pg_relation_size(relid))) "
                "FROM pg_partition_tree($1::regclass) WHERE isleaf",
                index,
            )
            for index in ("ix_trades_symbol_timestamp_id", "pk_trades")
        }
        largest = await conn.fetchval(
            "SELECT i.indexrelid::regclass::text FROM pg_index AS i "
            "JOIN pg_inherits AS h ON h.inhrelid = i.indexrelid "
            "WHERE i.indrelid = $1::regclass "
            "AND h.inhparent = 'ix_trades_symbol_timestamp_id'::regclass",
            parts[0]["name"],
        )
        levels = await conn.fetchval("SELECT level FROM bt_metap($1)", largest)
        facts: dict[str, Any] = {
            "trades": await conn.fetchval("SELECT count(*) FROM trades"),
            "partitions": len(parts),
            "partitions holding trades": sum(1 for part in parts if part["heap"] > 0),
            "heap": await conn.fetchval(
                "SELECT pg_size_pretty($1::bigint)", sum(part["heap"] for part in parts)
            ),
            "ix_trades_symbol_timestamp_id": f"{sizes['ix_trades_symbol_timestamp_id']} "
            f"({levels + 1} levels in the largest partition)",
            "pk_trades": sizes["pk_trades"],
            "candles": await conn.fetchval("SELECT count(*) FROM candles"),
        }
    finally:
        await conn.close()
    return facts


def _alembic(dsn: str, *argv: str) -> float:
    """`mdp alembic …` on `dsn`, as an operator runs it; returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mdp.cli", "alembic", *argv],
        env={**os.environ, "DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"},
        check=True,
    )
    return round(time.perf_counter() - started, 1)


async def _materialise(dsn: str) -> float:
    """Every candle of the history, as the ingestion leader computes them; returns seconds."""
    engine = open_engine(Settings(), make_url(dsn).set(drivername="postgresql+asyncpg"), "bench")
    started = time.perf_counter()
    try:
        while True:
            async with engine.begin() as conn:
                step = await advance_watermark(conn, span=CANDLE_SPAN)
            assert step is not None, "nothing else writes candles here"
            if step.caught_up:
                break
            log(f"candles materialised up to {step.after:%Y-%m-%d}")
    finally:
        await engine.dispose()
    return round(time.perf_counter() - started, 1)


async def build(server: Server, size: str) -> dict[str, Any]:
    """The database of `size`, built once (how, and how long it took, in its comment)."""
    name = f"mdp_plans_{size}"
    dsn, existed = await ensure_database(server, name)
    if existed:
        conn = await asyncpg.connect(dsn)
        try:
            comment = await conn.fetchval(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                "WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        if comment:
            log(f"{size}: reusing {name}")
            built: dict[str, Any] = json.loads(comment)
            return built
        dsn = await recreate_database(server, name)
    spec = SIZES[size]
    codes = symbol_codes(5)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - HISTORY
    facts: dict[str, Any] = {"history": f"{start:%Y-%m-%d} .. {end:%Y-%m-%d}"}
    log(f"{size}: {spec.rows:,} trades of {len(codes)} symbols, {facts['history']}, by COPY")
    if spec.migrated:
        # The table as it was before trades v2, filled, vacuumed, then migrated.
        _alembic(dsn, "upgrade", "0008")
        copied = await copy_history(dsn, codes, start, end, spec.rows, **LEGACY_SCALES)
        await execute(dsn, "VACUUM (ANALYZE) trades")
        log(f"{size}: migration 0009 (trades v2) at {spec.rows:,} rows")
        facts["migration 0009 seconds"] = _alembic(dsn, "upgrade", "0009")
        log(f"{size}: migration 0009 took {facts['migration 0009 seconds']} s")
        _alembic(dsn, "upgrade", "head")
    else:
        _alembic(dsn, "upgrade", "head")
        conn = await asyncpg.connect(dsn)
        try:
            await ensure_ahead(conn, start, end - start + timedelta(days=1))
        finally:
            await conn.close()
        copied = await copy_history(dsn, codes, start, end, spec.rows, **VENUE_SCALES)
    facts["COPY rows/s"] = round(spec.rows / copied)
    engine = open_engine(Settings(), make_url(dsn).set(drivername="postgresql+asyncpg"), "bench")
    try:
        async with engine.begin() as conn:
            await ensure_symbols(conn, ((code, code) for code in codes))
    finally:
        await engine.dispose()
    facts["candles seconds"] = await _materialise(dsn)
    # Plans as autovacuum would leave them: visibility map set, statistics current.
    await execute(dsn, "VACUUM (ANALYZE) trades, candles")
    await execute(dsn, f"COMMENT ON DATABASE \"{name}\" IS '{json.dumps(facts)}'")
    return facts


async def plan_size(server: Server, out: Path, size: str) -> tuple[dict[str, Any], list[Summary]]:
    built = await build(server, size)
    dsn = server.dsn(f"mdp_plans_{size}")
    # A database built at an older commit gets this one's schema.
    _alembic(dsn, "upgrade", "head")
    conn = await asyncpg.connect(dsn)
    try:
        anchor = await conn.fetchval("SELECT max(timestamp) FROM trades WHERE symbol = $1", SYMBOL)
    finally:
        await conn.close()
    # The service's session settings, with room for the slowest plan.
    engine = open_engine(Settings(), make_url(dsn).set(drivername="postgresql+asyncpg"), "bench")
    try:
        statements = await capture(engine, anchor)
    finally:
        await engine.dispose()
    summaries = await write_plans(dsn, statements, out / size, f"{size} trades")
    log(f"{size}: {len(statements)} plans in {out / size}/")
    return {**await table_facts(dsn), **built}, summaries


async def write_plans(dsn: str, statements: list[Captured], out: Path, label: str) -> list[Summary]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.txt"):
        stale.unlink()
    summaries = []
    for statement in statements:
        custom, generic, chosen = await explain(dsn, statement)
        summaries.append(summarise(statement.name, custom, generic, chosen))
        (out / f"{statement.name}.txt").write_text(
            f"-- {statement.name} at {label}\n"
            f"-- parameters: {_params_text(statement.params)}\n"
            f"{statement.sql.strip()}\n\n"
            f"-- custom plan (plan_cache_mode = force_custom_plan)\n{custom}\n\n"
            f"-- generic plan (plan_cache_mode = force_generic_plan)\n{generic}\n\n"
            f"-- after 7 executions of the prepared statement, PostgreSQL uses: {chosen}\n"
        )
    return summaries


def _params_text(params: tuple[Any, ...]) -> str:
    return ", ".join(
        f"${i}={value.isoformat() if isinstance(value, datetime) else value!r}"
        for i, value in enumerate(params, 1)
    )


def write_summary(out: Path, results: dict[str, tuple[dict[str, Any], list[Summary]]]) -> None:
    sizes = list(results)
    lines = ["# Plan summary (generated by `python -m bench.plans`)", ""]
    for size in sizes:
        facts = results[size][0]
        lines.append(f"- **{size}**: " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    lines += [
        "",
        "Buffers = shared buffers touched by the custom plan (hit + read); parts = partitions "
        "of `trades` the plan reads (pruned when planning or at run time); plan ms and ms = "
        "planning and execution time of that EXPLAIN ANALYZE (warm cache, one run: noisy). "
        "Generic = the "
        "plan a prepared statement may switch to after five executions, planned once and "
        "cached (its partitions are "
        "pruned when it starts).",
        "",
        "| query | scans (custom plan) | "
        + " | ".join(f"{s} rows | {s} buffers | {s} parts | {s} plan ms | {s} ms" for s in sizes)
        + " | generic plan same scans? | "
        + " | ".join(f"{s} generic parts | {s} generic plan ms | {s} generic ms" for s in sizes)
        + " | prepared statement uses |",
        "|---|---|" + "---:|" * (5 * len(sizes)) + "---|" + "---:|" * (3 * len(sizes)) + "---|",
    ]
    by_name = {s: {x.name: x for x in results[s][1]} for s in sizes}
    for name in by_name[sizes[0]]:
        rows = [by_name[s].get(name) for s in sizes]
        first = rows[0]
        assert first is not None
        cells = []
        generic = []
        for row in rows:
            if row is None:
                cells += ["–"] * 5
                generic += ["–"] * 3
            else:
                cells += [
                    f"{row.rows:,}",
                    f"{row.buffers:,}",
                    f"{row.partitions}",
                    f"{row.planning_ms:.3f}",
                    f"{row.ms:.3f}",
                ]
                generic += [
                    f"{row.generic_partitions}",
                    f"{row.generic_planning_ms:.3f}",
                    f"{row.generic_ms:.3f}",
                ]
        same = all(r is not None and r.generic_nodes == r.nodes for r in rows)
        scans = Counter(_PARTITION.sub("trades_<month>", node) for node in first.nodes)
        read = "; ".join(f"{n}× {node}" if n > 1 else node for node, n in scans.items())
        lines.append(
            f"| {name} | {read or 'no table'} | "
            + " | ".join(cells)
            + f" | {'yes' if same else '**no**'} | "
            + " | ".join(generic)
            + " | "
            + " / ".join(dict.fromkeys(r.chosen for r in rows if r))
            + " |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")


async def amain(sizes: list[str], server_url: str | None, *, build_only: bool) -> None:
    revision = git_revision()
    plans = results_directory(PLANS)
    out = plans / revision
    embedded = None if server_url else EmbeddedServer()
    try:
        server = (
            await asyncio.to_thread(embedded.start)
            if embedded is not None
            else Server(as_asyncpg_dsn(server_url or ""))
        )
        if build_only:
            for size in sizes:
                log(f"{size}: {await build(server, size)}")
            return
        # Named by the commit measured: plans of other commits go, never left stale. Not when
        # only building: that writes none, and would leave the tree without the committed ones.
        for stale in plans.iterdir() if plans.is_dir() else ():
            if stale.is_dir() and stale.name != revision:
                shutil.rmtree(stale)
        results = {size: await plan_size(server, out, size) for size in sizes}
        write_summary(out, results)
        log(f"wrote {out / 'summary.md'}")
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plans", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="30m,100m", help="comma-separated: 30m, 100m")
    parser.add_argument(
        "--server",
        help="an existing PostgreSQL server (any database URL on it) instead of the embedded one",
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build (or reuse) the databases, take no plans"
    )
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes: {', '.join(unknown)} (known: {', '.join(SIZES)})")
    with terminate_on_sigterm():
        try:
            asyncio.run(amain(sizes, args.server, build_only=args.build_only))
        except KeyboardInterrupt:
            log("interrupted")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
