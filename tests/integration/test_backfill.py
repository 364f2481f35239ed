"""History backfill (`ingestion.backfill`) against private, committed PostgreSQL databases."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import NamedTuple

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import ingestion.backfill
from ingestion.backfill import BackfillPlan, ChunkWritten, plan_backfill, run_backfill
from ingestion.generator import TradeGenerator
from ingestion.loop import Ingestor
from ingestion.status import IngestionStatus
from persistence.candles import read_candle_page
from persistence.connections import driver_connection
from persistence.finality import INTERVALS, VISIBILITY_DEADLINE
from persistence.materialise import advance_watermark, lock_candles
from persistence.models import VWAP_SCALE
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, insert_live_batch
from tests.support import MakeDatabase, open_test_engine, wait_until_async

BASES = {"AAA": Decimal("100.00"), "BBB": Decimal("25.50")}
# The walk's limits for these bases: ±20 % band, at most 0.2 % of the base per trade.
BAND = {"AAA": (Decimal("80.00"), Decimal("120.00")), "BBB": (Decimal("20.40"), Decimal("30.60"))}
MAX_STEP = {"AAA": Decimal("0.20"), "BBB": Decimal("0.05")}
TICK = Decimal("0.01")

# A fixed "now", off every bucket boundary; the live-like trades end just before it.
NOW = datetime(2026, 3, 2, 12, 0, 30, 250_000, tzinfo=UTC)
LIVE_STAMPS = (NOW - timedelta(seconds=3), NOW - timedelta(seconds=2), NOW - timedelta(seconds=1))
OLDEST_STORED = LIVE_STAMPS[0]
# Each symbol's first live trade sits away from its base, so "resumed from it" cannot be luck.
OLDEST_PRICE = {"AAA": Decimal("103.17"), "BBB": Decimal("24.80")}

DAYS = 0.01  # 864 s
TPS = 10.0
SPACING = timedelta(milliseconds=100)
# (864 s - 3 s) / 100 ms: the span from NOW - DAYS up to the oldest stored trade.
ROWS = 8_610
SMALL_CHUNK = 1_000
SEED = 42


class Row(NamedTuple):
    id: int
    symbol: str
    price: Decimal
    volume: int
    timestamp: datetime


def _live_batches() -> list[list[NewTrade]]:
    """Three batches, several trades per symbol and timestamp, like the ingestion loop's."""
    prices = dict(OLDEST_PRICE)
    batches = []
    for stamp in LIVE_STAMPS:
        batch = []
        for code in OLDEST_PRICE:
            for _ in range(3):
                batch.append(NewTrade(code, prices[code], 7, stamp))
                prices[code] += TICK
        batches.append(batch)
    return batches


