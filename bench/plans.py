"""Query plans of the hot queries at two table sizes: `EXPLAIN (ANALYZE, BUFFERS)` of the SQL the
service really sends, captured from the persistence functions themselves.

    .venv/bin/python -m bench.plans                    # 1M and 30M trades on the bench server
    .venv/bin/python -m bench.plans --sizes 1m         # only the small one

Each size is a database on the bench's embedded PostgreSQL, built once with `mdp backfill`
(5 symbols x 1 trade/s: 2.3 days for 1M, 70 days for 30M, so trades per hour are the same and
only the history grows) and reused afterwards. Plans go to bench/plans/<commit>/<size>/<query>.txt,
with the custom plan (what a first execution gets) and the generic plan (what a prepared
statement may switch to after five executions); bench/plans/<commit>/summary.md compares the
sizes. A run removes the plans of other commits; with uncommitted changes it writes under
.mdp/bench/uncommitted/plans/ instead.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/plans.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from bench.support import (  # noqa: E402
    BENCH,
    EmbeddedServer,
    Server,
    backfill,
    ensure_database,
    git_revision,
    log,
    results_directory,
    symbol_codes,
    terminate_on_sigterm,
)
from mdp.engines import open_engine  # noqa: E402
from mdp.settings import Settings  # noqa: E402
from persistence import candles, finality, symbols, trades  # noqa: E402
from persistence.connections import driver_connection  # noqa: E402

PLANS = BENCH / "plans"
SIZES = {"1m": 2.3, "30m": 70.0}  # days of 5 symbols x 1 trade/s
SYMBOL = "AAPL"
# The service's session settings (persistence.connections.create_engine).
SESSION = {"jit": "off", "max_parallel_workers_per_gather": "0"}


@dataclass
class Captured:
    name: str
    sql: str
    params: tuple[Any, ...]
    # Run first, in the transaction the EXPLAIN ANALYZE runs and rolls back in (writes only).
    setup: str | None = None
    note: str = ""


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
    age of the database. Candle reads run twice: cold (computes and persists the final
    buckets) and warm (the steady state: coverage check, then final rows plus the live bucket).
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
                return candles.read_candle_page(
                    driver, symbol=SYMBOL, interval=interval, step=step, lo=lo, hi=hi, limit=limit
                )

            # Reads only read: one statement, the same on the first request as on any other.
            for statement in await one(f"{name}.page", read):
                wanted.append(_named(statement, f"{name}.page"))
        await conn.exec_driver_sql("ANALYZE candles")
    # Several INSERTs for one window (roll-ups persist minutes first): keep names unique.
    seen: dict[str, int] = {}
    for item in wanted:
        seen[item.name] = seen.get(item.name, 0) + 1
        if seen[item.name] > 1:
            item.name = f"{item.name}_{seen[item.name]}"
    return wanted


def _named(statement: Captured, name: str, *, setup: str | None = None) -> Captured:
    return Captured(name, statement.sql, statement.params, setup)


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
            tx = conn.transaction()
            await tx.start()
            try:
                if statement.setup:
                    await conn.execute(statement.setup)
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {execute}")
            finally:
                await tx.rollback()
            plans.append("\n".join(r[0] for r in rows))
        chosen = "n/a (writes)"
        if not statement.setup:
            # What the service's prepared statement ends up with: PostgreSQL tries five custom
            # plans, then keeps the generic one if it is not estimated dearer.
            await conn.execute("RESET plan_cache_mode; DEALLOCATE bench_plan")
            await conn.execute(f"PREPARE bench_plan AS {statement.sql}")
            for _ in range(7):
                await conn.execute(execute)
            generic, custom = await conn.fetchrow(
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
    chosen: str
    planning_ms: float


_NODE = re.compile(
    r"(Seq Scan|Index Only Scan(?: Backward)?|Index Scan(?: Backward)?|Bitmap Heap Scan|"
    r"Bitmap Index Scan|Result|Function Scan)(?: using (\w+))? on (\w+)|(Result|Function Scan)"
)


def summarise(name: str, custom: str, generic: str, chosen: str) -> Summary:
    def nodes(plan: str) -> list[str]:
        found = []
        for m in _NODE.finditer(plan):
            if m[4]:
                continue
            found.append(f"{m[1]} {m[3]}" + (f" ({m[2]})" if m[2] else ""))
        return found

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
        chosen,
        ms(custom, "Planning"),
    )


async def table_facts(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        facts: dict[str, Any] = {
            "trades": await conn.fetchval("SELECT count(*) FROM trades"),
            "heap": await conn.fetchval("SELECT pg_size_pretty(pg_relation_size('trades'))"),
        }
        for index in ("ix_trades_symbol_timestamp_id", "pk_trades", "pk_candles"):
            size = await conn.fetchval("SELECT pg_size_pretty(pg_relation_size($1))", index)
            levels = await conn.fetchval("SELECT level FROM bt_metap($1)", index)
            facts[index] = f"{size}, {levels + 1} levels"
    finally:
        await conn.close()
    return facts


async def plan_size(
    server: Server, out: Path, size: str, days: float, *, partitioned: bool
) -> tuple[dict[str, Any], list[Summary], list[Summary] | None]:
    dsn, _ = await ensure_database(server, f"mdp_plans_{size}")
    log(f"{size}: backfill 5 symbols x 1 trade/s x {days:g} days (reused when already there)")
    built = await asyncio.to_thread(
        backfill, dsn, days=days, symbols=symbol_codes(5), trades_per_second=1
    )
    conn = await asyncpg.connect(dsn)
    try:
        if built.rows:
            log(f"{size}: wrote {built.rows} trades at {built.rows_per_second} rows/s")
        # Plans as autovacuum would leave them: visibility map set, statistics current.
        await conn.execute("VACUUM (ANALYZE) trades")
        anchor = await conn.fetchval("SELECT max(timestamp) FROM trades WHERE symbol = $1", SYMBOL)
    finally:
        await conn.close()
    # The service's session settings, with room for the slowest cold plan.
    engine = open_engine(Settings(), make_url(dsn).set(drivername="postgresql+asyncpg"), "bench")
    try:
        statements = await capture(engine, anchor)
    finally:
        await engine.dispose()
    summaries = await write_plans(dsn, statements, out / size, f"{size} trades")
    facts = await table_facts(dsn)
    log(f"{size}: {len(statements)} plans in {out / size}/")
    if partitioned:
        await build_partitioned(dsn)
        on_partitions = [
            Captured(item.name, _TRADES.sub("trades_by_week", item.sql), item.params, item.setup)
            for item in statements
            if "FROM candles" not in item.sql and "trades" in item.sql
        ]
        summaries_by_week = await write_plans(
            dsn, on_partitions, out / f"{size}-by-week", f"{size} trades, partitioned by week"
        )
        return facts, summaries, summaries_by_week
    return facts, summaries, None


_TRADES = re.compile(r"\btrades\b")


async def write_plans(dsn: str, statements: list[Captured], out: Path, label: str) -> list[Summary]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.txt"):
        stale.unlink()
    summaries = []
    for statement in statements:
        custom, generic, chosen = await explain(dsn, statement)
        summaries.append(summarise(statement.name, custom, generic, chosen))
        (out / f"{statement.name}.txt").write_text(
            f"-- {statement.name} at {label}"
            + (f" ({statement.note})" if statement.note else "")
            + "\n"
            f"-- parameters: {_params_text(statement.params)}\n"
            f"{statement.sql.strip()}\n\n"
            f"-- custom plan (plan_cache_mode = force_custom_plan)\n{custom}\n\n"
            f"-- generic plan (plan_cache_mode = force_generic_plan)\n{generic}\n\n"
            f"-- after 7 executions of the prepared statement, PostgreSQL uses: {chosen}\n"
        )
    return summaries


async def build_partitioned(dsn: str) -> None:
    """`trades_by_week`: the same rows and index as `trades`, range-partitioned by week (the
    experiment behind "would partitioning pay?"); built once, reused."""
    conn = await asyncpg.connect(dsn)
    try:
        done = await conn.fetchval(
            "SELECT obj_description(to_regclass('trades_by_week'), 'pg_class')"
        )
        if done == "complete":
            return
        log("building trades_by_week: trades copied into weekly range partitions")
        await conn.execute(
            "DROP TABLE IF EXISTS trades_by_week;"
            "CREATE TABLE trades_by_week (LIKE trades) PARTITION BY RANGE (timestamp)"
        )
        lo, hi = await conn.fetchrow(
            "SELECT date_trunc('week', min(timestamp)), max(timestamp) + INTERVAL '1 week' "
            "FROM trades"
        )
        while lo < hi:
            upper = lo + timedelta(weeks=1)
            await conn.execute(
                f"CREATE TABLE trades_by_week_{lo:%Y%m%d} PARTITION OF trades_by_week "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{upper.isoformat()}')"
            )
            lo = upper
        await conn.execute("INSERT INTO trades_by_week SELECT * FROM trades", timeout=3600)
        await conn.execute(
            "CREATE INDEX ON trades_by_week (symbol, timestamp, id) INCLUDE (price, volume)",
            timeout=3600,
        )
        await conn.execute("VACUUM (ANALYZE) trades_by_week", timeout=3600)
        await conn.execute("COMMENT ON TABLE trades_by_week IS 'complete'")
    finally:
        await conn.close()


def _params_text(params: tuple[Any, ...]) -> str:
    return ", ".join(
        f"${i}={value.isoformat() if isinstance(value, datetime) else value!r}"
        for i, value in enumerate(params, 1)
    )


def write_summary(
    out: Path,
    results: dict[str, tuple[dict[str, Any], list[Summary]]],
    by_week: list[Summary] | None,
) -> None:
    sizes = list(results)
    lines = ["# Plan summary (generated by `python -m bench.plans`)", ""]
    for size in sizes:
        facts = results[size][0]
        lines.append(f"- **{size}**: " + "; ".join(f"{k}: {v}" for k, v in facts.items()))
    lines += [
        "",
        "Buffers = shared buffers touched by the custom plan (hit + read); ms = execution time "
        "of that EXPLAIN ANALYZE (warm cache, one run: noisy). Generic = the plan a prepared "
        "statement may switch to.",
        "",
        "| query | scans (custom plan) | "
        + " | ".join(f"{s} rows | {s} buffers | {s} heap fetches | {s} ms" for s in sizes)
        + " | generic plan same scans? | "
        + " | ".join(f"{s} generic ms" for s in sizes)
        + " | prepared statement uses |",
        "|---|---|" + "---:|" * (4 * len(sizes)) + "---|" + "---:|" * len(sizes) + "---|",
    ]
    by_name = {s: {x.name: x for x in results[s][1]} for s in sizes}
    for name in by_name[sizes[0]]:
        rows = [by_name[s].get(name) for s in sizes]
        first = rows[0]
        assert first is not None
        cells = []
        for row in rows:
            if row is None:
                cells += ["–"] * 4
            else:
                cells += [
                    f"{row.rows:,}",
                    f"{row.buffers:,}",
                    f"{row.heap_fetches:,}",
                    f"{row.ms:.3f}",
                ]
        same = all(r is not None and r.generic_nodes == r.nodes for r in rows)
        generic_ms = [f"{r.generic_ms:.3f}" if r else "–" for r in rows]
        scans = "; ".join(dict.fromkeys(first.nodes)) or "no table"
        lines.append(
            f"| {name} | {scans} | "
            + " | ".join(cells)
            + f" | {'yes' if same else '**no**'} | "
            + " | ".join(generic_ms)
            + " | "
            + " / ".join(dict.fromkeys(r.chosen for r in rows if r))
            + " |"
        )
    if by_week:
        largest = sizes[-1]
        plain = by_name[largest]
        lines += [
            "",
            f"## The trade queries at {largest} on `trades_by_week` (weekly range partitions)",
            "",
            "Same rows, same index, `PARTITION BY RANGE (timestamp)`, one partition per week. "
            "Planning and execution times of the custom plan, one warm run each.",
            "",
            "| query | plain buffers | plain planning ms | plain ms | partitioned buffers "
            "| partitioned planning ms | partitioned ms | partitioned scans (custom plan) "
            "| generic ms plain / partitioned |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for row in by_week:
            base = plain.get(row.name)
            if base is None:
                continue
            scans = Counter(re.sub(r"trades_by_week_\w+", "<week>", node) for node in row.nodes)
            lines.append(
                f"| {row.name} | {base.buffers:,} | {base.planning_ms:.3f} | {base.ms:.3f} "
                f"| {row.buffers:,} | {row.planning_ms:.3f} | {row.ms:.3f} | "
                + "; ".join(f"{n}× {node}" for node, n in scans.items())
                + f" | {base.generic_ms:.3f} / {row.generic_ms:.3f} |"
            )
    (out / "summary.md").write_text("\n".join(lines) + "\n")


async def amain(sizes: list[str], partitioning: bool) -> None:
    revision = git_revision()
    plans = results_directory(PLANS)
    # Named by the commit measured: plans of other commits go, never left stale.
    for stale in plans.iterdir() if plans.is_dir() else ():
        if stale.is_dir() and stale.name != revision:
            shutil.rmtree(stale)
    out = plans / revision
    embedded = EmbeddedServer()
    try:
        server = await asyncio.to_thread(embedded.start)
        results = {}
        by_week = None
        for size in sizes:
            partitioned = partitioning and size == sizes[-1]
            facts, summaries, weekly = await plan_size(
                server, out, size, SIZES[size], partitioned=partitioned
            )
            results[size] = (facts, summaries)
            by_week = weekly or by_week
        write_summary(out, results, by_week)
        log(f"wrote {out / 'summary.md'}")
    finally:
        await asyncio.to_thread(embedded.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plans", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--sizes", default="1m,30m", help="comma-separated: 1m, 30m")
    parser.add_argument(
        "--no-partitioning",
        action="store_true",
        help="skip the experiment: the largest size's trade queries on weekly partitions",
    )
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes: {', '.join(unknown)} (known: {', '.join(SIZES)})")
    with terminate_on_sigterm():
        try:
            asyncio.run(amain(sizes, not args.no_partitioning))
        except KeyboardInterrupt:
            log("interrupted")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
