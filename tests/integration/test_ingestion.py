"""The ingestion loop against a private, committed database."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.generator import TradeGenerator
from ingestion.loop import BatchTooLate, Ingestor
from ingestion.status import IngestionStatus
from ingestion.walk import TICK
from persistence.finality import VISIBILITY_DEADLINE
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, insert_live_batch
from tests.support import wait_until_async

BASES = {"AAA": Decimal("100.00"), "BBB": Decimal("25.50")}
SEED = 1234
MAX_TRADES = 5
INTERVAL = 0.05

Row = tuple[int, str, Decimal, int, datetime]  # id, symbol, price, volume, timestamp


def _ingestor(
    engine: AsyncEngine, bases: Mapping[str, Decimal] = BASES
) -> tuple[Ingestor, TradeGenerator, IngestionStatus]:
    generator = TradeGenerator(bases, seed=SEED, max_trades_per_symbol=MAX_TRADES)
    status = IngestionStatus(enabled=True, interval_seconds=INTERVAL, symbols=tuple(bases))
    return Ingestor(engine, generator, status), generator, status


async def _trades(engine: AsyncEngine) -> list[Row]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text('SELECT id, symbol, price, volume, "timestamp" FROM trades ORDER BY id')
        )
        return [(r.id, r.symbol, r.price, r.volume, r.timestamp) for r in rows]


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM trades"))).scalar_one())


def _largest_move(stored: list[Row], code: str) -> Decimal:
    """The biggest jump between consecutive stored prices of `code`, in (timestamp, id) order."""
    path = [
        price
        for _, symbol, price, _, _ in sorted(stored, key=lambda r: (r[4], r[0]))
        if symbol == code
    ]
    assert len(path) > 1
    return max(abs(b - a) for a, b in zip(path, path[1:], strict=False))


@pytest.fixture
async def ingest_engine(fresh_engine: AsyncEngine) -> AsyncEngine:
    """A private database (ingestion commits) with the generator's symbols registered."""
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [(code, f"{code} Inc.") for code in BASES])
    return fresh_engine


def _content(trades: list[NewTrade] | list[Row]) -> Counter[tuple[str, Decimal, int]]:
    """(symbol, price, volume) of every trade, independent of ids and of row order."""
    return Counter((t[-4], t[-3], t[-2]) for t in trades)  # both shapes end in these + timestamp


async def test_run_once_stores_one_batch_with_one_timestamp(ingest_engine: AsyncEngine) -> None:
    ingestor, _, _ = _ingestor(ingest_engine)
    twin = TradeGenerator(BASES, seed=SEED, max_trades_per_symbol=MAX_TRADES)

    size = await ingestor.run_once()

    stored = await _trades(ingest_engine)
    per_symbol = Counter(symbol for _, symbol, _, _, _ in stored)
    assert len(stored) == size
    assert set(per_symbol) == set(BASES)
    assert all(1 <= n <= MAX_TRADES for n in per_symbol.values())
    assert len({ts for *_, ts in stored}) == 1
    assert all(price > 0 and volume > 0 for _, _, price, volume, _ in stored)
    assert _content(stored) == _content(list(twin.batch(stored[0][-1])))


async def test_run_once_updates_the_heartbeat(ingest_engine: AsyncEngine) -> None:
    ingestor, _, status = _ingestor(ingest_engine)
    before = datetime.now(UTC)

    first = await ingestor.run_once()
    first_at = status.last_batch_at
    second = await ingestor.run_once()

    after = datetime.now(UTC)
    assert status.batches_total == 2
    assert status.trades_total == first + second == await _count(ingest_engine)
    assert status.last_batch_size == second
    assert first_at is not None and status.last_batch_at is not None
    assert before <= first_at <= status.last_batch_at <= after
    assert status.consecutive_failures == 0
    assert status.heartbeat_age() is not None


async def test_failed_cycle_stores_nothing_rewinds_and_next_cycle_succeeds(
    ingest_engine: AsyncEngine,
) -> None:
    # A constraint that rejects one symbol's rows: the batch's one insert fails as a whole.
    bases = {**BASES, "ZZZ": Decimal("10.00")}
    ingestor, generator, status = _ingestor(ingest_engine, bases)
    walk_before = generator.snapshot()
    async with ingest_engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE trades ADD CONSTRAINT reject_zzz CHECK (symbol <> 'ZZZ') NOT VALID")
        )

    try:
        with pytest.raises(IntegrityError):
            await ingestor.run_once()

        assert await _count(ingest_engine) == 0
        assert generator.snapshot() == walk_before
        assert status.batches_total == 0
    finally:
        async with ingest_engine.begin() as conn:
            await conn.execute(text("ALTER TABLE trades DROP CONSTRAINT reject_zzz"))
    size = await ingestor.run_once()

    stored = await _trades(ingest_engine)
    assert len(stored) == size
    assert {symbol for _, symbol, *_ in stored} == set(bases)
    # The rewound walk prints exactly the batch the failed cycle would have printed.
    twin = TradeGenerator(bases, seed=SEED, max_trades_per_symbol=MAX_TRADES)
    assert _content(stored) == _content(list(twin.batch(stored[0][-1])))
    assert status.batches_total == 1


