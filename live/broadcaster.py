"""Live trades in memory: the newest per symbol, fanned out to every stream's bounded queue."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from errors import KeyStreamsAtCapacity, StreamsAtCapacity
from live.shared_reads import SharedReads
from persistence.batches import START, position
from persistence.budget import Budget, Claim
from persistence.trades import TradeRow

__all__ = [
    "CLOSED",
    "Batch",
    "Broadcaster",
    "Closed",
    "Ended",
    "Item",
    "Reset",
    "Subscription",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reset:
    """Live batches were missed beyond replay: the stream resumes after `position`
    (a batch stamp and the last trade id of that batch)."""

    position: tuple[datetime, int]


@dataclass(frozen=True, slots=True)
class Ended:
    """The stream ends: `overflow` (the client fell behind), `revoked` (its API key was) or
    `shutdown` (the instance stops)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """A batch moved the watermark of a symbol of the stream into a later minute without a
    trade of it: candles closed (only candle streams ask to hear it)."""


CLOSED = Closed()


class Batch(tuple[TradeRow, ...]):
    """Live trades of a set of symbols in stream order (one or more batches), one object shared
    by every stream of that set: what a stream makes of it (its bytes on the wire, a slice of
    trades at a time) is made once and kept in `rendered` for the others."""

    rendered: list[bytes] | None = None


# What a subscription's queue carries: one batch's trades for its symbols, candles closed, a
# reset, or the end.
Item = Batch | Closed | Reset | Ended


def _key(trade: TradeRow) -> tuple[datetime, int]:
    """Which of two trades of a symbol is the newer (the latest price)."""
    return trade.timestamp, trade.id


def _batch(symbols: frozenset[str], by_symbol: Mapping[str, list[TradeRow]]) -> Batch:
    matched = symbols & by_symbol.keys()
    if len(matched) == 1:
        return Batch(by_symbol[next(iter(matched))])  # one symbol's trades: already in order
    return Batch(sorted((t for s in matched for t in by_symbol[s]), key=position))


class Subscription:
    """One stream's view of the live feed: its symbols, the API key it was opened with (None
    without access control), whether it hears of candles closed, and a bounded queue of
    batches."""

    def __init__(
        self, symbols: frozenset[str], size: int, claim: Claim, *, closings: bool = False
    ) -> None:
        self.symbols = symbols
        self.closings = closings
        self.claim = claim
        self.owner = claim.owner
        self.ended: Ended | None = None
        # A deque and one waiter rather than an asyncio.Queue under a timeout: a thousand
        # streams wake for every batch, and this is the cheapest way they can.
        self._size = size
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # The heartbeat timer: armed for a wait's deadline, and moved (when it fires) only if
        # a later wait began meanwhile, so a batch costs no timer operation.
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    def offer(self, item: Item) -> bool:
        """Never blocks the publisher: a client too slow to keep up is ended instead (then
        False)."""
        if self.ended is not None:
            return True
        if item is CLOSED and CLOSED in self._items:
            return True  # not read yet: one read will see both
        if len(self._items) >= self._size:
            self.end(Ended("overflow"))
            return False
        self._items.append(item)
        self._wake()
        return True

    def end(self, ended: Ended) -> None:
        if self.ended is not None:
            return
        self.ended = ended
        # Drop what it could not read (freeing the memory now) and leave only the end.
        self._items.clear()
        self._items.append(ended)
        self._wake()

    async def next(self, timeout: float) -> Item | None:
        """The next item, or None after `timeout` seconds without one (time for a heartbeat)."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + timeout
            if self._timer is None or self._timer.when() > self._deadline:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(self._deadline, self._expire, loop)
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if not self._items:
                return None
        return self._items.popleft()

    def close(self) -> None:
        """The stream is gone: its timer goes too."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._waiter is None:
            return  # the stream is busy, not waiting: its next wait arms the timer again
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire, loop)
        else:
            self._wake()


