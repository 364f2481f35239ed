"""The broadcaster: monotone memory, bounded queues, capacity and shutdown."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from errors import KeyStreamsAtCapacity, StreamsAtCapacity
from live.broadcaster import CLOSED, Broadcaster, Ended, Reset
from persistence.trades import TradeRow

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _trade(trade_id: int, symbol: str = "AAA", seconds: int = 0, price: float = 1.0) -> TradeRow:
    return TradeRow(trade_id, symbol, price, 1.0, T0 + timedelta(seconds=seconds), None, None)


def test_memory_answers_only_while_listening() -> None:
    broadcaster = Broadcaster(max_streams=1, queue_size=1)
    broadcaster.publish([_trade(1)])

    assert broadcaster.latest("AAA") is None
    broadcaster.listening = True
    assert broadcaster.latest("AAA") == _trade(1)


def test_a_price_never_goes_backwards() -> None:
    broadcaster = Broadcaster(max_streams=1, queue_size=1)
    broadcaster.publish([_trade(5, seconds=10, price=2.0)])
    broadcaster.remember({"AAA": _trade(9, seconds=9, price=3.0)})  # newer id, older time
    broadcaster.listening = True

    assert broadcaster.latest("AAA") == _trade(5, seconds=10, price=2.0)
    # A database answer older than what memory holds is not answered either.
    assert broadcaster.newest("AAA", _trade(4, seconds=10)) == _trade(5, seconds=10, price=2.0)
    assert broadcaster.newest("AAA", _trade(6, seconds=10)) == _trade(6, seconds=10)
    assert broadcaster.newest("BBB", None) is None


def test_a_symbol_is_followed_while_a_stream_of_it_is_open() -> None:
    broadcaster = Broadcaster(max_streams=3, queue_size=1)
    first, second = broadcaster.subscribe(["AAA"]), broadcaster.subscribe(["AAA", "BBB"])
    assert broadcaster.followed == {"AAA", "BBB"}

    broadcaster.unsubscribe(second)
    assert broadcaster.followed == {"AAA"}
    broadcaster.unsubscribe(second)  # twice (a stream ends once, however it ends)
    assert broadcaster.followed == {"AAA"}
    broadcaster.unsubscribe(first)
    assert broadcaster.followed == frozenset()


def test_the_position_never_moves_back() -> None:
    """A symbol a stream began to follow mid catch-up is published after the others, older."""
    broadcaster = Broadcaster(max_streams=1, queue_size=1)
    broadcaster.publish([_trade(1, "AAA"), _trade(3, "AAA")])
    broadcaster.publish([_trade(2, "BBB")])

    assert broadcaster.position == (T0, 3)


async def test_each_stream_gets_only_its_symbols_in_order() -> None:
    broadcaster = Broadcaster(max_streams=2, queue_size=4)
    both = broadcaster.subscribe(["AAA", "BBB"])
    one = broadcaster.subscribe(["BBB"])

    broadcaster.publish([_trade(1, "AAA"), _trade(2, "BBB"), _trade(3, "AAA")])

    assert await both.next(0.1) == (_trade(1, "AAA"), _trade(2, "BBB"), _trade(3, "AAA"))
    assert await one.next(0.1) == (_trade(2, "BBB"),)
    assert await one.next(0.01) is None


async def test_streams_of_the_same_symbols_share_one_batch_object() -> None:
    broadcaster = Broadcaster(max_streams=3, queue_size=4)
    first, second = broadcaster.subscribe(["AAA"]), broadcaster.subscribe(["AAA"])
    other = broadcaster.subscribe(["AAA", "BBB"])

    broadcaster.publish([_trade(1, "AAA"), _trade(2, "BBB")])

    shared = await first.next(0.1)
    assert shared is await second.next(0.1)
    assert shared == (_trade(1, "AAA"),)
    assert await other.next(0.1) == (_trade(1, "AAA"), _trade(2, "BBB"))


async def test_candles_closed_reach_the_candle_streams_of_their_symbols_once_unread() -> None:
    broadcaster = Broadcaster(max_streams=4, queue_size=2)
    candles = broadcaster.subscribe(["AAA"], closings=True)
    other = broadcaster.subscribe(["BBB"], closings=True)
    trades = broadcaster.subscribe(["AAA"])

    for _ in range(3):  # more than the queue holds: not read yet, one read serves them all
        broadcaster.closed(frozenset({"AAA"}))
    broadcaster.publish([_trade(1, "AAA")])

    assert [await candles.next(0.01) for _ in "123"] == [CLOSED, (_trade(1, "AAA"),), None]
    assert candles.ended is None
    assert await other.next(0.01) is None
    assert await trades.next(0.01) == (_trade(1, "AAA"),)
    broadcaster.closed(None)  # too many symbols to name: every candle stream reads again
    assert (await candles.next(0.01), await other.next(0.01)) == (CLOSED, CLOSED)
    assert await trades.next(0.01) is None


async def test_an_earlier_waits_heartbeat_timer_does_not_cut_a_later_wait_short() -> None:
    broadcaster = Broadcaster(max_streams=1, queue_size=4)
    stream = broadcaster.subscribe(["AAA"])
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, broadcaster.publish, [_trade(1)])
    assert await stream.next(0.05) == (_trade(1),)

    # The first wait's timer fires during this one, before anything is published.
    loop.call_later(0.1, broadcaster.publish, [_trade(2, seconds=2)])
    assert await stream.next(30) == (_trade(2, seconds=2),)
    assert await stream.next(0.01) is None


async def test_a_slow_stream_overflows_without_holding_back_the_others() -> None:
    broadcaster = Broadcaster(max_streams=2, queue_size=2)
    slow = broadcaster.subscribe(["AAA"])
    fast = broadcaster.subscribe(["AAA"])

    for trade_id in range(1, 4):
        broadcaster.publish([_trade(trade_id, seconds=trade_id)])
        assert await fast.next(0.1) == (_trade(trade_id, seconds=trade_id),)

    assert await slow.next(0.1) == Ended("overflow")
    assert fast.ended is None
    assert broadcaster.overflows_total == 1


async def test_streams_of_a_key_no_longer_active_end() -> None:
    broadcaster = Broadcaster(max_streams=3, queue_size=2)
    kept = broadcaster.subscribe(["AAA"], owner="k1")
    revoked = broadcaster.subscribe(["AAA"], owner="k2")
    open_access = broadcaster.subscribe(["AAA"])

    broadcaster.keep_owners({"k1"})

    assert await revoked.next(0.1) == Ended("revoked")
    assert kept.ended is None and open_access.ended is None


async def test_streams_beyond_the_cap_are_refused_and_shutdown_ends_all() -> None:
    broadcaster = Broadcaster(max_streams=1, queue_size=1)
    first = broadcaster.subscribe(["AAA"])
    with pytest.raises(StreamsAtCapacity):
        broadcaster.subscribe(["AAA"])
    broadcaster.reset((T0, 7))
    assert await first.next(0.1) == Reset((T0, 7))
    assert broadcaster.position == (T0, 7)

    broadcaster.close()

    assert await first.next(0.1) == Ended("shutdown")
    broadcaster.unsubscribe(first)
    with pytest.raises(StreamsAtCapacity):
        broadcaster.subscribe(["AAA"])


async def test_one_key_cannot_take_every_stream_slot() -> None:
    broadcaster = Broadcaster(max_streams=3, queue_size=1)
    greedy = [broadcaster.subscribe(["AAA"], owner="k1", per_owner=2) for _ in range(2)]
    with pytest.raises(KeyStreamsAtCapacity):
        broadcaster.subscribe(["AAA"], owner="k1", per_owner=2)
    # Another key still gets the slot left; past it, the instance's cap.
    broadcaster.subscribe(["AAA"], owner="k2", per_owner=2)
    with pytest.raises(StreamsAtCapacity):
        broadcaster.subscribe(["AAA"], owner="k3", per_owner=2)

    broadcaster.unsubscribe(greedy[0])

    broadcaster.subscribe(["AAA"], owner="k1", per_owner=2)
