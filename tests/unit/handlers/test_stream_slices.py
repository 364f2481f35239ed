"""A live batch leaves a trade stream a slice of events at a time, the event loop free in
between, and streams sharing the batch share its encoding without losing or repeating one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from handlers.streams import _SLICE, _batch_events, _trade_event
from live.broadcaster import Batch
from persistence.trades import TradeRow

STAMP = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _batch(count: int) -> Batch:
    return Batch(
        TradeRow(
            n,
            "BTCUSDT",
            Decimal("100.5"),
            Decimal("0.001"),
            STAMP - timedelta(microseconds=n),
            str(n),
            "buy",
            STAMP,
        )
        for n in range(1, count + 1)
    )


async def _sent(batch: Batch) -> list[tuple[bytes, int]]:
    return [chunk async for chunk in _batch_events(batch)]


async def test_streams_sharing_a_batch_each_send_every_event_once_in_order() -> None:
    batch = _batch(2 * _SLICE + 50)
    first, second, third = await asyncio.gather(_sent(batch), _sent(batch), _sent(batch))
    expected = b"".join(_trade_event(trade) for trade in batch)
    for sent in (first, second, third):
        assert b"".join(chunk for chunk, _ in sent) == expected
        assert [count for _, count in sent] == [_SLICE, _SLICE, 50]
    # Encoded once for all three.
    assert batch.rendered is not None and len(batch.rendered) == 3


async def test_a_batch_lets_other_tasks_run_between_its_slices() -> None:
    batch = _batch(3 * _SLICE)
    ticks: list[int] = []

    async def ticking() -> None:
        while True:
            ticks.append(len(ticks))
            await asyncio.sleep(0)

    ticker = asyncio.create_task(ticking())
    await asyncio.sleep(0)
    seen = []
    async for _chunk in _batch_events(batch):
        seen.append(len(ticks))
    ticker.cancel()
    # The other task ran between every two slices.
    assert seen == sorted(set(seen)) and len(seen) == 3
