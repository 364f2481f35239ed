"""Live streams (tag `streams`): trades and candles as Server-Sent Events."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from errors import DatabaseUnavailable, SymbolsNotFound
from handlers import sse
from handlers.context import api_key_id, app_state, key_cap, request_header
from handlers.params import symbol_codes
from live.broadcaster import Batch, Closed, Ended, Reset, Subscription
from persistence import batches, candles, finality
from persistence.trades import TradeRow
from web.events import EventStream
from web.state import RequestState

__all__ = ["stream_candles", "stream_trades"]

_REPLAY_PAGE = 1000
# A read replica may lag the primary: wait up to 5 s for it before replaying from it.
_CATCH_UP_TRIES = 100
_CATCH_UP_PAUSE = 0.05


# Every stream of a symbol sends the same bytes for a trade: encode each trade once.
@functools.lru_cache(maxsize=4096)
def _trade_event(trade: TradeRow) -> bytes:
    data = {
        "id": trade.id,
        "symbol": trade.symbol,
        "price": trade.price,
        "volume": trade.volume,
        "timestamp": trade.timestamp,
        "venue_trade_id": trade.venue_trade_id,
        "side": trade.side,
    }
    return sse.event("trade", data, sse.encode_id(*batches.position(trade)))


# A live batch's events are encoded and sent this many at a time, the event loop free in
# between: a busy venue's batch holds a thousand trades of a symbol, and encoding them in one
# go held every request of the instance back for over 10 ms (bench/feeds.py).
_SLICE = 100


async def _batch_events(batch: Batch) -> AsyncIterator[tuple[bytes, int]]:
    """A live batch's events, a slice at a time: each slice encoded by the first stream that
    sends it, shared by the rest."""
    if batch.rendered is None:
        batch.rendered = []
    rendered = batch.rendered
    for n, start in enumerate(range(0, len(batch), _SLICE)):
        if n and n == len(rendered):
            await asyncio.sleep(0)
        if n == len(rendered):  # not made by another stream of this batch meanwhile
            rendered.append(b"".join(_trade_event(t) for t in batch[start : start + _SLICE]))
        yield rendered[n], min(_SLICE, len(batch) - start)


def _key(trade: TradeRow) -> tuple[datetime, int]:
    return batches.position(trade)


def _reset_event(position: tuple[datetime, int], reason: str) -> bytes:
    data = {"resumes_after": position[0], "reason": reason}
    return sse.event("reset", data, sse.encode_id(*position))


async def _known(state: RequestState, symbols: Sequence[str]) -> list[str]:
    codes = symbol_codes(symbols)
    if all(state.broadcaster.latest(code) is not None for code in codes):
        # Known from the live feed: a crowd of clients reconnecting at once (say after an
        # instance restart) then costs the database nothing.
        return codes
    async with state.db.connect() as conn:
        stored = await batches.latest_trades(conn, codes)
    unknown = [code for code in codes if code not in stored]
    if unknown:
        raise SymbolsNotFound(unknown)
    return codes


def _subscribe(state: RequestState, codes: list[str], *, closings: bool = False) -> Subscription:
    per_key = key_cap("max_streams", state.settings.stream_max_per_key)
    return state.broadcaster.subscribe(codes, api_key_id(), per_owner=per_key, closings=closings)


def _respond(
    state: RequestState, subscription: Subscription, events: AsyncIterator[tuple[bytes, int]]
) -> EventStream:
    async def body() -> AsyncIterator[tuple[bytes, int]]:
        # A client going away cancels this generator: the subscription (and with it the
        # queue) goes, and a replay under way releases its pooled connection.
        try:
            async for chunk in events:
                yield chunk
        finally:
            state.broadcaster.unsubscribe(subscription)

    return EventStream(body(), sse.HEADERS)


async def _caught_up(conn: asyncpg.Connection, heard: tuple[datetime, int] | None) -> None:
    """Wait until the read database (maybe a replica, behind the primary) holds every batch
    this instance has heard of: what it heard before the stream subscribed is only there."""
    for _ in range(_CATCH_UP_TRIES):
        if heard is None or await batches.newest_position(conn) >= heard:
            return
        await asyncio.sleep(_CATCH_UP_PAUSE)
    raise DatabaseUnavailable("The read database is too far behind to replay from.")


async def _replay(
    state: RequestState,
    codes: list[str],
    after: tuple[datetime, int],
    heard: tuple[datetime, int] | None,
    bounds: sse.Bounds,
) -> AsyncIterator[TradeRow | tuple[tuple[datetime, int], str]]:
    """The live trades after `after` from the database, or (the position to reset to, why)
    when `after` cannot be replayed. A pooled connection is held per page only, never while
    a slow client reads."""
    reason = sse.unreplayable(after[0], state.settings.stream_replay_seconds)
    async with state.db.connect() as conn:
        await _caught_up(conn, heard)
        oldest = await batches.oldest_live_batch(conn)
        if reason is None and (oldest is None or after[0] < oldest):
            reason = "too_old"
        if reason is not None:
            yield await batches.newest_position(conn), reason
            return
    while not bounds.done:
        async with state.db.connect() as conn:
            page = await batches.trades_after(conn, after, symbols=codes, limit=_REPLAY_PAGE)
        for trade in page:
            yield trade
        if len(page) < _REPLAY_PAGE:
            return
        after = batches.position(page[-1])


def _unsent(
    batch: Batch, position: tuple[datetime, int] | None, bounds: sse.Bounds
) -> tuple[tuple[bytes, int], tuple[datetime, int] | None]:
    """The events of a batch's trades after `position` that fit within `bounds`, as one write
    (each write goes through every middleware) with their number, and the position after them."""
    chunk = []
    for trade in batch:
        if position is None or _key(trade) > position:
            position = _key(trade)
            bounds.count()
            chunk.append(_trade_event(trade))
            if bounds.done:
                break
    return (b"".join(chunk), len(chunk)), position


async def _trade_events(
    state: RequestState,
    subscription: Subscription,
    bounds: sse.Bounds,
    codes: list[str],
    after: tuple[datetime, int] | None,
    heard: tuple[datetime, int] | None,
) -> AsyncIterator[tuple[bytes, int]]:
    """The trades after `after` replayed from the database, then the live ones."""
    yield sse.OPENED, 0
    position = after
    if position is not None:
        async for replayed in _replay(state, codes, position, heard, bounds):
            if isinstance(replayed, TradeRow):
                position = _key(replayed)
                bounds.count()
                yield _trade_event(replayed), 1
                if bounds.done:
                    return
            else:
                position, reason = replayed
                yield _reset_event(position, reason), 1
    while not bounds.done:
        item = await subscription.next(bounds.wait())
        if item is None:
            if not bounds.done:
                yield sse.HEARTBEAT, 0
        elif isinstance(item, Reset):
            position = item.position
            yield _reset_event(item.position, "gap"), 1
        elif isinstance(item, Ended):
            if item.reason == "overflow":
                yield sse.OVERFLOW, 1
            return
        elif isinstance(item, Closed):
            continue  # never offered: a trade stream subscribes without closings
        elif (position is None or _key(item[0]) > position) and bounds.allows(len(item)):
            # The usual case: the whole batch, its bytes made once for every stream.
            position = _key(item[-1])
            bounds.count(len(item))
            async for chunk in _batch_events(item):
                yield chunk
        else:
            chunk, position = _unsent(item, position, bounds)
            if chunk[1]:
                yield chunk


async def stream_trades(
    symbols: list[str], limit: int | None = None, duration: float | None = None
) -> Any:
    state = app_state()
    after = sse.decode_id(request_header("Last-Event-ID"))
    codes = await _known(state, symbols)
    # Subscribe before replaying: what commits meanwhile is queued, and duplicates are
    # skipped by position, so the seam between replay and live has no gap.
    subscription = _subscribe(state, codes)
    heard = state.broadcaster.position
    bounds = sse.Bounds(limit, duration, state.settings.stream_heartbeat_seconds)
    events = _trade_events(state, subscription, bounds, codes, after, heard)
    return _respond(state, subscription, events)


def _candle_event(row: candles.CandleRow, *, revised: bool = False) -> bytes:
    """A candle's event; a revised one carries no id: the stream's position stays where the
    stream is (a resumed stream does not go back for it)."""
    t, o, h, lo, c, v, w, n, closed, revision = row
    data = {
        "timestamp": t,
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
        "vwap": w,
        "trade_count": n,
        "closed": closed,
        "revision": revision,
    }
    return sse.event("candle", data, None if revised else sse.encode_id(t, int(closed)))


# A page of candles and the bucket before which none of them changes again.
_CandlePage = tuple[tuple[candles.CandleRow, ...], datetime]
# Reads the candles from a bucket on, once the database holds the batch heard and what time
# alone changed since a moment (the loop's clock).
_CandleReads = Callable[[datetime, tuple[datetime, int] | None, float], Awaitable[_CandlePage]]


def _candle_reads(state: RequestState, code: str, interval: str, step: timedelta) -> _CandleReads:
    async def fetch(lo: datetime) -> _CandlePage:
        state.prometheus.candle_stream_reads.labels(interval).inc()
        hi = finality.bucket_floor(datetime.now(UTC), step) + step
        async with state.db.connect() as conn:
            page = await candles.read_candle_page(
                conn,
                symbol=code,
                interval=interval,
                step=step,
                lo=lo,
                hi=hi,
                limit=max(1, (hi - lo) // step),
            )
        return tuple(page.candles), page.final

    def read(
        lo: datetime, heard: tuple[datetime, int] | None, since: float
    ) -> Awaitable[_CandlePage]:
        # Every stream of this symbol and interval wakes for the same batch: one of them
        # reads, the others share its answer.
        key = (code, interval, lo)
        return state.broadcaster.reads.read(key, lambda: fetch(lo), heard=heard, since=since)

    return read


def _candles_from(
    after: tuple[datetime, int] | None, opened: datetime, step: timedelta, replay_seconds: float
) -> tuple[datetime, bytes | None]:
    """The first bucket a candle stream sends, and the reset event to send before it when
    `after` (a Last-Event-ID) cannot be resumed from.

    From the first bucket the database does not hold final (`opened`: earlier than the
    clock's while a venue symbol's feed is behind) on; after a Last-Event-ID, from the bucket
    it named (or the next one, when that one was already sent final), whatever the clocks.
    """
    if after is None:
        return opened, None
    bucket, closed = after
    reason = sse.unreplayable(bucket, replay_seconds)
    if reason is None and finality.bucket_floor(bucket, step) != bucket:
        reason = "not_issued"
    if reason is not None:
        # Its id says "the bucket before `opened` was sent final" (it is final): a reconnect
        # starts at `opened`.
        data = {"resumes_after": opened, "reason": reason}
        return opened, sse.event("reset", data, sse.encode_id(opened - step, 1))
    return (bucket + step if closed else bucket), None


def _is_news(shown: dict[datetime, candles.CandleRow], row: candles.CandleRow) -> bool:
    """Whether a stream that sent `shown` (its candles sent while open, by bucket, until they
    are sent final) sends `row`; keeps `shown` up to date."""
    if row.closed:
        shown.pop(row.timestamp, None)
        return True
    if shown.get(row.timestamp) == row:
        return False
    shown[row.timestamp] = row
    return True


def _revised(sent: dict[datetime, candles.CandleRow], row: candles.CandleRow) -> bool:
    """Whether `row`, a final candle read again after a late print, differs from the one this
    stream sent final (`sent`, by bucket); keeps `sent` up to date."""
    if sent.get(row.timestamp, row) == row:
        return False  # unchanged, or sent before this stream started
    sent[row.timestamp] = row
    return True


async def _candle_events(
    state: RequestState,
    subscription: Subscription,
    bounds: sse.Bounds,
    read: _CandleReads,
    code: str,
    after: tuple[datetime, int] | None,
    step: timedelta,
) -> AsyncIterator[tuple[bytes, int]]:
    """The candles from the open bucket (or where `after` says) on, each again whenever a
    batch or time changes it, and a final one again when a late print revises it."""
    yield sse.OPENED, 0
    async with state.db.connect() as conn:
        opened = await finality.open_bucket(conn, code, step)
    lo, reset = _candles_from(after, opened, step, state.settings.stream_replay_seconds)
    if reset is not None:
        yield reset, 1
    shown: dict[datetime, candles.CandleRow] = {}
    # Candles sent final that a late print may still revise: those that ended within the
    # settlement horizon (older ones never change again).
    settlement = timedelta(seconds=state.settings.feed_settlement_seconds)
    sent_final: dict[datetime, candles.CandleRow] = {}
    revise_from: datetime | None = None
    stale = True
    # What the next read must include: the newest batch heard, and time since `since`.
    loop = asyncio.get_running_loop()
    heard = state.broadcaster.position
    since = loop.time()
    while not bounds.done:
        if stale:
            rows, final = await read(min(lo, revise_from or lo), heard, since)
            for row in rows:
                revised = row.timestamp < lo
                if not (_revised(sent_final, row) if revised else _is_news(shown, row)):
                    continue
                if row.closed:
                    sent_final[row.timestamp] = row
                bounds.count()
                yield _candle_event(row, revised=revised), 1
                if bounds.done:
                    return
            # Buckets before `final` change again only for a late print: the next read starts
            # after them unless a batch brings one.
            lo, revise_from = max(lo, final), None
            settled = finality.bucket_floor(datetime.now(UTC) - settlement, step)
            for bucket in [bucket for bucket in sent_final if bucket < settled]:
                del sent_final[bucket]
        item = await subscription.next(bounds.wait())
        if isinstance(item, Ended):
            if item.reason == "overflow":
                yield sse.OVERFLOW, 1
            return
        # A batch of this symbol (or a reset) changes the open candle; time makes it final
        # (the database that answers says when: this only decides when to ask again).
        horizon = datetime.now(UTC) - finality.VISIBILITY_DEADLINE
        aged = bool(shown) and min(shown) < finality.bucket_floor(horizon, step)
        if isinstance(item, Reset):
            heard = item.position
        elif isinstance(item, Closed):
            since = loop.time()  # a watermark closed candles: read from now on
        elif item is not None:
            heard = _key(item[-1])
            # A late print: stamped in a bucket this stream already sent final.
            oldest = finality.bucket_floor(min(trade.timestamp for trade in item), step)
            if sent_final and oldest < lo:
                revise_from = max(oldest, min(sent_final))
        if aged:
            since = loop.time()  # what time alone changed needs a read from now on
        stale = item is not None or aged
        if not stale and not bounds.done:
            yield sse.HEARTBEAT, 0


async def stream_candles(
    symbol: str, interval: str = "1m", limit: int | None = None, duration: float | None = None
) -> Any:
    state = app_state()
    after = sse.decode_id(request_header("Last-Event-ID"))
    (code,) = await _known(state, [symbol])
    step = finality.INTERVALS[interval]
    subscription = _subscribe(state, [code], closings=True)
    bounds = sse.Bounds(limit, duration, state.settings.stream_heartbeat_seconds)
    read = _candle_reads(state, code, interval, step)
    return _respond(
        state, subscription, _candle_events(state, subscription, bounds, read, code, after, step)
    )