async def _store_live(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await ensure_symbols(conn, [(code, f"{code} Inc.") for code in BASES])
    for stamp, batch in zip(LIVE_STAMPS, _live_batches(), strict=True):
        async with engine.begin() as conn:
            await insert_live_batch(conn, batch, stamped=stamp, leader_pid=None, lock_key=0)


async def _rows(engine: AsyncEngine, symbol: str | None = None) -> list[Row]:
    """Stored trades in (timestamp, id) order: the order candles and the walk follow."""
    query = 'SELECT id, symbol, price, volume, "timestamp" FROM trades'
    if symbol is not None:
        query += " WHERE symbol = :symbol"
    async with engine.connect() as conn:
        result = await conn.execute(text(query + ' ORDER BY "timestamp", id'), {"symbol": symbol})
        return [Row(*row) for row in result]


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM trades"))).scalar_one())


async def _plan(engine: AsyncEngine, *, days: float = DAYS) -> list[BackfillPlan]:
    return await plan_backfill(engine, BASES, days=days, trades_per_second=TPS, now=NOW)


async def _backfill(engine: AsyncEngine, *, seed: int | None = SEED) -> list[ChunkWritten]:
    chunks: list[ChunkWritten] = []
    written = await run_backfill(engine, await _plan(engine), seed=seed, on_chunk=chunks.append)
    assert written == sum(chunk.rows for chunk in chunks)
    return chunks


def _largest_step(rows: Sequence[Row]) -> Decimal:
    return max(abs(b.price - a.price) for a, b in zip(rows, rows[1:], strict=False))


def _backfilled(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row.timestamp < OLDEST_STORED]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Several chunks per symbol from a few thousand rows."""
    monkeypatch.setattr(ingestion.backfill, "CHUNK_ROWS", SMALL_CHUNK)
    return SMALL_CHUNK


@pytest.fixture
async def live_engine(fresh_engine: AsyncEngine) -> AsyncEngine:
    """A private database holding a few live-like trades per symbol."""
    await _store_live(fresh_engine)
    return fresh_engine


@pytest.fixture
async def other_database(make_database: MakeDatabase) -> AsyncIterator[AsyncEngine]:
    """A second private database at head, for comparing two runs."""
    engine = open_test_engine(await make_database())
    yield engine
    await engine.dispose()


# --- planning -----------------------------------------------------------------------------


async def test_plan_covers_days_back_to_the_oldest_stored_trade(live_engine: AsyncEngine) -> None:
    plans = await _plan(live_engine)

    assert [plan.symbol for plan in plans] == list(BASES)
    for plan in plans:
        assert plan.start == NOW - timedelta(seconds=864)
        assert plan.end == OLDEST_STORED
        assert plan.spacing == SPACING
        assert plan.rows == ROWS == (plan.end - plan.start) // plan.spacing
        assert plan.resume_price == OLDEST_PRICE[plan.symbol]
        assert plan.base_price == BASES[plan.symbol]


async def test_plan_for_a_symbol_without_trades_ends_before_live_batches_at_the_base_price(
    live_engine: AsyncEngine,
) -> None:
    (plan,) = await plan_backfill(
        live_engine, {"NEW": Decimal("55.55")}, days=0.001, trades_per_second=4, now=NOW
    )

    assert plan.symbol == "NEW"
    assert plan.start == NOW - timedelta(seconds=86.4)
    assert plan.end == NOW - VISIBILITY_DEADLINE
    assert plan.spacing == timedelta(milliseconds=250)
    assert plan.rows == 337  # (86.4 s - 2 s) / 250 ms, the partial last interval left out
    assert plan.resume_price == plan.base_price == Decimal("55.55")


@pytest.mark.parametrize(
    "days",
    [
        pytest.param(3 / 86_400, id="start-equals-oldest-trade"),
        pytest.param(2 / 86_400, id="start-after-oldest-trade"),
        pytest.param(3.05 / 86_400, id="span-shorter-than-spacing"),
    ],
)
async def test_plan_is_empty_when_history_already_reaches_back_far_enough(
    live_engine: AsyncEngine, days: float
) -> None:
    assert await _plan(live_engine, days=days) == []


async def test_plan_after_a_complete_backfill_is_empty(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    await _backfill(live_engine)

    assert await _plan(live_engine) == []


# --- what a run writes ----------------------------------------------------------------------


async def test_backfill_writes_only_between_start_and_the_oldest_stored_trade(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    before = await _rows(live_engine)

    await _backfill(live_engine)

    after = await _rows(live_engine)
    new = [row for row in after if row.id not in {old.id for old in before}]
    assert len(new) == len(BASES) * ROWS
    assert all(NOW - timedelta(days=DAYS) <= row.timestamp < OLDEST_STORED for row in new)
    # What was there is untouched.
    assert [row for row in after if row.timestamp >= OLDEST_STORED] == before


async def test_backfill_writes_the_planned_rows_evenly_spaced(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    plans = await _plan(live_engine)

    await run_backfill(live_engine, plans, seed=SEED, on_chunk=lambda _: None)

    for plan in plans:
        stamps = [row.timestamp for row in _backfilled(await _rows(live_engine, plan.symbol))]
        assert len(stamps) == plan.rows
        # Newest one spacing before the oldest stored trade, then one spacing apart: no
        # duplicate timestamps and no gaps.
        assert stamps == [plan.end - k * plan.spacing for k in range(plan.rows, 0, -1)]


async def test_backfilled_prices_are_on_the_tick_inside_the_band(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    await _backfill(live_engine)

    for code in BASES:
        prices = {row.price for row in _backfilled(await _rows(live_engine, code))}
        low, high = BAND[code]
        assert all(price % TICK == 0 and low <= price <= high for price in prices), code
        # A walk, not a constant: it moved around (by chance it cannot stay put 8,610 times).
        assert len(prices) > 10, code


async def test_backfilled_walk_moves_at_most_one_step_and_meets_the_stored_price(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    await _backfill(live_engine)

    for code in BASES:
        rows = await _rows(live_engine, code)
        history = _backfilled(rows)
        assert _largest_step(history) <= MAX_STEP[code], code
        # Continuity at the seam: the newest backfilled trade is one step from the oldest
        # stored one (its price is far from the base, so resuming from it is what did this).
        seam = rows[len(history)]
        assert seam.timestamp == OLDEST_STORED and seam.price == OLDEST_PRICE[code]
        assert abs(history[-1].price - seam.price) <= MAX_STEP[code], code
        assert abs(history[-1].price - BASES[code]) > 2 * MAX_STEP[code], code


async def test_backfilled_volumes_are_positive_whole_numbers(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    await _backfill(live_engine)

    volumes = [row.volume for row in _backfilled(await _rows(live_engine))]
    assert len(volumes) == len(BASES) * ROWS
    assert all(volume > 0 and volume == volume.to_integral_value() for volume in volumes)
    assert len(set(volumes)) > 1


async def test_same_seed_writes_identical_history(
    live_engine: AsyncEngine, other_database: AsyncEngine, small_chunks: int
) -> None:
    await _store_live(other_database)

    await _backfill(live_engine, seed=SEED)
    await _backfill(other_database, seed=SEED)

    first, second = await _rows(live_engine), await _rows(other_database)
    assert len(first) == len(second) > len(BASES) * ROWS
    assert [row[1:] for row in first] == [row[1:] for row in second]


async def test_different_seeds_write_different_histories(
    live_engine: AsyncEngine, other_database: AsyncEngine, small_chunks: int
) -> None:
    await _store_live(other_database)

    await _backfill(live_engine, seed=SEED)
    await _backfill(other_database, seed=SEED + 1)

    first = _backfilled(await _rows(live_engine))
    second = _backfilled(await _rows(other_database))
    assert [row[1:] for row in first] != [row[1:] for row in second]
    # Same times (the plan), different walks.
    assert [row.timestamp for row in first] == [row.timestamp for row in second]


async def test_backfill_reports_each_chunk_no_larger_than_chunk_rows(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    chunks = await _backfill(live_engine)

    # 8,610 rows per symbol: eight full chunks and the remainder, symbol after symbol.
    sizes = [SMALL_CHUNK] * 8 + [ROWS - 8 * SMALL_CHUNK]
    assert [(chunk.symbol, chunk.rows) for chunk in chunks] == [
        (code, size) for code in BASES for size in sizes
    ]
    for code in BASES:
        stamps = [row.timestamp for row in _backfilled(await _rows(live_engine, code))]
        # Each chunk reaches further back: its `oldest` is where that chunk's rows end.
        oldest = [chunk.oldest for chunk in chunks if chunk.symbol == code]
        assert oldest == [stamps[-(SMALL_CHUNK * k)] for k in range(1, 9)] + [stamps[0]]


async def test_backfill_with_default_chunks_writes_one_chunk_per_small_plan(
    live_engine: AsyncEngine,
) -> None:
    chunks = await _backfill(live_engine)

    assert ingestion.backfill.CHUNK_ROWS >= ROWS
    assert [(chunk.symbol, chunk.rows) for chunk in chunks] == [(code, ROWS) for code in BASES]


# --- interruption ---------------------------------------------------------------------------


class _Interrupt(Exception):
    """Stands in for Ctrl-C arriving between two chunks."""


def _assert_complete(rows: Sequence[Row], plan: BackfillPlan) -> None:
    """The symbol's history covers the plan exactly once and is continuous in price."""
    history = [row for row in rows if row.timestamp < plan.end]
    stamps = [row.timestamp for row in history]
    assert stamps == [plan.end - k * plan.spacing for k in range(plan.rows, 0, -1)]
    assert _largest_step(rows) <= MAX_STEP[plan.symbol], plan.symbol


async def test_interrupted_backfill_keeps_whole_chunks_and_a_rerun_carries_on(
    live_engine: AsyncEngine, small_chunks: int
) -> None:
    first_plans = await _plan(live_engine)
    seen: list[ChunkWritten] = []

    def stop_after_three(chunk: ChunkWritten) -> None:
        seen.append(chunk)
        if len(seen) == 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        await run_backfill(live_engine, first_plans, seed=SEED, on_chunk=stop_after_three)

    assert len(_backfilled(await _rows(live_engine))) == 3 * SMALL_CHUNK
    aaa = await _rows(live_engine, "AAA")
    assert seen[-1].oldest == aaa[0].timestamp

    # The rerun plans from the new oldest trade, resuming from its price.
    second_plans = await _plan(live_engine)
    assert [(p.symbol, p.rows, p.end) for p in second_plans] == [
        ("AAA", ROWS - 3 * SMALL_CHUNK, aaa[0].timestamp),
        ("BBB", ROWS, OLDEST_STORED),
    ]
    assert second_plans[0].resume_price == aaa[0].price
    written = await run_backfill(live_engine, second_plans, seed=SEED, on_chunk=lambda _: None)

    assert written == 2 * ROWS - 3 * SMALL_CHUNK
    for plan in first_plans:
        _assert_complete(await _rows(live_engine, plan.symbol), plan)
    assert await _plan(live_engine) == []


_WAITING = text(
    """
    SELECT count(*) FROM pg_locks
    WHERE NOT granted AND locktype = :locktype
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND (locktype <> 'relation' OR relation = 'trades'::regclass)
    """
)


async def _lock_waits(conn: AsyncConnection, locktype: str) -> bool:
    """Whether a session of this database waits for an advisory lock, or for `trades`."""
    return int((await conn.execute(_WAITING, {"locktype": locktype})).scalar_one()) > 0


async def test_backfill_cancelled_during_a_copy_leaves_no_part_of_that_chunk(
    live_engine: AsyncEngine, empty_database: URL, small_chunks: int
) -> None:
    plans = await _plan(live_engine)
    side = open_test_engine(empty_database)
    try:
        async with side.connect() as holder, side.connect() as blocker:
            # Pause the run at BBB's first chunk (candle lock), then make its COPY wait on
            # the table: the cancellation lands inside that chunk's transaction, mid-COPY.
            await holder.begin()
            await lock_candles(holder, "BBB")
            task = asyncio.create_task(
                run_backfill(live_engine, plans, seed=SEED, on_chunk=lambda _: None)
            )
            await wait_until_async(
                lambda: _lock_waits(holder, "advisory"), what="BBB's chunk to wait for the lock"
            )
            await blocker.begin()
            await blocker.execute(text("LOCK TABLE trades IN SHARE MODE"))
            await holder.commit()
            await wait_until_async(
                lambda: _lock_waits(holder, "relation"), what="BBB's COPY to wait for the table"
            )

            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout=15)
            await blocker.rollback()
    finally:
        await side.dispose()

    counts = Counter(row.symbol for row in _backfilled(await _rows(live_engine)))
    assert counts == {"AAA": ROWS}
    # The engine is fine afterwards, and the rerun does BBB only.
    rerun = await _plan(live_engine)
    assert [(plan.symbol, plan.rows) for plan in rerun] == [("BBB", ROWS)]
    await run_backfill(live_engine, rerun, seed=SEED, on_chunk=lambda _: None)
    for plan in plans:
        _assert_complete(await _rows(live_engine, plan.symbol), plan)


