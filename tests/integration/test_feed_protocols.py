"""The venue feeds' client code against local venues speaking the documented protocols.

What reaches the intake is what would be stored: each trade exactly once, none missing, with
the venue's id, exact decimals, the aggressor's side and the venue's timestamp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from ingestion.feed import Feed, Intake, Mark
from ingestion.sources import venue
from ingestion.sources.base import VenueTrade
from tests.support import wait_until_async
from tests.support.venues import Print, VenueName, VenueServer, venue_server

VENUES = {"coinbase": ["BTC-USD", "ETH-USD"], "binance": ["BTCUSDT", "ETHUSDT"]}
# A trade message of each venue, well formed but for a price that does not parse.
UNPARSABLE_PRICE = {
    "coinbase": '{"type": "match", "trade_id": 2, "product_id": "BTC-USD", "price": "1,5",'
    ' "size": "1", "side": "buy", "time": "2026-01-02T03:04:05.000006Z"}',
    "binance": '{"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "t": 2,'
    ' "p": "1,5", "q": "1", "T": 1, "m": true}}',
}


@pytest.fixture(params=sorted(VENUES))
def server(request: pytest.FixtureRequest) -> Iterator[VenueServer]:
    with venue_server(request.param, VENUES[request.param]) as local:
        yield local


class Collected:
    """Everything the feed handed over, as the store would see it (keyed by venue id)."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.trades: list[VenueTrade] = []

    def drain(self) -> list[VenueTrade]:
        self.trades.extend(self.intake.take())
        return self.trades

    def ids(self, symbol: str) -> list[int]:
        return [t.trade_id for t in self.drain() if t.symbol == symbol]


@asynccontextmanager
async def running(
    server: VenueServer,
    resume: dict[str, Mark] | None = None,
    *,
    stall: float = 5.0,
    products: list[str] | None = None,
) -> AsyncIterator[tuple[Feed, Collected]]:
    intake = Intake()
    feed = Feed(
        venue(server.venue),
        products or server.products,
        url=server.url,
        rest_url=server.rest_url,
        stall_seconds=stall,
        lateness=timedelta(seconds=0),
        intake=intake,
    )
    feed.relist_seconds = 0.2
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop, resume or {}))
    try:
        yield feed, Collected(intake)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def connected(feed: Feed) -> None:
    await wait_until_async(
        lambda: {s.state for s in feed.symbols.values()},
        lambda states: states == {"connected"},
        what="every symbol connected",
    )


async def subscribed(feed: Feed, server: VenueServer) -> None:
    """Until the venue streams to the feed (what it prints from now on reaches it live)."""
    await connected(feed)
    await wait_until_async(server.subscribed, what="the venue's subscriber")


async def has(collected: Collected, symbol: str, ids: list[int]) -> None:
    await wait_until_async(
        lambda: collected.ids(symbol), lambda got: set(ids) <= set(got), what=f"{symbol} {ids}"
    )


def exactly_once(collected: Collected, symbol: str, tape: list[Print]) -> None:
    got = collected.ids(symbol)
    assert sorted(got) == [t.trade_id for t in tape], "each venue trade exactly once"


async def test_a_clean_session_hands_over_trades_as_the_venue_printed_them(
    server: VenueServer,
) -> None:
    symbol = server.products[0]
    async with running(server) as (feed, collected):
        await subscribed(feed, server)
        first = server.trade(symbol, "64000.12345678", "0.00012345", maker_side="buy")
        await has(collected, symbol, [first.trade_id])
        second = server.trade(symbol, "64000.5", "1.5", maker_side="sell")
        await has(collected, symbol, [second.trade_id])
    stored = {t.trade_id: t for t in collected.drain()}
    for printed in (first, second):
        trade = stored[printed.trade_id]
        assert (trade.price, trade.size) == (printed.price, printed.size)
        assert trade.side == printed.aggressor  # the maker's side, inverted
        assert trade.timestamp == printed.time  # microseconds, exactly
    assert stored[first.trade_id].price == Decimal("64000.12345678")


async def test_a_drop_with_trades_meanwhile_is_recovered_exactly_once(server: VenueServer) -> None:
    symbol = server.products[0]
    server.page_limit = 3  # the recovery takes several REST pages
    async with running(server) as (feed, collected):
        await subscribed(feed, server)
        server.trade(symbol)
        await wait_until_async(lambda: collected.ids(symbol), what="the first trade")
        server.go_offline()
        for _ in range(10):
            server.trade(symbol)  # made while the feed is down
        server.go_offline(False)
        await wait_until_async(lambda: feed.symbols[symbol].reconnects_total, what="a reconnection")
        server.trade(symbol)
        await has(collected, symbol, [t.trade_id for t in server.tape[symbol]])
        await connected(feed)
        assert feed.symbols[symbol].recovered_total >= 10
    exactly_once(collected, symbol, server.tape[symbol])
    assert len(server.rest_requests) >= 4


async def test_a_lost_message_is_noticed_by_the_next_id_and_recovered(
    server: VenueServer,
) -> None:
    symbol = server.products[0]
    async with running(server) as (feed, collected):
        await subscribed(feed, server)
        server.trade(symbol)
        await has(collected, symbol, [1])
        server.trade(symbol, publish=False)
        server.trade(symbol)
        await has(collected, symbol, [1, 2, 3])
        await connected(feed)
    exactly_once(collected, symbol, server.tape[symbol])