async def test_restarted_ingestor_resumes_each_walk_from_last_stored_price(
    ingest_engine: AsyncEngine,
) -> None:
    ingestor, _, _ = _ingestor(ingest_engine)
    for _ in range(3):
        await ingestor.run_once()
    # Stored prices far from where a fresh walk starts, so "resumed" cannot be luck.
    last = {"AAA": Decimal("110.37"), "BBB": Decimal("21.13")}
    async with ingest_engine.begin() as conn:
        now = datetime.now(UTC)
        batch = [NewTrade(code, price, 1, now) for code, price in last.items()]
        # The last batch another writer stored before the restart.
        assert await insert_live_batch(conn, batch, stamped=now, leader_pid=None, lock_key=0) == 2
        newest_before = (await conn.execute(text("SELECT max(id) FROM trades"))).scalar_one()

    restarted, generator, _ = _ingestor(ingest_engine)
    await restarted.run_once()

    stored = await _trades(ingest_engine)
    for code, price in last.items():
        first_new = next(p for id_, s, p, _, _ in stored if s == code and id_ > newest_before)
        max_step = generator.walks[code].max_step_ticks * TICK
        assert abs(first_new - price) <= max_step, code
        assert abs(BASES[code] - price) > 2 * max_step


async def test_consecutive_stored_prices_stay_within_one_step(ingest_engine: AsyncEngine) -> None:
    ingestor, generator, _ = _ingestor(ingest_engine)
    for _ in range(5):
        await ingestor.run_once()

    stored = await _trades(ingest_engine)
    for code in BASES:
        max_step = generator.walks[code].max_step_ticks * TICK
        assert _largest_move(stored, code) <= max_step, code
        assert all(price % TICK == 0 for _, symbol, price, _, _ in stored if symbol == code)


_BLOCK_INSERTS = "ALTER TABLE trades ADD CONSTRAINT ck_trades_blocked CHECK (volume < 0) NOT VALID"
_UNBLOCK_INSERTS = "ALTER TABLE trades DROP CONSTRAINT ck_trades_blocked"


async def test_run_keeps_going_through_failures_and_stops_when_cancelled(
    ingest_engine: AsyncEngine,
) -> None:
    ingestor, generator, status = _ingestor(ingest_engine)
    task = asyncio.create_task(ingestor.run())
    try:
        await wait_until_async(lambda: status.batches_total >= 2, what="the first batches")

        # Read before the block: a batch may fail against it while the rows are counted.
        failures_when_broken = status.failures_total
        async with ingest_engine.begin() as conn:
            await conn.execute(text(_BLOCK_INSERTS))
        rows_when_broken = await _count(ingest_engine)
        await wait_until_async(
            lambda: status.consecutive_failures >= 3, what="failed cycles to be recorded"
        )

        assert status.failures_total >= failures_when_broken + 3
        assert await _count(ingest_engine) == rows_when_broken
        # The class of the error, for /status/ingestion: no SQL, no parameters, no message.
        assert status.last_error in {"CheckViolationError", "IntegrityError"}
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", status.last_error)
        assert status.last_error_at is not None

        batches_when_fixed = status.batches_total
        async with ingest_engine.begin() as conn:
            await conn.execute(text(_UNBLOCK_INSERTS))
        await wait_until_async(
            lambda: status.batches_total >= batches_when_fixed + 2, what="batches to resume"
        )

        assert status.consecutive_failures == 0
        assert await _count(ingest_engine) > rows_when_broken
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert status.stopped is True
    assert status.state() == "stopped"
    # Failed cycles rewound their walks: the stored path has no gap wider than one step.
    stored = await _trades(ingest_engine)
    for code in BASES:
        max_step = generator.walks[code].max_step_ticks * TICK
        assert _largest_move(stored, code) <= max_step, code


@pytest.mark.timing
async def test_a_batch_that_commits_too_late_is_rolled_back(ingest_engine: AsyncEngine) -> None:
    """Readers take buckets older than the visibility deadline as final: a synthetic batch
    that could not commit within half of it must leave nothing behind."""
    ingestor, generator, status = _ingestor(ingest_engine)
    await ingestor.run_once()
    stored = await _count(ingest_engine)
    walk_before = generator.snapshot()
    async with ingest_engine.connect() as blocker:
        # The batch's claim on the state row waits behind this lock.
        await blocker.execute(text("SELECT 1 FROM ingestion_state WHERE id = 1 FOR UPDATE"))
        batch = asyncio.create_task(ingestor.run_once())

        async def waiting() -> bool:
            return bool(
                await blocker.scalar(
                    # pg_locks, not pg_stat_activity: that one is a snapshot per transaction.
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                )
            )

        await wait_until_async(waiting, what="the batch waiting for its claim")
        # The slow commit is what is tested: time must pass, past half the deadline.
        await asyncio.sleep(VISIBILITY_DEADLINE.total_seconds() / 2 + 0.1)
        await blocker.rollback()
    with pytest.raises(BatchTooLate):
        await batch
    assert await _count(ingest_engine) == stored
    assert generator.snapshot() == walk_before
    assert status.batches_total == 1