# --- candles --------------------------------------------------------------------------------

VWAP_PLACES = Decimal(1).scaleb(-VWAP_SCALE)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


Candle = tuple[datetime, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int]


def _reference(rows: Sequence[Row], lo: datetime, hi: datetime, step: timedelta) -> list[Candle]:
    """Candles of [lo, hi) written out plainly from trades, with exact decimal arithmetic."""
    buckets: dict[datetime, list[Row]] = {}
    for row in rows:
        if lo <= row.timestamp < hi:
            start = row.timestamp - (row.timestamp - EPOCH) % step
            buckets.setdefault(start, []).append(row)
    candles = []
    for start, group in sorted(buckets.items()):
        group.sort(key=lambda row: (row.timestamp, row.id))
        volume = sum(row.volume for row in group)
        with localcontext() as ctx:
            ctx.prec = 60
            notional = sum((row.price * row.volume for row in group), Decimal(0))
            vwap = (notional / volume).quantize(VWAP_PLACES, rounding=ROUND_HALF_UP)
        prices = [row.price for row in group]
        candles.append(
            (
                start,
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                volume,
                vwap,
                len(group),
            )
        )
    return candles


async def _stored_candles(engine: AsyncEngine, interval: str) -> list[Candle]:
    query = text(
        'SELECT "timestamp", open, high, low, close, volume, vwap, trade_count FROM candles'
        ' WHERE symbol = \'AAA\' AND "interval" = :interval ORDER BY "timestamp"'
    )
    async with engine.connect() as conn:
        rows = await conn.execute(query, {"interval": interval})
        return [(ts, o, h, lo, c, v, w, n) for ts, o, h, lo, c, v, w, n in rows]


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "1d"])
async def test_backfill_materialises_the_candles_of_every_chunk(
    live_engine: AsyncEngine, small_chunks: int, interval: str
) -> None:
    step = INTERVALS[interval]
    # The leader had materialised everything final, the live trades included: the backfill
    # writes below the watermark, so whatever it touches must be right when it commits.
    async with live_engine.begin() as conn:
        assert await advance_watermark(conn, span=timedelta(days=10_000)) is not None

    chunks = await _backfill(live_engine)

    rows = await _rows(live_engine, "AAA")
    lo, hi = rows[0].timestamp - (rows[0].timestamp - EPOCH) % step, OLDEST_STORED + step
    expected = _reference(rows, lo, hi, step)
    assert len(chunks) > 2
    # The seam's bucket holds backfilled and live trades together.
    assert expected[-1][7] > len(LIVE_STAMPS) * 3
    assert await _stored_candles(live_engine, interval) == expected
    async with live_engine.connect() as conn:
        page = await read_candle_page(
            await driver_connection(conn),
            symbol="AAA",
            interval=interval,
            step=step,
            lo=lo,
            hi=hi,
            limit=10**6,
        )
    assert [tuple(c)[:8] for c in page.candles] == expected
    assert not page.from_trades