async def test_duplicated_and_out_of_order_messages_are_stored_once(server: VenueServer) -> None:
    symbol = server.products[0]
    async with running(server) as (feed, collected):
        await subscribed(feed, server)
        first = server.trade(symbol)
        await has(collected, symbol, [1])
        later = [server.trade(symbol, publish=False) for _ in range(3)]
        for trade in (later[2], later[0], first, later[1], later[2], later[0]):
            server.send(trade)
        await has(collected, symbol, [1, 2, 3, 4])
        await connected(feed)
        assert feed.symbols[symbol].duplicates_total >= 3
    exactly_once(collected, symbol, server.tape[symbol])


async def test_a_venue_429_is_waited_out(server: VenueServer) -> None:
    symbol = server.products[0]
    tape = [server.trade(symbol, publish=False) for _ in range(3)]
    resume = {symbol: Mark(1, None, tape[0].time)}
    server.throttle(1)
    async with running(server, resume) as (feed, collected):
        await has(collected, symbol, [2, 3])
        await connected(feed)
        assert feed.rest.throttled_total == 1
    assert sorted(collected.ids(symbol)) == [2, 3]


async def test_bad_messages_are_counted_and_skipped(server: VenueServer) -> None:
    symbol = server.products[0]
    async with running(server) as (feed, collected):
        await subscribed(feed, server)
        server.trade(symbol)
        await has(collected, symbol, [1])
        for raw in (
            "{not json",
            '{"type": "match", "product_id": "DOGE-EUR"}',
            "[]",
            UNPARSABLE_PRICE[server.venue],
        ):
            server.send_raw(raw)
        server.trade(symbol)
        await has(collected, symbol, [1, 2])
        await wait_until_async(lambda: feed.malformed_total, lambda n: n >= 4, what="counted")
    assert all(t.price == Decimal("100.00000001") for t in collected.drain())


@pytest.mark.timing
@pytest.mark.parametrize("name", sorted(VENUES))
async def test_a_stalled_connection_is_replaced(name: VenueName) -> None:
    """Coinbase: no message (heartbeats included) within the bound; Binance: no message and
    no pong to the feed's pings within it."""
    symbol = VENUES[name][0]
    with venue_server(name, [symbol]) as server:
        async with running(server, stall=0.5) as (feed, collected):
            await subscribed(feed, server)
            server.trade(symbol)
            await has(collected, symbol, [1])
            server.stall()
            stalled = time.monotonic()
            server.trade(symbol)  # printed while nothing reaches us
            await wait_until_async(
                lambda: feed.symbols[symbol].reconnects_total, what="a reconnection"
            )
            # The stall bound, closing without waiting on the stalled venue, the first retry.
            assert time.monotonic() - stalled < 0.5 + 1.0 + 1.0
            assert feed.last_error is not None and "Stalled" in feed.last_error
            server.stall(False)
            await has(collected, symbol, [1, 2])
        exactly_once(collected, symbol, server.tape[symbol])


def complete_through(feed: Feed, symbol: str) -> datetime | None:
    """The symbol's watermark as the writer's next batch commits it."""
    mark = feed.marks().get(symbol)
    return mark.complete_through if mark is not None else None


async def test_a_quiet_binance_market_is_complete_through_its_last_pong() -> None:
    """Binance sends no heartbeats: the feed's pongs move a quiet symbol's watermark, so its
    buckets still close."""
    with venue_server("binance", ["BTCUSDT"]) as server:
        async with running(server, stall=0.5) as (feed, collected):
            await subscribed(feed, server)
            printed = server.trade("BTCUSDT")
            await has(collected, "BTCUSDT", [1])
            await wait_until_async(
                lambda: complete_through(feed, "BTCUSDT"),
                lambda through: through is not None and through > printed.time,
                what="the watermark past the last trade without another one",
            )
            assert feed.symbols["BTCUSDT"].state == "connected"


@pytest.mark.parametrize("name", sorted(VENUES))
async def test_an_unlisted_product_is_a_feed_state_asked_about_again(name: VenueName) -> None:
    """Not a quiet market: the venue says so (a Coinbase subscription error, a Binance
    `Invalid symbol`), the feed reports it and carries on, and picks it up once listed."""
    listed, later = VENUES[name]
    with venue_server(name, [listed]) as server:
        async with running(server, products=[listed, later]) as (feed, collected):
            await wait_until_async(
                lambda: (feed.symbols[listed].state, feed.symbols[later].state),
                lambda states: states == ("connected", "unlisted"),
                what="the unlisted product reported",
            )
            server.trade(listed)
            await has(collected, listed, [1])
            assert complete_through(feed, later) is None
            server.list_product(later)
            await wait_until_async(
                lambda: feed.symbols[later].state, lambda s: s == "connected", what="listed"
            )
            await wait_until_async(lambda: server.streams(later), what="its stream")
            server.trade(later)
            await has(collected, later, [1])


async def test_the_watermark_stands_still_while_the_symbol_recovers() -> None:
    with venue_server("binance", ["BTCUSDT"]) as server:
        server.page_limit = 1
        async with running(server) as (feed, collected):
            await subscribed(feed, server)
            server.trade("BTCUSDT")
            await has(collected, "BTCUSDT", [1])
            await connected(feed)
            symbol = feed.symbols["BTCUSDT"]
            before = complete_through(feed, "BTCUSDT")
            assert before is not None
            server.throttle(1000)  # the venue's history is unavailable for now
            server.trade("BTCUSDT", publish=False)
            server.trade("BTCUSDT")
            await wait_until_async(lambda: symbol.state, lambda s: s == "recovering", what="")
            assert complete_through(feed, "BTCUSDT") == before
            server.throttle(0)
            await connected(feed)
            after = complete_through(feed, "BTCUSDT")
            assert after is not None and after > before
