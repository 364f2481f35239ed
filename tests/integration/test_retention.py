"""Trades partitions over time: created ahead by the leader, dropped past TRADES_RETENTION."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.backfill import plan_backfill
from ingestion.housekeeping import TradeHousekeeping
from ingestion.leader import LEADER_LOCK_KEY
from ingestion.status import IngestionStatus
from persistence.connections import dedicated_connection
from persistence.feeds import StoredMark, insert_venue_batch
from persistence.imports import InDroppedMonths, import_trades
from persistence.materialise import advance_watermark
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, VenueTrade
from tests.support import dsn, import_table, seed_trades, wait_until_async

# "Now" for these tests: mid-April 2026, with trades from January to March.
NOW = datetime(2026, 4, 15, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=60)  # NOW - 60 days is in February: only January has expired.
STAMPS = [datetime(2026, month, day, 10, 30, tzinfo=UTC) for month in (1, 2, 3) for day in (5, 20)]
MINUTE = timedelta(minutes=1)


def _housekeeping(url: URL, status: IngestionStatus) -> TradeHousekeeping:
    connect = dedicated_connection(url, connect_timeout=5, application_name="mdp-housekeeping")
    return TradeHousekeeping(connect, status=status, leading=lambda: True)


def _status(retention: timedelta = RETENTION) -> IngestionStatus:
    return IngestionStatus(
        enabled=True, interval_seconds=1.0, symbols=("OLD",), trades_retention=retention
    )


async def _history(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await ensure_symbols(conn, [("OLD", "Old")])
        await seed_trades(conn, [NewTrade("OLD", Decimal("10.5"), Decimal(2), t) for t in STAMPS])
        # The leader has materialised every final minute: the candles are all stored.
        await advance_watermark(conn, span=timedelta(days=3650))


async def _counts(engine: AsyncEngine) -> tuple[list[datetime], int]:
    async with engine.connect() as conn:
        kept = (await conn.execute(text("SELECT timestamp FROM trades ORDER BY 1"))).scalars()
        candles = (
            await conn.execute(text("SELECT count(*) FROM candles WHERE interval = '1m'"))
        ).scalar_one()
    return list(kept), candles


async def _partitions(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT inhrelid::regclass::text FROM pg_inherits "
                "WHERE inhparent = 'trades'::regclass ORDER BY 1"
            )
        )
        return list(rows.scalars())


async def test_retention_drops_expired_months_of_trades_and_keeps_every_candle(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    await _history(fresh_engine)
    status = _status()

    dropped = await _housekeeping(empty_database, status).once(NOW)

    kept, candles = await _counts(fresh_engine)
    assert dropped == ["trades_y2026m01"]
    assert kept == STAMPS[2:]
    assert candles == len(STAMPS)
    assert status.oldest_trade_kept == STAMPS[2]
    # Created ahead: three months past now, so the live feed never meets a missing month.
    ahead = {"trades_y2026m04", "trades_y2026m05", "trades_y2026m06", "trades_y2026m07"}
    assert ahead <= set(await _partitions(fresh_engine))


async def test_retention_never_drops_trades_whose_candles_are_not_stored_yet(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("OLD", "Old")])
        await seed_trades(conn, [NewTrade("OLD", Decimal("10.5"), Decimal(2), t) for t in STAMPS])
        # The watermark stands at the oldest trade: the leader has not caught up yet.

    dropped = await _housekeeping(empty_database, _status()).once(NOW)

    kept, _ = await _counts(fresh_engine)
    assert dropped == []
    assert kept == STAMPS


async def test_retention_waits_for_a_reader_of_the_month_and_never_blocks_other_reads(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    await _history(fresh_engine)
    reader = await asyncpg.connect(dsn(empty_database))
    other = await asyncpg.connect(dsn(empty_database))
    month = "SELECT count(*) FROM trades WHERE symbol = 'OLD' AND timestamp < $1"
    try:
        # An export's snapshot, reading January while retention drops it.
        snapshot = reader.transaction(isolation="repeatable_read", readonly=True)
        await snapshot.start()
        assert await reader.fetchval(month, STAMPS[2]) == 2
        dropping = asyncio.create_task(_housekeeping(empty_database, _status()).once(NOW))

        async def detach_waits() -> bool:
            waiting = await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                "'mdp-housekeeping' AND wait_event_type = 'Lock'"
            )
            return bool(waiting)

        await wait_until_async(detach_waits, what="the detach waiting for the snapshot")
        # The snapshot still reads its rows; new reads go on and no longer see January.
        assert await reader.fetchval(month, STAMPS[2]) == 2
        assert await other.fetchval(month, STAMPS[2]) == 0
        assert await other.fetchval("SELECT count(*) FROM trades") == len(STAMPS) - 2
        assert not dropping.done()
        await snapshot.commit()

        assert await asyncio.wait_for(dropping, timeout=30) == ["trades_y2026m01"]
    finally:
        await reader.close()
        await other.close()


# A venue symbol fed until January 10th, 10:35:30 (its complete-through watermark ever since).
GONE_UNTIL = datetime(2026, 1, 10, 10, 35, 30, tzinfo=UTC)


async def _feed_ended(engine: AsyncEngine, stamps: list[datetime]) -> None:
    """History of OLD, and trades of GONE at `stamps` from a venue feed no longer configured:
    its watermark stands where the feed stopped. The leader has materialised what it could."""
    async with engine.begin() as conn:
        await ensure_symbols(conn, [("OLD", "Old"), ("GONE", "Gone")])
        await seed_trades(conn, [NewTrade("OLD", Decimal("10.5"), Decimal(2), t) for t in STAMPS])
        trades = [
            VenueTrade("GONE", Decimal(7), Decimal(1), moment, str(i), "buy")
            for i, moment in enumerate(stamps, 1)
        ]
        batch = await insert_venue_batch(
            conn,
            trades,
            {"GONE": StoredMark(len(stamps), GONE_UNTIL, datetime(2026, 1, 1, tzinfo=UTC))},
            feed="coinbase",
            stamped=datetime.now(UTC),
            leader_pid=None,
            lock_key=LEADER_LOCK_KEY,
        )
        assert batch is not None
        await advance_watermark(conn, span=timedelta(days=3650))


async def test_retention_is_not_held_back_by_a_symbol_no_longer_fed(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    """Every trade of GONE is in a final candle, stored: its feed's watermark standing still
    holds none of the months after it back."""
    await _feed_ended(fresh_engine, [GONE_UNTIL - timedelta(days=5), GONE_UNTIL - 5 * MINUTE])

    dropped = await _housekeeping(empty_database, _status(timedelta(days=30))).once(NOW)

    kept, _ = await _counts(fresh_engine)
    assert dropped == ["trades_y2026m01", "trades_y2026m02"]
    assert kept == STAMPS[4:]


async def test_retention_keeps_the_month_of_trades_whose_candle_is_not_final(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    """GONE's last minute never became final (its feed stopped inside it): the month holding
    it stays, and only that month."""
    last = GONE_UNTIL - timedelta(seconds=10)
    await _feed_ended(fresh_engine, [GONE_UNTIL - 5 * MINUTE, last])

    dropped = await _housekeeping(empty_database, _status(timedelta(days=30))).once(NOW)

    kept, _ = await _counts(fresh_engine)
    assert dropped == ["trades_y2026m02"]
    assert kept == sorted([*STAMPS[:2], GONE_UNTIL - 5 * MINUTE, last, *STAMPS[4:]])


async def _candles(engine: AsyncEngine) -> list[tuple[datetime, str, Decimal, int]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT timestamp, interval, volume, trade_count FROM candles ORDER BY 1, 2")
        )
        return [tuple(row) for row in rows]


async def test_a_month_retention_dropped_takes_no_trade_again(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    """January's trades are gone, its candles kept: recomputing them from a new trade alone
    would overwrite them. An import into it is refused whole; a venue print is skipped and
    counted; a month still kept takes both."""
    await _history(fresh_engine)
    await _housekeeping(empty_database, _status()).once(NOW)
    candles = await _candles(fresh_engine)
    january = STAMPS[0] + MINUTE
    async with fresh_engine.connect() as conn:
        transaction = await conn.begin()
        with pytest.raises(InDroppedMonths) as refused:
            await import_trades(
                conn,
                "OLD",
                import_table(
                    "OLD",
                    [("1", january), ("2", STAMPS[2] + MINUTE)],
                    price="99",
                    volume="1",
                    side="buy",
                ),
                repair=False,
            )
        await transaction.rollback()
    assert str(refused.value) == (
        "1 trade(s) fall in 2026-01, whose trades TRADES_RETENTION dropped: the candles kept "
        "there cannot be recomputed from part of their trades; leave those trades out"
    )
    async with fresh_engine.begin() as conn:
        batch = await insert_venue_batch(
            conn,
            [
                VenueTrade("OLD", Decimal(7), Decimal(1), january, "3", "buy"),
                VenueTrade("OLD", Decimal(7), Decimal(1), STAMPS[3] + MINUTE, "4", "buy"),
            ],
            {"OLD": StoredMark(4, NOW, STAMPS[0])},
            feed="coinbase",
            stamped=datetime.now(UTC),
            leader_pid=None,
            lock_key=LEADER_LOCK_KEY,
        )
    assert batch is not None
    assert (batch.stored, batch.expired) == (1, {"OLD": 1})

    kept, _ = await _counts(fresh_engine)
    assert kept == sorted([*STAMPS[2:], STAMPS[3] + MINUTE])
    assert "trades_y2026m01" not in await _partitions(fresh_engine)
    after = await _candles(fresh_engine)
    assert [c for c in after if c[0] < datetime(2026, 2, 1, tzinfo=UTC)] == [
        c for c in candles if c[0] < datetime(2026, 2, 1, tzinfo=UTC)
    ]
    async with fresh_engine.begin() as conn:
        imported = await import_trades(
            conn,
            "OLD",
            import_table("OLD", [("5", STAMPS[4] + MINUTE)], price="99", volume="1", side="buy"),
            repair=False,
        )
    assert imported.stored == 1


async def test_a_backfill_stops_at_the_months_retention_dropped(
    fresh_engine: AsyncEngine, empty_database: URL
) -> None:
    await _history(fresh_engine)
    await _housekeeping(empty_database, _status()).once(NOW)

    # A year back from now: below the oldest trade kept (February 5th) lies January, dropped.
    (plan,) = await plan_backfill(
        fresh_engine, {"OLD": Decimal(10)}, days=365, trades_per_second=0.001, now=NOW
    )

    assert (plan.start, plan.end) == (datetime(2026, 2, 1, tzinfo=UTC), STAMPS[2])
