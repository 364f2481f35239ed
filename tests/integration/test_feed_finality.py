"""Finality follows each venue symbol's watermark: the boundary, the transaction, late prints.

These pin the rules that replace the clock-only ones (`BatchTooLate` and the `<=` of the
closed rule): each test fails when its rule is broken.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingestion.leader import LEADER_LOCK_KEY
from persistence import zoned
from persistence.candles import read_candle_page
from persistence.connections import driver_connection
from persistence.feeds import StoredMark, VenueBatch, insert_venue_batch, stored_marks
from persistence.materialise import advance_watermark
from persistence.partitions import ensure_partitions
from persistence.symbols import ensure_symbols
from persistence.trades import VenueTrade
from tests.support import store_venue_batch

MINUTE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)
# Well in the past: the clock's horizon has long passed it, only the watermark decides.
BASE = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
SYMBOL = "BTC-USD"


def trade(at: datetime, venue_id: int, price: str = "64000.12345678") -> VenueTrade:
    return VenueTrade(SYMBOL, Decimal(price), Decimal("0.001"), at, str(venue_id), "buy")


async def prepare(conn: AsyncConnection, *symbols: str) -> None:
    await ensure_symbols(conn, [(symbol, symbol) for symbol in symbols])
    await ensure_partitions(conn, BASE, BASE + MINUTE)


async def write(
    conn: AsyncConnection,
    trades: list[VenueTrade],
    through: datetime | None,
    *,
    last_id: int,
    stamped: datetime,
) -> VenueBatch:
    return await store_venue_batch(
        conn, trades, {SYMBOL: StoredMark(last_id, through, BASE)}, stamped=stamped
    )


async def closed(conn: AsyncConnection, start: datetime) -> bool:
    page = await read_candle_page(
        await driver_connection(conn),
        symbol=SYMBOL,
        interval="1m",
        step=MINUTE,
        lo=start,
        hi=start + MINUTE,
        limit=1,
    )
    (candle,) = page.candles
    return candle.closed


async def zoned_closed(conn: AsyncConnection, start: datetime) -> bool:
    raw = await driver_connection(conn)
    now = await zoned.clock(raw, [SYMBOL])
    (row,) = await zoned.read_zoned_candles(raw, [SYMBOL], [start, start + MINUTE], now)
    return bool(row["closed"])


async def test_a_bucket_closes_exactly_when_the_watermark_reaches_its_end(
    fresh_engine: AsyncEngine,
) -> None:
    stamped = datetime.now(UTC)
    async with fresh_engine.begin() as conn:
        await prepare(conn, SYMBOL)
        await write(
            conn,
            [trade(BASE + timedelta(seconds=5), 1)],
            BASE + MINUTE - MICROSECOND,
            last_id=1,
            stamped=stamped,
        )
        # A microsecond short of the bucket's end: a trade could still be missing from it.
        assert not await closed(conn, BASE)
        assert not await zoned_closed(conn, BASE)
        await write(conn, [], BASE + MINUTE, last_id=1, stamped=stamped + MICROSECOND)
        # At its end exactly: every trade stamped before it is stored.
        assert await closed(conn, BASE)
        assert await zoned_closed(conn, BASE)


async def test_trades_and_their_watermark_commit_together_or_not_at_all(
    fresh_engine: AsyncEngine,
) -> None:
    stamped = datetime.now(UTC)
    async with fresh_engine.begin() as conn:
        await prepare(conn, SYMBOL)
        await write(conn, [trade(BASE, 1)], BASE, last_id=1, stamped=stamped)
    # Not newer than the last batch (a raced or retried writer): refused, nothing of it stays.
    async with fresh_engine.begin() as conn:
        refused = await insert_venue_batch(
            conn,
            [trade(BASE + timedelta(seconds=30), 2)],
            {SYMBOL: StoredMark(2, BASE + MINUTE, BASE)},
            feed="coinbase",
            stamped=stamped,
            leader_pid=None,
            lock_key=LEADER_LOCK_KEY,
        )
        assert refused is None
    async with fresh_engine.connect() as conn:
        assert (await stored_marks(conn, "coinbase"))[SYMBOL] == StoredMark(1, BASE, BASE)
        count = await conn.scalar(text("SELECT count(*) FROM trades"))
        assert count == 1


async def test_a_trade_stored_twice_is_stored_once(fresh_engine: AsyncEngine) -> None:
    stamped = datetime.now(UTC)
    async with fresh_engine.begin() as conn:
        await prepare(conn, SYMBOL)
        await write(conn, [trade(BASE, 1), trade(BASE, 1)], BASE, last_id=1, stamped=stamped)
        await write(conn, [trade(BASE, 1)], BASE, last_id=1, stamped=stamped + MICROSECOND)
        assert await conn.scalar(text("SELECT count(*) FROM trades")) == 1


async def test_a_late_print_into_a_materialised_bucket_is_stored_and_revises_it(
    fresh_engine: AsyncEngine,
) -> None:
    stamped = datetime.now(UTC)
    async with fresh_engine.begin() as conn:
        await prepare(conn, SYMBOL)
        await write(
            conn,
            [trade(BASE + timedelta(seconds=1), 1, "100")],
            BASE + 2 * MINUTE,
            last_id=1,
            stamped=stamped,
        )
    async with fresh_engine.begin() as conn:
        advance = await advance_watermark(conn, span=timedelta(days=1))
        assert advance is not None and advance.after == BASE + 2 * MINUTE
    async with fresh_engine.begin() as conn:
        batch = await write(
            conn,
            [trade(BASE + timedelta(seconds=2), 2, "90")],
            BASE + 2 * MINUTE,
            last_id=2,
            stamped=stamped + MICROSECOND,
        )
        assert (batch.late, batch.duplicates) == ({SYMBOL: 1}, {})
    async with fresh_engine.connect() as conn:
        assert await candle(conn, "1m") == (Decimal("90"), 1)
        # The hour is not final: the print's roll-up of it is not a revision.
        assert await candle(conn, "1h") == (Decimal("90"), 0)
    async with fresh_engine.begin() as conn:
        # Re-delivered: stored once, counted as a duplicate (not a late print), and the
        # candle is not revised again.
        batch = await write(
            conn,
            [trade(BASE + timedelta(seconds=2), 2, "90")],
            BASE + 2 * MINUTE,
            last_id=2,
            stamped=stamped + 2 * MICROSECOND,
        )
        assert (batch.stored, batch.late, batch.duplicates) == (0, {}, {SYMBOL: 1})
        # The hour becomes final: the leader completing it is its first version, not a revision.
        await write(
            conn,
            [trade(BASE + 30 * MINUTE, 3, "95")],
            BASE + 61 * MINUTE,
            last_id=3,
            stamped=stamped + 3 * MICROSECOND,
        )
    async with fresh_engine.begin() as conn:
        await advance_watermark(conn, span=timedelta(days=1))
    async with fresh_engine.connect() as conn:
        assert await candle(conn, "1m") == (Decimal("90"), 1)
        assert await candle(conn, "1h") == (Decimal("90"), 0)
        assert await conn.scalar(text("SELECT count(*) FROM trades")) == 3


async def candle(conn: AsyncConnection, interval: str) -> tuple[Decimal, int]:
    """(low, revision) of the stored `interval` candle at BASE."""
    row = (
        await conn.execute(
            text(
                "SELECT low, revision FROM candles"
                " WHERE symbol = :s AND interval = :i AND timestamp = :t"
            ),
            {"s": SYMBOL, "i": interval, "t": BASE},
        )
    ).one()
    return row[0], row[1]


async def test_each_symbol_is_materialised_as_far_as_its_own_feed_a_stalled_one_holds_none_back(
    fresh_engine: AsyncEngine,
) -> None:
    """A stalled (quiet or down) feed holds back its own candles only; a late print into a
    bucket final for its own symbol revises it, whatever the other feeds do."""
    stalled = "ETH-USD"
    stamped = datetime.now(UTC)

    async def batch(
        conn: AsyncConnection, trades: list[VenueTrade], at: datetime
    ) -> dict[str, int]:
        marks = {
            SYMBOL: StoredMark(3, BASE + MINUTE + MINUTE / 2, BASE),
            stalled: StoredMark(7, BASE - MINUTE, BASE - MINUTE),
        }
        written = await insert_venue_batch(
            conn,
            trades,
            marks,
            feed="coinbase",
            stamped=at,
            leader_pid=None,
            lock_key=LEADER_LOCK_KEY,
        )
        assert written is not None
        return written.late

    async with fresh_engine.begin() as conn:
        await prepare(conn, SYMBOL, stalled)
        await batch(conn, [trade(BASE + timedelta(seconds=1), 1, "100")], stamped)
    async with fresh_engine.begin() as conn:
        advance = await advance_watermark(conn, span=timedelta(days=1))
        assert advance is not None and advance.after == BASE - MINUTE
    async with fresh_engine.connect() as conn:
        marks = await conn.execute(text("SELECT symbol, candles_until FROM candle_watermarks"))
        # Each up to the minute its own watermark has passed.
        assert dict(marks.all()) == {SYMBOL: BASE + MINUTE, stalled: BASE - MINUTE}
        assert await candle(conn, "1m") == (Decimal("100"), 0)
    async with fresh_engine.begin() as conn:
        late = await batch(
            conn, [trade(BASE + timedelta(seconds=2), 2, "90")], stamped + MICROSECOND
        )
        assert late == {SYMBOL: 1}
    async with fresh_engine.connect() as conn:
        assert await candle(conn, "1m") == (Decimal("90"), 1)


async def test_without_a_feed_a_bucket_closes_exactly_at_the_clock_horizon(
    fresh_engine: AsyncEngine,
) -> None:
    """The synthetic walk keeps the clock rule: a bucket ending at the horizon is final."""
    async with fresh_engine.begin() as conn:
        await prepare(conn, "AAPL")
        await conn.execute(
            text(
                "INSERT INTO trades (symbol, price, volume, timestamp) VALUES ('AAPL', 190, 1, :at)"
            ),
            {"at": BASE + timedelta(seconds=5)},
        )
        raw = await driver_connection(conn)
        starts = [BASE, BASE + MINUTE]
        for horizon, final in ((BASE + MINUTE, True), (BASE + MINUTE - MICROSECOND, False)):
            clock = zoned.Clock(horizon, BASE, horizon)
            (row,) = await zoned.read_zoned_candles(raw, ["AAPL"], starts, clock)
            assert row["closed"] is final, horizon
