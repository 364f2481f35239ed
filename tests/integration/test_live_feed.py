"""The live feed against real PostgreSQL: NOTIFY on commit, listening, catching up, replay."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from live.broadcaster import CLOSED, Batch, Broadcaster, Item, Reset, Subscription
from live.listener import Listener
from persistence import batches
from persistence.feeds import StoredMark, insert_venue_batch
from persistence.imports import import_trades
from persistence.partitions import ensure_partitions
from persistence.symbols import ensure_symbols
from persistence.trades import LIVE_CHANNEL, NewTrade, TradeRow, VenueTrade, insert_live_batch
from tests.support import dsn, import_table, seed_trades, store_venue_batch, wait_until_async

SYMBOLS = ("AAA", "BBB")


@pytest.fixture
async def feed_engine(fresh_engine: AsyncEngine) -> AsyncEngine:
    async with fresh_engine.begin() as conn:
        await ensure_symbols(conn, [(code, code) for code in SYMBOLS])
    return fresh_engine


async def _write_batch(engine: AsyncEngine, stamped: datetime, price: str = "10.5") -> int:
    batch = [NewTrade(code, Decimal(price), 3, stamped) for code in SYMBOLS]
    async with engine.begin() as conn:
        return await insert_live_batch(conn, batch, stamped=stamped, leader_pid=None, lock_key=0)


def _stamps(count: int) -> list[datetime]:
    now = datetime.now(UTC)
    return [now + timedelta(milliseconds=i) for i in range(count)]


@contextlib.asynccontextmanager
async def _listening(url: URL, broadcaster: Broadcaster) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    listener = Listener(
        {"dsn": dsn(url), "server_settings": {"application_name": "mdp-listener-test"}},
        broadcaster,
        timeout=5,
        check_every=5,
        retry_first=0.05,
    )
    task = asyncio.create_task(listener.run(stop))
    try:
        await wait_until_async(lambda: broadcaster.listening, what="the listener to sync")
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def _notices(url: URL) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload NOTIFY sends on the live channel, heard by a plain connection."""
    conn = await asyncpg.connect(dsn(url))
    heard: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener(LIVE_CHANNEL, lambda *args: heard.put_nowait(args[-1]))
    try:
        yield heard
    finally:
        await conn.close()


async def _heard(broadcaster: Broadcaster, stamped: datetime, what: str) -> None:
    """Wait until the listener has published up to the batch stamped `stamped`."""
    await wait_until_async(
        lambda: broadcaster.position is not None and broadcaster.position[0] == stamped,
        what=what,
    )


async def _write_batches(engine: AsyncEngine, count: int) -> list[datetime]:
    """`count` batches of every symbol, priced 10, 11, …; their stamps."""
    stamps = _stamps(count)
    for i, stamped in enumerate(stamps):
        await _write_batch(engine, stamped, price=f"{10 + i}")
    return stamps


async def _drain(subscription: Subscription) -> list[TradeRow | Reset]:
    items: list[TradeRow | Reset] = []
    while (item := await subscription.next(0.01)) is not None:
        if isinstance(item, tuple):
            items.extend(item)
        elif isinstance(item, Reset):
            items.append(item)
    return items