class Broadcaster:
    """What this instance knows of the live feed, shared by every request and stream.

    `listening` is true while the listener is connected and caught up: only then is memory
    current. A price answered from memory never goes backwards: the newest trade per symbol
    only moves forward by (timestamp, id).
    """

    def __init__(self, *, max_streams: int, queue_size: int) -> None:
        self.max_streams = max_streams
        self.queue_size = queue_size
        self.listening = False
        # The last live trade heard: (batch stamp, trade id). None until the first sync.
        self.position: tuple[datetime, int] | None = None
        self._latest: dict[str, TradeRow] = {}
        self._subscriptions: set[Subscription] = set()
        # How many streams follow each symbol: the listener reads back only their trades.
        self._followed: Counter[str] = Counter()
        # Stream slots, per instance and per key.
        self._slots = Budget(
            max_streams,
            full=lambda total: StreamsAtCapacity(
                f"This instance already serves {total} streams; retry later."
            ),
            owner_full=lambda cap: KeyStreamsAtCapacity(
                f"This key already holds {cap} streams at once; retry when one has ended."
            ),
        )
        self._closed = False
        # Streams ended because their client fell behind, since start (for /metrics).
        self.overflows_total = 0
        # What streams read of the database after a batch, read once for all of them.
        self.reads = SharedReads(lambda: self.position)

    def latest(self, symbol: str) -> TradeRow | None:
        """The newest trade of `symbol` if memory is current and holds one, else None."""
        return self._latest.get(symbol) if self.listening else None

    def newest(self, symbol: str, stored: TradeRow | None) -> TradeRow | None:
        """The newer of what the database said and what this instance already answered."""
        known = self._latest.get(symbol)
        if known is None or (stored is not None and _key(stored) >= _key(known)):
            return stored
        return known

    def remember(self, trades: Mapping[str, TradeRow | None]) -> None:
        """Take newest trades read from the database (a resynchronisation)."""
        self._merge(trade for trade in trades.values() if trade is not None)

    def _merge(self, trades: Iterable[TradeRow]) -> None:
        for trade in trades:
            known = self._latest.get(trade.symbol)
            if known is None or _key(trade) > _key(known):
                self._latest[trade.symbol] = trade

    @property
    def followed(self) -> frozenset[str]:
        """The symbols some stream follows."""
        return frozenset(self._followed)

    def publish(self, trades: Sequence[TradeRow]) -> None:
        """Live trades in stream order (those of some symbols of one or more batches):
        remember and fan out. The position only moves forward: trades of a symbol a stream
        began to follow during a catch-up come after those of the others."""
        if not trades:
            return
        self._merge(trades)
        self.position = max(self.position or (START, 0), position(trades[-1]))
        by_symbol: dict[str, list[TradeRow]] = {}
        for trade in trades:
            by_symbol.setdefault(trade.symbol, []).append(trade)
        # One batch per set of symbols asked for, shared by all the streams that asked.
        batches: dict[frozenset[str], Batch] = {}
        for subscription in tuple(self._subscriptions):
            batch = batches.get(subscription.symbols)
            if batch is None:
                batch = batches[subscription.symbols] = _batch(subscription.symbols, by_symbol)
            if batch:
                self._offer(subscription, batch)

    def closed(self, symbols: frozenset[str] | None) -> None:
        """A batch closed candles of `symbols` (None: of any symbol) by moving their
        watermarks: the candle streams of those symbols read again."""
        for subscription in tuple(self._subscriptions):
            if subscription.closings and (symbols is None or subscription.symbols & symbols):
                self._offer(subscription, CLOSED)

    def reset(self, position: tuple[datetime, int]) -> None:
        """Batches were missed beyond replay: every stream says where it resumes."""
        logger.warning("live feed had a gap beyond replay; streams resume at %s", position[0])
        self.position = position
        for subscription in tuple(self._subscriptions):
            self._offer(subscription, Reset(position))

    def _offer(self, subscription: Subscription, item: Item) -> None:
        if not subscription.offer(item):
            # Once per stream: an ended subscription takes nothing more.
            self.overflows_total += 1
            logger.info(
                "stream of key %s fell %d batches behind: ends with `overflow`",
                subscription.owner or "-",
                self.queue_size,
            )

    def subscribe(
        self,
        symbols: Iterable[str],
        owner: str | None = None,
        *,
        per_owner: int | None = None,
        closings: bool = False,
    ) -> Subscription:
        """A stream of `symbols` for `owner` (an API key id), who may hold `per_owner` at
        once (None: no cap of its own); with `closings`, it hears of candles closed too."""
        if self._closed:
            raise StreamsAtCapacity("This instance is shutting down; retry (on another one).")
        claim = self._slots.claim(owner, per_owner)
        subscription = Subscription(frozenset(symbols), self.queue_size, claim, closings=closings)
        self._subscriptions.add(subscription)
        self._followed.update(subscription.symbols)
        return subscription

    def keep_owners(self, active: Collection[str]) -> None:
        """End every stream opened with a key no longer among `active` (revoked, or gone):
        a key's access ends with its open streams, not only with its next request."""
        for subscription in tuple(self._subscriptions):
            if subscription.owner is not None and subscription.owner not in active:
                subscription.end(Ended("revoked"))

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
            for symbol in subscription.symbols:
                self._followed[symbol] -= 1
                if not self._followed[symbol]:
                    del self._followed[symbol]
        subscription.claim.release()
        subscription.close()

    @property
    def stream_count(self) -> int:
        return len(self._subscriptions)

    def close(self) -> None:
        """Shutting down: end every stream now and accept no new ones."""
        self._closed = True
        for subscription in tuple(self._subscriptions):
            subscription.end(Ended("shutdown"))
