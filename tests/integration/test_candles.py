"""Candles aggregated by PostgreSQL, checked against an independent pure-Python reference."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from errors import SymbolNotFound
from ingestion.generator import TradeGenerator
from ingestion.loop import Ingestor
from ingestion.materialiser import CandleMaterialiser
from ingestion.status import IngestionStatus
from persistence.candles import read_candle_page
from persistence.connections import driver_connection
from persistence.finality import horizon
from persistence.materialise import Advance, advance_watermark
from persistence.models import VWAP_SCALE
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade
from tests.support import restore_trades, wait_until_async

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
# Long enough for one step to materialise everything these tests store.
EVERYTHING = timedelta(days=365 * 200)
VWAP_PLACES = Decimal(1).scaleb(-VWAP_SCALE)


@dataclass(frozen=True)
class Stored:
    id: int
    price: Decimal
    volume: int
    timestamp: datetime


Candle = tuple[datetime, Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int]


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
                group[0].price,
                max(t.price for t in group),
                min(t.price for t in group),
                group[-1].price,
                volume,
                vwap,
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
    return [(ts, o, h, lo, c, v, w, n) for ts, o, h, lo, c, v, w, n in rows]


async def read(
    conn: AsyncConnection, symbol: str, interval: str, lo: datetime, hi: datetime
) -> tuple[list[Candle], bool]:
    """Every candle of [lo, hi) as the API reads it, and whether final buckets came from trades."""
    page = await read_candle_page(
        await driver_connection(conn),
        symbol=symbol,
        interval=interval,
        step=STEPS[interval],
        lo=lo,
        hi=hi,
        limit=10**6,
    )
    assert all(candle.closed for candle in page.candles)
    return [tuple(candle)[:8] for candle in page.candles], page.from_trades  # type: ignore[misc]


async def materialise(conn: AsyncConnection, until: datetime | None = None) -> None:
    """What the ingestion leader does, in one step: every final minute up to `until`."""
    assert await advance_watermark(conn, span=EVERYTHING, until=until) is not None


async def _watermarks(conn: AsyncConnection, codes: Sequence[str]) -> list[datetime]:
    rows = await conn.execute(
        text("SELECT candles_until FROM candle_watermarks WHERE symbol = ANY(:s) ORDER BY symbol"),
        {"s": list(codes)},
    )
    return list(rows.scalars())


async def watermark(conn: AsyncConnection) -> datetime | None:
    value = await conn.execute(text("SELECT min(candles_until) FROM candle_watermarks"))
    moment = value.scalar_one()
    assert moment is None or isinstance(moment, datetime)
    return moment


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


@pytest.fixture(autouse=True)
async def _nothing_materialised(conn: AsyncConnection) -> None:
    """The trades these tests store arrive behind the leader's back, as if restored from a
    dump: nothing is materialised until a test says so."""
    await conn.execute(text("DELETE FROM candle_watermarks"))


@pytest.mark.parametrize("seed", range(25))
async def test_candles_match_reference_for_random_trades(conn: AsyncConnection, seed: int) -> None:
    rng = random.Random(seed)
    symbol = f"RND{seed}"
    generated = random_trades(rng, symbol)
    await ensure_symbols(conn, [(symbol, "Random")])
    await restore_trades(conn, generated)
    trades = await _stored(conn, symbol)
    assert sorted((t.price, t.volume, t.timestamp) for t in trades) == sorted(
        (t.price, t.volume, t.timestamp) for t in generated
    )
    windows = {interval: _window(rng, trades, step) for interval, step in STEPS.items()}

    # Not materialised yet: answered from trades. Materialised: read from `candles`.
    for materialised in (False, True):
        if materialised:
            await materialise(conn)
        for interval, step in STEPS.items():
            lo, hi = windows[interval]

            candles, from_trades = await read(conn, symbol, interval, lo, hi)

            expected = reference(trades, step, lo, hi)
            assert candles == expected, (interval, materialised)
            assert sum(c[7] for c in candles) == sum(lo <= t.timestamp < hi for t in trades)
            assert from_trades is not materialised


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
    await restore_trades(
        conn, [NewTrade("EDGE", Decimal(10 + i), 1, stamp) for i, stamp in enumerate(stamps)]
    )

    for _ in range(2):
        candles, _ = await read(conn, "EDGE", "1m", lo, hi)

        # Minute 1 has no trades and is omitted.
        assert [(c[0], c[1], c[4], c[7]) for c in candles] == [
            (lo, 11.0, 12.0, 2),
            (lo + timedelta(minutes=2), 13.0, 13.0, 1),
        ]
        await materialise(conn)


async def test_day_candles_start_at_midnight_utc(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("DAY", "Days")])
    late = datetime(2026, 2, 3, 23, 59, 59, 999_999, tzinfo=UTC)
    early = datetime(2026, 2, 4, 0, 0, tzinfo=UTC)
    day = timedelta(days=1)
    await restore_trades(
        conn,
        [NewTrade("DAY", Decimal("1.00"), 1, late), NewTrade("DAY", Decimal("2.00"), 1, early)],
    )
    await materialise(conn)

    candles, _ = await read(conn, "DAY", "1d", early - day, early + day)

    assert [(c[0], c[1]) for c in candles] == [(early - day, 1.0), (early, 2.0)]


async def test_candle_open_and_close_break_timestamp_ties_by_id(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("TIE", "Ties")])
    moment = datetime(2026, 2, 3, 10, 0, 30, 5, tzinfo=UTC)
    await restore_trades(conn, [NewTrade("TIE", Decimal("5.00"), 1, moment)])
    await restore_trades(conn, [NewTrade("TIE", Decimal("6.00"), 1, moment)])
    await restore_trades(conn, [NewTrade("TIE", Decimal("4.00"), 1, moment)])
    minute = moment.replace(second=0, microsecond=0)

    for _ in range(2):
        ((_, o, h, low, c, *_),), _ = await read(
            conn, "TIE", "1m", minute, minute + timedelta(minutes=1)
        )

        assert (o, h, low, c) == (5.0, 6.0, 4.0, 4.0)
        await materialise(conn)


async def test_vwap_rounds_half_away_from_zero_to_twelve_places(conn: AsyncConnection) -> None:
    # (2047 × 100.00 + 1 × 100.01) / 2048 = 100.0000048828125 exactly: half-even would give
    # ...812.
    await ensure_symbols(conn, [("HALF", "Half")])
    moment = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    await restore_trades(
        conn,
        [
            NewTrade("HALF", Decimal("100.00"), Decimal(2047), moment),
            NewTrade("HALF", Decimal("100.01"), Decimal(1), moment + MICROSECOND),
        ],
    )

    for _ in range(2):
        (candle,), _ = await read(conn, "HALF", "1m", moment, moment + timedelta(minutes=1))

        assert (candle[6], candle[5]) == (Decimal("100.000004882813"), 2048)
        await materialise(conn)


async def test_materialising_stores_every_interval_up_to_the_final_horizon(
    conn: AsyncConnection,
) -> None:
    rng = random.Random(99)
    await ensure_symbols(conn, [("PERS", "Persisted")])
    await restore_trades(conn, random_trades(rng, "PERS"))
    trades = await _stored(conn, "PERS")
    last = max(t.timestamp for t in trades)

    await materialise(conn)

    # Everything is final: every interval is stored, and the watermark is the horizon.
    for interval, step in STEPS.items():
        lo, hi = _floor(min(t.timestamp for t in trades), step), _ceil(last + MICROSECOND, step)
        assert await _candle_table(conn, "PERS", interval) == reference(trades, step, lo, hi)
    assert await watermark(conn) == _floor(await horizon(conn), STEPS["1m"])


async def test_materialised_candles_are_read_without_reading_trades_again(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("FIN", "Final")])
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    hi = lo + timedelta(hours=1)
    await restore_trades(
        conn,
        [
            NewTrade("FIN", Decimal("10.00"), 10, lo + timedelta(minutes=1)),
            NewTrade("FIN", Decimal("11.00"), 10, lo + timedelta(minutes=2)),
        ],
    )
    await materialise(conn)
    (before,), _ = await read(conn, "FIN", "1h", lo, hi)
    # A trade the visibility deadline forbids (inside a final bucket) proves where reads come
    # from: the materialised candle, untouched.
    await restore_trades(conn, [NewTrade("FIN", Decimal("99.00"), 5, lo + timedelta(minutes=3))])

    (after,), from_trades = await read(conn, "FIN", "1h", lo, hi)

    assert before[1:] == (10.0, 11.0, 10.0, 11.0, 20, 10.5, 2)
    assert after == before
    assert not from_trades


async def test_the_open_bucket_rolls_up_materialised_minutes_and_the_live_minute(
    conn: AsyncConnection,
) -> None:
    final = await horizon(conn)  # now() - 2 s: fixed for this test's transaction
    live_minute = _floor(final, STEPS["1m"])
    last_final_minute = live_minute - STEPS["1m"]
    interval = next(
        (i for i in ("1h", "4h", "1d") if _floor(final, STEPS[i]) <= last_final_minute), None
    )
    if interval is None:
        pytest.skip("the UTC day began under two minutes ago: no open bucket has a final minute")
    bucket = _floor(final, STEPS[interval])
    await ensure_symbols(conn, [("OPEN", "Open")])
    await restore_trades(
        conn,
        [
            NewTrade("OPEN", Decimal("10.00"), 10, last_final_minute + timedelta(seconds=10)),
            NewTrade("OPEN", Decimal("11.00"), 10, live_minute),
        ],
    )
    await materialise(conn)
    # Behind the deadline's back, into a materialised minute: the read must not see it.
    await restore_trades(
        conn, [NewTrade("OPEN", Decimal("99.00"), 1, last_final_minute + timedelta(seconds=20))]
    )
    await restore_trades(conn, [NewTrade("OPEN", Decimal("12.00"), 5, final)])

    page = await read_candle_page(
        await driver_connection(conn),
        symbol="OPEN",
        interval=interval,
        step=STEPS[interval],
        lo=bucket,
        hi=bucket + STEPS[interval],
        limit=1,
    )

    (candle,) = page.candles
    # Not stored as final yet: revision 0.
    assert tuple(candle) == (bucket, 10, 12, 10, 12, 25, Decimal("10.8"), 3, False, 0)
    assert not page.from_trades
    assert await _candle_table(conn, "OPEN", interval) == []
    assert [c[0] for c in await _candle_table(conn, "OPEN", "1m")] == [last_final_minute]


@pytest.mark.parametrize("seed", range(8))
async def test_candles_match_reference_while_the_watermark_passes_over_the_window(
    conn: AsyncConnection, seed: int
) -> None:
    """Reads as materialisation moves on mix materialised, newly materialised and not yet
    materialised buckets: every read, at every interval, equals the reference."""
    rng = random.Random(1000 + seed)
    symbol = f"TIME{seed}"
    await ensure_symbols(conn, [(symbol, "Time")])
    await restore_trades(conn, random_trades(rng, symbol))
    trades = await _stored(conn, symbol)
    first, last = min(t.timestamp for t in trades), max(t.timestamp for t in trades)
    stops = sorted(first + rng.uniform(0, 1.1) * (last - first) for _ in range(4))

    for stop in stops:
        assert await advance_watermark(conn, span=EVERYTHING, until=stop) is not None
        for interval, step in STEPS.items():
            lo, hi = _floor(first, step), _ceil(last + MICROSECOND, step)
            candles, _ = await read(conn, symbol, interval, lo, hi)
            assert candles == reference(trades, step, lo, hi), (interval, stop)


async def test_each_step_stores_exactly_the_buckets_that_ended_as_minutes_hours_and_days_roll(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("ROLL", "Roll-over")])
    start = datetime(2026, 3, 1, 19, 50, 5, tzinfo=UTC)
    rng = random.Random(3)
    await restore_trades(
        conn,
        [
            NewTrade("ROLL", rng.randint(9_000, 11_000) * TICK, rng.randint(1, 50), moment)
            for moment in (start + timedelta(seconds=20 * i) for i in range(3 * 4 * 65))
        ],
    )
    trades = await _stored(conn, "ROLL")
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    await materialise(conn, until=midnight - timedelta(minutes=3))

    for stop in (midnight + timedelta(minutes=m) for m in (-2, -1, 0, 1)):
        assert await advance_watermark(conn, span=EVERYTHING, until=stop) is not None

        assert await watermark(conn) == stop
        for interval, step in STEPS.items():
            expected = reference(trades, step, _floor(start, step), _floor(stop, step))
            assert await _candle_table(conn, "ROLL", interval) == expected, (interval, stop)
    # The day, the 4 h and the hour that ended at midnight are all there.
    assert (await _candle_table(conn, "ROLL", "1d"))[-1][0] == midnight - STEPS["1d"]


async def test_a_page_starts_at_the_first_trade_and_spans_at_most_limit_buckets(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("FTA", "First"), ("NONE", "No trades")])
    lo = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)
    hi = lo + timedelta(hours=1)
    await restore_trades(
        conn,
        [
            NewTrade("FTA", Decimal("1.00"), 1, lo + timedelta(minutes=30)),
            NewTrade("FTA", Decimal("1.00"), 1, lo - MICROSECOND),
            NewTrade("FTA", Decimal("1.00"), 1, lo + timedelta(minutes=10, microseconds=7)),
            NewTrade("FTA", Decimal("1.00"), 1, lo + timedelta(minutes=50)),
        ],
    )

    async def page(symbol: str, lo: datetime) -> tuple[list[datetime], datetime]:
        result = await read_candle_page(
            await driver_connection(conn),
            symbol=symbol,
            interval="1m",
            step=STEPS["1m"],
            lo=lo,
            hi=hi,
            limit=25,
        )
        return [c.timestamp for c in result.candles], result.until

    minutes = [lo + timedelta(minutes=m) for m in (10, 30, 35, 50)]
    assert await page("FTA", lo) == ([minutes[0], minutes[1]], minutes[2])
    assert await page("FTA", minutes[2]) == ([minutes[3]], hi)
    assert await page("NONE", lo) == ([], hi)
    with pytest.raises(SymbolNotFound):
        await page("OTHER", lo)


async def test_catching_up_goes_oldest_first_in_bounded_steps(fresh_engine: AsyncEngine) -> None:
    """A database restored with days of trades and nothing materialised: the leader's steps
    start at the oldest trade, each continues where the last ended, none exceeds its span."""
    now = datetime.now(UTC)
    first = now - timedelta(days=3)
    rng = random.Random(11)
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("CU1", "One"), ("CU2", "Two")])
        await restore_trades(
            conn,
            [
                NewTrade(code, rng.randint(9_000, 11_000) * TICK, rng.randint(1, 50), moment)
                for code in ("CU1", "CU2")
                for moment in (first + timedelta(minutes=7 * i) for i in range(3 * 24 * 60 // 7))
            ],
        )
    materialiser = CandleMaterialiser(fresh_engine, budget=60.0)
    steps: list[tuple[Advance, timedelta]] = []
    while not steps or not steps[-1][0].caught_up:
        span = materialiser.span
        advance = await materialiser.step()
        assert advance is not None
        steps.append((advance, span))

    assert steps[0][0].before == _floor(first, STEPS["1m"])
    assert len(steps) > 2
    for (previous, _), (advance, span) in itertools.pairwise(steps):
        assert advance.before == previous.after
        assert timedelta(0) < advance.after - advance.before <= span
    async with fresh_engine.connect() as conn:
        for interval, step in STEPS.items():
            trades = await _stored(conn, "CU2")
            lo, hi = _floor(first, step), _floor(steps[-1][0].after, step)
            candles, from_trades = await read(conn, "CU2", interval, lo, hi)
            assert candles == reference(trades, step, lo, hi), interval
            assert not from_trades


async def test_a_step_past_its_deadline_leaves_the_other_symbols_for_the_next(
    conn: AsyncConnection,
) -> None:
    """A busy feed's minute can hold more trades than one step's budget aggregates: a symbol
    at a time, the rest on the next steps, and the candles are as if done at once."""
    codes = ("DLA", "DLB", "DLC")
    await ensure_symbols(conn, [(code, code) for code in codes])
    start = datetime(2026, 3, 1, 9, 0, 5, tzinfo=UTC)
    rng = random.Random(5)
    await restore_trades(
        conn,
        [
            NewTrade(code, rng.randint(9_000, 11_000) * TICK, rng.randint(1, 50), moment)
            for code in codes
            for moment in (start + timedelta(seconds=15 * i) for i in range(4 * 60))
        ],
    )
    until = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)

    afters = []
    for _ in codes:
        # Already past: each step materialises one symbol, and moves only its watermark.
        advance = await advance_watermark(conn, span=EVERYTHING, until=until, deadline=0.0)
        assert advance is not None
        afters.append((advance.after, await _watermarks(conn, codes)))

    first = _floor(start, STEPS["1m"])
    assert afters == [
        (first, [until, first, first]),
        (first, [until, until, first]),
        (until, [until, until, until]),
    ]
    for code in codes:
        trades = await _stored(conn, code)
        for interval, step in STEPS.items():
            lo, hi = _floor(start, step), _floor(until, step)
            candles, from_trades = await read(conn, code, interval, lo, hi)
            assert candles == reference(trades, step, lo, hi), (code, interval)
            assert not from_trades


async def test_the_ingestion_leader_catches_up_between_batches(fresh_engine: AsyncEngine) -> None:
    """The real loop: a day restored without candles is materialised while batches go on."""
    first = datetime.now(UTC) - timedelta(days=1)
    rng = random.Random(12)
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [("LIVE", "Live")])
        await restore_trades(
            conn,
            [
                NewTrade("LIVE", rng.randint(9_000, 11_000) * TICK, rng.randint(1, 50), moment)
                for moment in (first + timedelta(minutes=3 * i) for i in range(24 * 20))
            ],
        )
    generator = TradeGenerator({"LIVE": Decimal("100.00")}, seed=1, max_trades_per_symbol=3)
    status = IngestionStatus(enabled=True, interval_seconds=0.2, symbols=("LIVE",))
    ingestor = Ingestor(fresh_engine, generator, status)
    # Step sizes are not the point here (see the test above): whatever the machine's load,
    # steps double from an hour, a few cycles in all.
    ingestor.candles.budget = 60.0
    task = asyncio.create_task(ingestor.run())
    try:
        await wait_until_async(
            lambda: (
                status.candles_until is not None
                and status.candles_until > datetime.now(UTC) - timedelta(minutes=2)
            ),
            what="the candles caught up",
        )
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert status.failures_total == status.candle_failures_total == 0
    assert status.batches_total > 1
    async with fresh_engine.connect() as conn:
        trades = await _stored(conn, "LIVE")
        assert status.candles_until == await watermark(conn)
        for interval, step in STEPS.items():
            lo, hi = _floor(first, step), _floor(status.candles_until, step)
            # Everything final so far, live batches' minutes included, is in `candles`.
            assert await _candle_table(conn, "LIVE", interval) == reference(trades, step, lo, hi)