async def test_a_first_backfill_sets_the_watermark_below_what_it_wrote(
    fresh_engine: AsyncEngine, small_chunks: int
) -> None:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [(code, f"{code} Inc.") for code in BASES])

    await _backfill(fresh_engine)

    async with fresh_engine.connect() as conn:
        marks = dict(
            (await conn.execute(text("SELECT symbol, candles_until FROM candle_watermarks"))).all()
        )
    assert sorted(marks) == sorted(BASES)
    for symbol, watermark in marks.items():
        rows = await _rows(fresh_engine, symbol)
        # Set by the first chunk at the symbol's oldest trade then: later chunks went further
        # back, and materialised what they wrote themselves.
        assert rows[0].timestamp < watermark <= rows[-1].timestamp, symbol
    rows = await _rows(fresh_engine)
    assert await _stored_candles(fresh_engine, "1h") == _reference(
        [row for row in rows if row.symbol == "AAA"],
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2100, 1, 1, tzinfo=UTC),
        INTERVALS["1h"],
    )


# --- beside live ingestion ------------------------------------------------------------------


async def test_backfill_beside_live_ingestion_never_overlaps_it(
    fresh_engine: AsyncEngine, empty_database: URL, small_chunks: int
) -> None:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [(code, f"{code} Inc.") for code in BASES])
    # The service gives ingestion an engine of its own; so does this test.
    ingest_engine = open_test_engine(empty_database)
    generator = TradeGenerator(BASES, seed=SEED, max_trades_per_symbol=5)
    status = IngestionStatus(enabled=True, interval_seconds=0.02, symbols=tuple(BASES))
    ingestion_task = asyncio.create_task(Ingestor(ingest_engine, generator, status).run())
    try:
        await wait_until_async(lambda: status.batches_total >= 1, what="the first live batch")
        plans = await plan_backfill(
            fresh_engine, BASES, days=0.005, trades_per_second=20, now=datetime.now(UTC)
        )
        async with fresh_engine.connect() as holder:
            # Hold the run at BBB's first chunk until live batches were written meanwhile:
            # the two really interleave, whatever the machine's speed.
            await holder.begin()
            await lock_candles(holder, "BBB")
            backfill = asyncio.create_task(
                run_backfill(fresh_engine, plans, seed=SEED, on_chunk=lambda _: None)
            )
            await wait_until_async(lambda: _lock_waits(holder, "advisory"), what="the paused run")
            paused_at = status.batches_total
            await wait_until_async(
                lambda: status.batches_total >= paused_at + 3, what="live batches meanwhile"
            )
            await holder.commit()
        written = await backfill
        done_at = status.batches_total
        await wait_until_async(
            lambda: status.batches_total >= done_at + 2, what="later live batches"
        )
    finally:
        ingestion_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ingestion_task
        await ingest_engine.dispose()

    assert status.failures_total == 0
    assert written == sum(plan.rows for plan in plans) > 0
    rows = await _rows(fresh_engine)
    for plan in plans:
        mine = [row for row in rows if row.symbol == plan.symbol]
        history = [row for row in mine if row.timestamp < plan.end]
        live = [row for row in mine if row.timestamp >= plan.end]
        # The plan ended at the first live trade; every backfilled trade is older than it.
        assert plan.end == live[0].timestamp
        assert [row.timestamp for row in history] == [
            plan.end - k * plan.spacing for k in range(plan.rows, 0, -1)
        ]
        live_stamps = {row.timestamp for row in live}
        assert live_stamps.isdisjoint(row.timestamp for row in history)
        assert len(live_stamps) >= paused_at + 3
        assert _largest_step(mine) <= MAX_STEP[plan.symbol], plan.symbol
