"""Candles aggregated by PostgreSQL, checked against an independent pure-Python reference."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mdp.database import open_engine
from mdp.settings import Settings
from persistence.candles import first_trade_at, read_candles
from persistence.database import is_unavailable
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, insert_trades

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
STEPS = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}
TICK = Decimal("0.01")
# A request time after every trade in these tests: every bucket is final.
LATER = datetime(2100, 1, 1, tzinfo=UTC)
VWAP_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class Stored:
    id: int
    price: Decimal
    volume: int
    timestamp: datetime


Candle = tuple[datetime, float, float, float, float, int, float, int]


def _floor(moment: datetime, step: timedelta) -> datetime:
    micros = (moment - EPOCH) // MICROSECOND
    return EPOCH + (micros - micros % (step // MICROSECOND)) * MICROSECOND


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step


def reference(
    trades: Sequence[Stored], step: timedelta, lo: datetime, hi: datetime
) -> list[Candle]:
    """The candle definition written out plainly, with exact decimal arithmetic."""
    buckets: dict[datetime, list[Stored]] = {}
    for trade in trades:
        if lo <= trade.timestamp < hi:
            buckets.setdefault(_floor(trade.timestamp, step), []).append(trade)
    candles = []
    for start in sorted(buckets):
        group = sorted(buckets[start], key=lambda t: (t.timestamp, t.id))
        volume = sum(t.volume for t in group)
        with localcontext() as ctx:
            ctx.prec = 60
            # PostgreSQL's numeric round() goes half away from zero, like ROUND_HALF_UP.
            vwap = (sum(t.price * t.volume for t in group) / volume).quantize(
                VWAP_PLACES, rounding=ROUND_HALF_UP
            )
        candles.append(
            (
                start,
                float(group[0].price),
                float(max(t.price for t in group)),
                float(min(t.price for t in group)),
                float(group[-1].price),
                volume,
                float(vwap),
                len(group),
            )
        )
    return candles


def random_trades(rng: random.Random, symbol: str) -> list[NewTrade]:
    """A few hundred trades over a few hours, often across a day or 4 h boundary, with ties."""
    first = datetime(2026, 3, rng.randint(1, 28), tzinfo=UTC) + rng.uniform(19, 23.5) * timedelta(
        hours=1
    )
    span = rng.uniform(1, 4) * timedelta(hours=1)
    count = rng.randint(200, 400)
    stamps = [first + rng.randrange(span // MICROSECOND) * MICROSECOND for _ in range(count)]
    for _ in range(rng.randint(5, 15)):
        # Several trades at one instant: open/close must fall back to the id.
        shared = rng.choice(stamps)
        for _ in range(rng.randint(1, 4)):
            stamps[rng.randrange(count)] = shared
    for _ in range(rng.randint(2, 6)):
        # Trades exactly on a minute boundary belong to the bucket that starts there.
        edge = rng.choice(stamps).replace(second=0, microsecond=0)
        for _ in range(rng.randint(1, 3)):
            stamps[rng.randrange(count)] = edge
    # Insertion order is random, so ids do not follow time.
    rng.shuffle(stamps)
    return [
        NewTrade(symbol, rng.randint(5_000, 15_000) * TICK, rng.randint(1, 1000), stamp)
        for stamp in stamps
    ]


async def _stored(conn: AsyncConnection, symbol: str) -> list[Stored]:
    rows = await conn.execute(
        text('SELECT id, price, volume, "timestamp" FROM trades WHERE symbol = :s'), {"s": symbol}
    )
    return [Stored(*row) for row in rows]


async def _candle_table(conn: AsyncConnection, symbol: str, interval: str) -> list[Candle]:
    rows = await conn.execute(
        text(
            'SELECT "timestamp", open, high, low, close, volume, vwap, trade_count FROM candles '
            'WHERE symbol = :s AND "interval" = :i ORDER BY "timestamp"'
        ),
        {"s": symbol, "i": interval},
    )
    return [
        (ts, float(o), float(h), float(lo), float(c), v, float(w), n)
        for ts, o, h, lo, c, v, w, n in rows
    ]


async def _coverage(
    conn: AsyncConnection, symbol: str
) -> dict[str, list[tuple[datetime, datetime]]]:
    rows = await conn.execute(
        text(
            "SELECT interval, lower(r), upper(r) FROM candle_coverage, unnest(covered) AS r "
            "WHERE symbol = :s ORDER BY 1, 2"
        ),
        {"s": symbol},
    )
    coverage: dict[str, list[tuple[datetime, datetime]]] = {}
    for interval, lower, upper in rows:
        coverage.setdefault(interval, []).append((lower, upper))
    return coverage


def _window(
    rng: random.Random, trades: Sequence[Stored], step: timedelta
) -> tuple[datetime, datetime]:
    """A bucket-aligned window that usually cuts some trades off at both ends."""
    first = min(t.timestamp for t in trades)
    last = max(t.timestamp for t in trades)
    span = last - first
    lo = _floor(first + rng.uniform(0, 0.3) * span, step)
    hi = _ceil(last - rng.uniform(0, 0.3) * span, step)
    return lo, max(hi, lo + step)


@pytest.mark.parametrize("seed", range(25))
async def test_candles_match_reference_for_random_trades(conn: AsyncConnection, seed: int) -> None:
    rng = random.Random(seed)
    symbol = f"RND{seed}"
    generated = random_trades(rng, symbol)
    await ensure_symbols(conn, [(symbol, "Random")])
    await insert_trades(conn, generated)
    trades = await _stored(conn, symbol)
    assert sorted((t.price, t.volume, t.timestamp) for t in trades) == sorted(
        (t.price, t.volume, t.timestamp) for t in generated
    )

    for interval, step in STEPS.items():
        lo, hi = _window(rng, trades, step)

        candles = await read_candles(
            conn, symbol=symbol, interval=interval, lo=lo, hi=hi, now=LATER
        )

        expected = reference(trades, step, lo, hi)
        assert [tuple(c) for c in candles] == expected, interval
        assert sum(c.trade_count for c in candles) == sum(lo <= t.timestamp < hi for t in trades)


async def test_candle_buckets_are_epoch_aligned_and_window_bounds_are_start_inclusive(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("EDGE", "Edges")])
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    hi = lo + timedelta(minutes=3)
    stamps = [
        lo - MICROSECOND,  # previous bucket: outside the window
        lo,  # first instant of the first bucket
        lo + timedelta(seconds=59, microseconds=999_999),
        lo + timedelta(minutes=2, seconds=30),
        hi,  # first instant after the window
    ]
    await insert_trades(
        conn, [NewTrade("EDGE", Decimal(10 + i), 1, stamp) for i, stamp in enumerate(stamps)]
    )

    candles = await read_candles(conn, symbol="EDGE", interval="1m", lo=lo, hi=hi, now=LATER)

    # Minute 1 has no trades and is omitted.
    assert [(c.timestamp, c.open, c.close, c.trade_count) for c in candles] == [
        (lo, 11.0, 12.0, 2),
        (lo + timedelta(minutes=2), 13.0, 13.0, 1),
    ]


async def test_day_candles_start_at_midnight_utc(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("DAY", "Days")])
    late = datetime(2026, 2, 3, 23, 59, 59, 999_999, tzinfo=UTC)
    early = datetime(2026, 2, 4, 0, 0, tzinfo=UTC)
    day = timedelta(days=1)
    await insert_trades(
        conn,
        [NewTrade("DAY", Decimal("1.00"), 1, late), NewTrade("DAY", Decimal("2.00"), 1, early)],
    )

    candles = await read_candles(
        conn, symbol="DAY", interval="1d", lo=early - day, hi=early + day, now=LATER
    )

    assert [(c.timestamp, c.open) for c in candles] == [(early - day, 1.0), (early, 2.0)]


async def test_candle_open_and_close_break_timestamp_ties_by_id(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("TIE", "Ties")])
    moment = datetime(2026, 2, 3, 10, 0, 30, 5, tzinfo=UTC)
    await insert_trades(conn, [NewTrade("TIE", Decimal("5.00"), 1, moment)])
    await insert_trades(conn, [NewTrade("TIE", Decimal("6.00"), 1, moment)])
    await insert_trades(conn, [NewTrade("TIE", Decimal("4.00"), 1, moment)])

    (candle,) = await read_candles(
        conn,
        symbol="TIE",
        interval="1m",
        lo=moment.replace(second=0, microsecond=0),
        hi=moment.replace(second=0, microsecond=0) + timedelta(minutes=1),
        now=LATER,
    )

    assert (candle.open, candle.high, candle.low, candle.close) == (5.0, 6.0, 4.0, 4.0)


async def test_vwap_rounds_half_away_from_zero_to_six_places(conn: AsyncConnection) -> None:
    # (127 × 100.00 + 1 × 100.04) / 128 = 100.0003125 exactly: half-even would give ...312.
    await ensure_symbols(conn, [("HALF", "Half")])
    moment = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    await insert_trades(
        conn,
        [
            NewTrade("HALF", Decimal("100.00"), 127, moment),
            NewTrade("HALF", Decimal("100.04"), 1, moment + MICROSECOND),
        ],
    )

    (candle,) = await read_candles(
        conn, symbol="HALF", interval="1m", lo=moment, hi=moment + timedelta(minutes=1), now=LATER
    )

    assert candle.vwap == 100.000313
    assert candle.volume == 128


async def test_final_candles_are_persisted_with_minutes_and_coverage(
    conn: AsyncConnection,
) -> None:
    rng = random.Random(99)
    await ensure_symbols(conn, [("PERS", "Persisted")])
    await insert_trades(conn, random_trades(rng, "PERS"))
    trades = await _stored(conn, "PERS")
    lo, hi = _window(rng, trades, STEPS["5m"])

    candles = await read_candles(conn, symbol="PERS", interval="5m", lo=lo, hi=hi, now=LATER)

    assert candles
    assert await _candle_table(conn, "PERS", "5m") == [tuple(c) for c in candles]
    # 5m rolls up from 1m: the minutes are persisted too, and both ranges are recorded.
    assert await _candle_table(conn, "PERS", "1m") == reference(trades, STEPS["1m"], lo, hi)
    assert await _coverage(conn, "PERS") == {"1m": [(lo, hi)], "5m": [(lo, hi)]}


async def test_final_candles_are_served_from_the_table_without_reading_trades_again(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("FIN", "Final")])
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    hi = lo + timedelta(hours=1)
    await insert_trades(
        conn,
        [
            NewTrade("FIN", Decimal("10.00"), 10, lo + timedelta(minutes=1)),
            NewTrade("FIN", Decimal("11.00"), 10, lo + timedelta(minutes=2)),
        ],
    )
    (before,) = await read_candles(conn, symbol="FIN", interval="1h", lo=lo, hi=hi, now=LATER)
    # A trade the visibility deadline forbids (inside a final bucket) proves where reads come
    # from: the persisted candle, untouched.
    await insert_trades(conn, [NewTrade("FIN", Decimal("99.00"), 5, lo + timedelta(minutes=3))])

    (after,) = await read_candles(conn, symbol="FIN", interval="1h", lo=lo, hi=hi, now=LATER)

    assert tuple(before)[1:] == (10.0, 11.0, 10.0, 11.0, 20, 10.5, 2)
    assert after == before


async def test_open_bucket_is_computed_live_on_each_read_and_not_persisted(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("OPEN", "Open")])
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    hi = lo + timedelta(hours=1)
    now = lo + timedelta(minutes=30)
    await insert_trades(
        conn,
        [
            NewTrade("OPEN", Decimal("10.00"), 10, lo + timedelta(minutes=1)),
            NewTrade("OPEN", Decimal("11.00"), 10, lo + timedelta(minutes=29, seconds=59)),
        ],
    )
    (before,) = await read_candles(conn, symbol="OPEN", interval="1h", lo=lo, hi=hi, now=now)
    await insert_trades(
        conn, [NewTrade("OPEN", Decimal("12.00"), 5, lo + timedelta(minutes=29, seconds=59))]
    )

    (after,) = await read_candles(conn, symbol="OPEN", interval="1h", lo=lo, hi=hi, now=now)

    assert tuple(before)[1:] == (10.0, 11.0, 10.0, 11.0, 20, 10.5, 2)
    assert tuple(after)[1:] == (10.0, 12.0, 10.0, 12.0, 25, 10.8, 3)
    assert await _candle_table(conn, "OPEN", "1h") == []
    # The minutes that ended before the deadline are final and persisted; the rest are live.
    assert [c[0] for c in await _candle_table(conn, "OPEN", "1m")] == [lo + timedelta(minutes=1)]


@pytest.mark.parametrize("seed", range(8))
async def test_candles_match_reference_while_time_passes_over_the_window(
    conn: AsyncConnection, seed: int
) -> None:
    """Reads at increasing request times mix final, newly final and live buckets: every read,
    at every interval, equals the reference over the trades that exist."""
    rng = random.Random(1000 + seed)
    symbol = f"TIME{seed}"
    await ensure_symbols(conn, [(symbol, "Time")])
    pending = sorted(random_trades(rng, symbol), key=lambda t: t.timestamp)
    first, last = pending[0].timestamp, pending[-1].timestamp
    nows = sorted(first + rng.uniform(0, 1.1) * (last - first) for _ in range(4))

    for now in nows:
        # As in production, trades only ever arrive up to the present.
        await insert_trades(conn, [t for t in pending if t.timestamp < now])
        pending = [t for t in pending if t.timestamp >= now]
        trades = await _stored(conn, symbol)
        for interval, step in STEPS.items():
            lo, hi = _floor(first, step), _ceil(now, step)
            candles = await read_candles(
                conn, symbol=symbol, interval=interval, lo=lo, hi=hi, now=now
            )
            expected = reference(trades, step, lo, hi)
            assert [tuple(c) for c in candles] == expected, (interval, now)


async def test_first_trade_at_finds_first_trade_in_half_open_window(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("FTA", "First")])
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    await insert_trades(
        conn,
        [
            NewTrade("FTA", Decimal("1.00"), 1, lo + timedelta(minutes=30)),
            NewTrade("FTA", Decimal("1.00"), 1, lo - MICROSECOND),
            NewTrade("FTA", Decimal("1.00"), 1, lo + timedelta(minutes=10, microseconds=7)),
        ],
    )

    assert await first_trade_at(conn, "FTA", lo, lo + timedelta(hours=1)) == lo + timedelta(
        minutes=10, microseconds=7
    )
    assert await first_trade_at(conn, "FTA", lo - MICROSECOND, lo) == lo - MICROSECOND
    # `hi` is exclusive: a trade exactly at hi is not in the window.
    assert await first_trade_at(conn, "FTA", lo, lo + timedelta(minutes=10, microseconds=7)) is None
    assert await first_trade_at(conn, "OTHER", lo, lo + timedelta(hours=1)) is None


async def test_concurrent_reads_of_one_uncomputed_window_succeed_and_agree(
    fresh_engine: AsyncEngine,
) -> None:
    rng = random.Random(7)
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("CONC", "Concurrent")])
        await insert_trades(conn, random_trades(rng, "CONC"))

    for round_ in range(6):
        async with fresh_engine.begin() as conn:
            # Start every round uncomputed, so both readers race to compute the same buckets.
            await conn.execute(text("DELETE FROM candles"))
            await conn.execute(text("DELETE FROM candle_coverage"))
            if round_ % 2:
                more = [
                    NewTrade("CONC", rng.randint(5_000, 15_000) * TICK, rng.randint(1, 1000), ts)
                    for ts in rng.sample([t.timestamp for t in await _stored(conn, "CONC")], 50)
                ]
                await insert_trades(conn, more)
            trades = await _stored(conn, "CONC")
        interval = ("1m", "5m", "1h")[round_ % 3]
        step = STEPS[interval]
        lo = _floor(min(t.timestamp for t in trades), step)
        hi = _ceil(max(t.timestamp for t in trades) + MICROSECOND, step)

        async def read(
            interval: str = interval, lo: datetime = lo, hi: datetime = hi
        ) -> list[tuple[object, ...]]:
            async with fresh_engine.connect() as conn:
                rows = await read_candles(
                    conn, symbol="CONC", interval=interval, lo=lo, hi=hi, now=LATER
                )
                await conn.commit()
                return [tuple(row) for row in rows]

        first, second = await asyncio.wait_for(asyncio.gather(read(), read()), timeout=20)

        expected = reference(trades, step, lo, hi)
        assert first == second == expected
        async with fresh_engine.connect() as conn:
            assert await _candle_table(conn, "CONC", interval) == expected


async def test_final_minutes_over_several_days_are_computed_day_by_day_and_agree(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("DAYS", "Days")])
    first = datetime(2026, 2, 3, 7, 13, 5, tzinfo=UTC)
    rng = random.Random(5)
    trades = [
        NewTrade("DAYS", rng.randint(9_000, 11_000) * TICK, rng.randint(1, 50), moment)
        for moment in (first + timedelta(minutes=7 * i) for i in range(3 * 24 * 60 // 7))
    ]
    await insert_trades(conn, trades)
    stored = await _stored(conn, "DAYS")
    lo, hi = _floor(first, STEPS["1h"]), _ceil(stored[-1].timestamp + MICROSECOND, STEPS["1h"])

    candles = await read_candles(conn, symbol="DAYS", interval="1h", lo=lo, hi=hi, now=LATER)

    assert [tuple(c) for c in candles] == reference(stored, STEPS["1h"], lo, hi)
    # Computed a day at a time, recorded as one merged range per interval.
    assert await _coverage(conn, "DAYS") == {"1h": [(lo, hi)], "1m": [(lo, hi)]}


async def test_a_timed_out_first_computation_is_unavailable_and_frees_the_symbol_lock(
    empty_database: URL, fresh_engine: AsyncEngine
) -> None:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("SLOW", "Slow")])
        await insert_trades(
            conn, [NewTrade("SLOW", Decimal("1.00"), 1, datetime(2026, 2, 3, 10, 0, tzinfo=UTC))]
        )
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    # The service's read engine, with a statement timeout the blocked computation runs into.
    reader = open_engine(
        Settings(db_pool_size=1, db_query_timeout_seconds=0.3), empty_database, "api"
    )
    try:
        async with fresh_engine.connect() as blocker:
            # Readers may read candles, nobody may write them: the first computation hangs.
            await blocker.execute(text("LOCK TABLE candles IN EXCLUSIVE MODE"))
            async with reader.connect() as conn:
                with pytest.raises((DBAPIError, TimeoutError)) as raised:
                    await read_candles(
                        conn, symbol="SLOW", interval="1m", lo=lo, hi=lo + STEPS["1h"], now=LATER
                    )
            await blocker.rollback()
        assert is_unavailable(raised.value)

        async with fresh_engine.connect() as conn:
            free = await conn.execute(
                text("SELECT pg_try_advisory_lock(hashtext('mdp.candles'), hashtext('SLOW'))")
            )
            assert free.scalar_one() is True
            await conn.execute(text("SELECT pg_advisory_unlock_all()"))
        async with reader.connect() as conn:
            (candle,) = await read_candles(
                conn, symbol="SLOW", interval="1m", lo=lo, hi=lo + STEPS["1h"], now=LATER
            )
        assert candle.trade_count == 1
    finally:
        await reader.dispose()