async def test_a_committed_batch_is_announced_with_its_stamp_and_ids(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    async with _notices(empty_database) as heard:
        stamped, later = _stamps(2)
        assert await _write_batch(feed_engine, stamped) == 2
        # Refused (not newer than the last batch): announces nothing, takes no ids.
        assert await _write_batch(feed_engine, stamped - timedelta(seconds=1)) == 0
        assert await _write_batch(feed_engine, later) == 2
        notices = [batches.parse_notice(await asyncio.wait_for(heard.get(), 5)) for _ in "12"]
        assert notices == [batches.BatchNotice(stamped, 1, 2), batches.BatchNotice(later, 3, 4)]


async def test_a_rolled_back_batch_is_never_announced(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    async with _notices(empty_database) as heard:
        first, second = _stamps(2)
        async with feed_engine.connect() as write:
            transaction = await write.begin()
            batch = [NewTrade("AAA", Decimal("1"), 1, first)]
            await insert_live_batch(write, batch, stamped=first, leader_pid=None, lock_key=0)
            await transaction.rollback()
        await _write_batch(feed_engine, second)
        notice = batches.parse_notice(await asyncio.wait_for(heard.get(), 5))
        assert notice is not None and notice.stamped == second


async def test_a_live_batch_must_carry_one_timestamp(feed_engine: AsyncEngine) -> None:
    stamped = datetime.now(UTC)
    batch = [NewTrade("AAA", Decimal("1"), 1, stamped - timedelta(seconds=1))]
    async with feed_engine.begin() as conn:
        with pytest.raises(ValueError, match="stamp"):
            await insert_live_batch(conn, batch, stamped=stamped, leader_pid=None, lock_key=0)


async def test_listener_publishes_every_batch_once_in_order(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    broadcaster = Broadcaster(max_streams=10, queue_size=100)
    async with _listening(empty_database, broadcaster):
        subscription = broadcaster.subscribe(SYMBOLS)
        stamps = await _write_batches(feed_engine, 5)
        await _heard(broadcaster, stamps[-1], "the last batch")
        received = await _drain(subscription)
    trades = [t for t in received if isinstance(t, TradeRow)]
    assert [(t.timestamp, t.symbol) for t in trades] == [(s, c) for s in stamps for c in SYMBOLS]
    assert [t.id for t in trades] == sorted(t.id for t in trades)
    assert broadcaster.latest("AAA") is None  # not listening any more: memory is not current
    newest = broadcaster.newest("AAA", None)
    assert newest is not None and newest.price == 14 and newest.timestamp == stamps[-1]


class _Recording(Broadcaster):
    """A broadcaster that keeps what the listener published, and lets a test act on it."""

    def __init__(self) -> None:
        super().__init__(max_streams=10, queue_size=100)
        self.published: list[TradeRow] = []
        self.on_publish: list[Callable[[], object]] = []

    def publish(self, trades: Sequence[TradeRow]) -> None:
        super().publish(trades)
        self.published.extend(trades)
        if trades and self.on_publish:
            self.on_publish.pop(0)()


async def test_listener_reads_back_the_followed_symbols_and_each_ones_newest(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    """An instance serves each symbol's newest trade and its streams' symbols: it reads back
    no more than that, however many trades a batch holds."""
    broadcaster = _Recording()
    async with _listening(empty_database, broadcaster):
        subscription = broadcaster.subscribe(["AAA"])
        stamps = await _write_batches(feed_engine, 3)
        await _heard(broadcaster, stamps[-1], "the last batch")
        newest = broadcaster.latest("BBB")
        received = await _drain(subscription)
    assert {t.symbol for t in broadcaster.published} == {"AAA"}
    assert [t.timestamp for t in received if isinstance(t, TradeRow)] == stamps
    assert newest is not None and (newest.price, newest.timestamp) == (12, stamps[-1])


async def test_a_symbol_first_followed_mid_catch_up_is_read_from_the_catch_ups_start(
    feed_engine: AsyncEngine, empty_database: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream of a symbol no stream followed opens while a catch-up reads its pages: the
    symbol's trades the catch-up had passed are read too, and come first."""
    monkeypatch.setattr("live.listener._PAGE", 2)
    stamps = _stamps(3)
    for stamped in stamps:
        await _write_batch(feed_engine, stamped)
    broadcaster = _Recording()
    broadcaster.position = (batches.START, 0)  # heard nothing yet: one catch-up of all three
    aaa = broadcaster.subscribe(["AAA"])
    joined: list[Subscription] = []
    broadcaster.on_publish.append(lambda: joined.append(broadcaster.subscribe(["BBB"])))
    async with _listening(empty_database, broadcaster):
        await _heard(broadcaster, stamps[-1], "the catch-up")
        received = {"AAA": await _drain(aaa), "BBB": await _drain(joined[0])}
    for symbol, items in received.items():
        trades = [t for t in items if isinstance(t, TradeRow)]
        assert [(t.symbol, t.timestamp) for t in trades] == [(symbol, s) for s in stamps]


async def test_listener_catches_up_after_losing_its_connection(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    broadcaster = Broadcaster(max_streams=10, queue_size=100)
    async with _listening(empty_database, broadcaster):
        subscription = broadcaster.subscribe(["AAA"])
        stamps = _stamps(6)
        await _write_batch(feed_engine, stamps[0])
        async with feed_engine.connect() as conn:
            terminated = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'mdp-listener-test'"
                )
            )
            assert terminated.scalars().all() == [True]
        # Written while the listener is away: heard of by nobody, caught up on reconnect.
        for stamped in stamps[1:]:
            await _write_batch(feed_engine, stamped)
        await _heard(broadcaster, stamps[-1], "the catch-up")
        received = await _drain(subscription)
    assert [t.timestamp for t in received if isinstance(t, TradeRow)] == stamps


async def test_listener_resets_streams_after_a_gap_longer_than_replay(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    first, second, third = _stamps(3)
    for stamped in (first, second, third):
        await _write_batch(feed_engine, stamped)
    async with feed_engine.begin() as conn:
        # What the leader's pruning does to batches older than the retention.
        await conn.execute(text("DELETE FROM live_batches WHERE stamped <= :s"), {"s": second})
    broadcaster = Broadcaster(max_streams=10, queue_size=100)
    broadcaster.position = (first, 2)  # heard the first batch, then lost the feed for long
    subscription = broadcaster.subscribe(["AAA"])
    async with _listening(empty_database, broadcaster):
        received = await _drain(subscription)
    assert received == [Reset((third, 6))]
    assert broadcaster.position == (third, 6)
    assert broadcaster.newest("AAA", None) is not None


async def test_backfilled_trades_are_never_replayed_as_live(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    first, second = _stamps(2)
    await _write_batch(feed_engine, first)
    async with feed_engine.begin() as conn:
        # Backfill: new ids, old timestamps, no live batch.
        await seed_trades(
            conn, [NewTrade("AAA", Decimal("9"), 1, first - timedelta(hours=1)) for _ in range(3)]
        )
    await _write_batch(feed_engine, second)
    conn = await asyncpg.connect(dsn(empty_database))
    try:
        replayed = await batches.trades_after(conn, (batches.START, 0), limit=100)
        after_first = await batches.trades_after(conn, (first, 1), symbols=["BBB"], limit=100)
    finally:
        await conn.close()
    assert [(t.timestamp, t.symbol) for t in replayed] == [
        (s, c) for s in (first, second) for c in SYMBOLS
    ]
    assert [(t.timestamp, t.symbol) for t in after_first] == [(first, "BBB"), (second, "BBB")]


async def _venue_batch(
    engine: AsyncEngine, trades: list[VenueTrade], through: datetime, stamped: datetime
) -> None:
    last_id = max(int(trade.venue_trade_id or 0) for trade in trades)
    async with engine.begin() as conn:
        await store_venue_batch(
            conn,
            trades,
            {"AAA": StoredMark(last_id, through, through - timedelta(hours=1))},
            stamped=stamped,
        )


async def test_imported_trades_are_never_streamed_as_live(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    """History takes ids from the same sequence while a venue batch is written, so an import
    can commit ids inside a batch's id range (here the batch is held mid-statement, on a trade
    another transaction holds, while the import draws its ids): its trades reach neither live
    streams nor a replay."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    (stamped,) = _stamps(1)
    async with feed_engine.begin() as conn:
        await ensure_partitions(conn, base, base + timedelta(hours=1))
    broadcaster = Broadcaster(max_streams=10, queue_size=100)
    # The test engine's pool has two connections: the import's and the batch's.
    holding = await asyncpg.connect(dsn(empty_database))
    async with _listening(empty_database, broadcaster), feed_engine.connect() as importing:
        subscription = broadcaster.subscribe(SYMBOLS)
        shared = base + timedelta(minutes=2)
        held = holding.transaction()
        await held.start()
        await holding.execute(
            "INSERT INTO trades (symbol, price, volume, timestamp, venue_trade_id) "
            "VALUES ('AAA', 7.5, 2, $1, '2')",
            shared,
        )
        # The batch draws ids as it goes: COPY stores its rows 1,000 at a time (the first
        # thousand's ids drawn before), and waits at the one held, in the first thousand.
        batch = [
            VenueTrade("AAA", Decimal("7.5"), Decimal(2), shared, "2", "sell"),
            *(
                VenueTrade("AAA", Decimal("11"), Decimal(1), moment, str(3 + i), "buy")
                for i, moment in enumerate(
                    base + timedelta(minutes=11, milliseconds=10 * i) for i in range(1_100)
                )
            ),
        ]
        writing = asyncio.create_task(
            _venue_batch(feed_engine, batch, base + timedelta(minutes=12), stamped)
        )
        await wait_until_async(lambda: _waiting_on_a_transaction(holding), what="the batch to wait")
        transaction = await importing.begin()
        history = [(str(i), base + timedelta(minutes=3, seconds=i)) for i in range(3)]
        await import_trades(importing, "BBB", import_table("BBB", history), repair=False)
        await transaction.commit()
        await held.rollback()
        await holding.close()
        await asyncio.wait_for(writing, 10)
        await _heard(broadcaster, stamped, "the batch heard")
        received = await _drain(subscription)
    conn = await asyncpg.connect(dsn(empty_database))
    try:
        replayed = await batches.trades_after(conn, (batches.START, 0), limit=10_000)
        (first, last) = await conn.fetchrow("SELECT first_id, last_id FROM live_batches")
        inside = await conn.fetchval(
            "SELECT count(*) FROM trades WHERE symbol = 'BBB' AND id BETWEEN $1 AND $2",
            first,
            last,
        )
    finally:
        await conn.close()
    assert inside == 3  # the import's ids are inside the batch's range
    live = [(t.symbol, t.venue_trade_id) for t in batch]
    assert [(t.symbol, t.venue_trade_id) for t in received if isinstance(t, TradeRow)] == live
    assert [(t.symbol, t.venue_trade_id) for t in replayed] == live


async def test_a_batch_names_the_symbols_whose_candles_its_watermarks_closed_once(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    """A watermark moved into a later minute closes candles, with or without a trade of the
    symbol: the batch's one notice names it, and only candle streams of it hear so. Moving
    within the minute closes nothing and costs no notice."""
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    since = base - timedelta(hours=1)
    stamps = _stamps(3)
    async with feed_engine.begin() as conn:
        await ensure_partitions(conn, base, base + timedelta(hours=1))

    async def write(stamped: datetime, trades: list[VenueTrade], **through: datetime) -> None:
        async with feed_engine.begin() as conn:
            batch = await insert_venue_batch(
                conn,
                trades,
                {s: StoredMark(1, moment, since) for s, moment in through.items()},
                feed="coinbase",
                stamped=stamped,
                leader_pid=None,
                lock_key=0,
            )
            assert batch is not None

    broadcaster = Broadcaster(max_streams=10, queue_size=100)
    async with _listening(empty_database, broadcaster), _notices(empty_database) as heard:
        aaa = broadcaster.subscribe(["AAA"], closings=True)
        bbb = broadcaster.subscribe(["BBB"], closings=True)
        trades = broadcaster.subscribe(SYMBOLS)
        at = base + timedelta(seconds=30)
        await write(
            stamps[0], [VenueTrade("AAA", Decimal(7), Decimal(1), base, "1", "buy")], AAA=at, BBB=at
        )
        await _heard(broadcaster, stamps[0], "the batch heard")
        first = [await _items(s) for s in (aaa, bbb, trades)]
        await write(stamps[1], [], AAA=at + timedelta(seconds=20), BBB=at)
        await write(stamps[2], [], AAA=at + timedelta(seconds=40), BBB=at)
        closed = await aaa.next(5)
        later = [await _items(s) for s in (aaa, bbb, trades)]
        notices = [batches.parse_notice(await asyncio.wait_for(heard.get(), 5)) for _ in "12"]
    (live,) = [item for item in first[0] if isinstance(item, Batch)]
    # Closings are offered when the notice is heard, its trades once read back.
    assert sorted(first[0], key=lambda item: item is CLOSED) == [live, CLOSED]
    assert first[1:] == [[CLOSED], [live]]
    assert [t.venue_trade_id for t in live] == ["1"]
    assert (closed, later) == (CLOSED, [[], [], []])
    # One notice a batch that closed candles; none for the batch that closed none.
    assert notices == [
        batches.BatchNotice(stamps[0], live[0].id, live[0].id, frozenset(SYMBOLS)),
        batches.BatchNotice(stamps[2], None, None, frozenset({"AAA"})),
    ]


async def _items(subscription: Subscription) -> list[Item]:
    """What the subscription's queue holds now, in order."""
    items = []
    while (item := await subscription.next(0)) is not None:
        items.append(item)
    return items


def test_a_notice_names_symbols_within_notifys_limit() -> None:
    stamped = datetime.now(UTC)
    many = [f"SYMBOL{n:05d}" for n in range(1_000)]
    payload = batches.notice(stamped, (1, 2), many)

    assert len(payload.encode()) < 8_000
    assert batches.parse_notice(payload) == batches.BatchNotice(stamped, 1, 2, None)
    named = batches.notice(stamped, None, many[:3])
    assert batches.parse_notice(named) == batches.BatchNotice(
        stamped, None, None, frozenset(many[:3])
    )


async def _waiting_on_a_transaction(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND locktype = 'transactionid')"
    )
    return bool(waiting)


async def test_a_batch_an_earlier_revision_wrote_is_replayed_by_its_stamp(
    feed_engine: AsyncEngine, empty_database: URL
) -> None:
    """During a deploy the previous revision may still lead: its batches mark nothing, and
    their trades are found as it found them."""
    first, second = _stamps(2)
    await _write_batch(feed_engine, first)
    await _write_batch(feed_engine, second)
    async with feed_engine.begin() as conn:
        # What that revision writes: neither the rows nor the batch marked.
        await conn.execute(text("UPDATE trades SET live = NULL WHERE timestamp = :s"), {"s": first})
        await conn.execute(
            text("UPDATE live_batches SET rows_marked = false WHERE stamped = :s"), {"s": first}
        )
    conn = await asyncpg.connect(dsn(empty_database))
    try:
        replayed = await batches.trades_after(conn, (batches.START, 0), limit=100)
    finally:
        await conn.close()
    assert [(t.timestamp, t.symbol) for t in replayed] == [
        (s, c) for s in (first, second) for c in SYMBOLS
    ]
