"""A venue feed: one WebSocket connection for every symbol, recovered from REST history.

Nothing lost: each symbol tracks `contiguous`, the trade id up to which every trade has been
handed over for storage. A trade id that skips, a heartbeat naming a newer trade than we have,
or a (re)connection with a stored resume point starts a recovery that pages the venue's REST
history from `contiguous` up to its newest trade; live trades keep flowing meanwhile. Nothing
twice: ids at or below `contiguous` (re-delivered, overlapping with a recovery) are dropped
here, and the database's unique key makes a second copy impossible anyway.

Finality: a symbol is *complete through* the venue's clock (the newest venue timestamp seen on
the connection) less the lateness allowance, and that mark only advances while the symbol is
connected and caught up. While it is down or recovering the mark stands still.

Heartbeats: a venue that sends them (Coinbase) must send a message within the stall bound. For
one that does not (Binance) the feed pings a few times per bound: no pong within it is a stall,
and each pong is the heartbeat. The venue answered it after sending everything it had, so its
clock has at least reached the time the ping left (in the venue's clock: our clock plus the
offset the last trade showed, which its transit time makes an underestimate): a quiet market's
watermark moves on, a dead connection's does not.

Connection trouble (refused, dropped, closed, no message or heartbeat within the stall bound)
is retried with backoff forever; a bad message is logged truncated, counted and skipped. A
product the venue says it does not list (Coinbase: left out of the subscription
acknowledgement; Binance: `Invalid symbol` from REST) is `unlisted`, not a quiet market, and
is asked about again every `relist_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

from ingestion.sources.base import (
    Heartbeat,
    Malformed,
    Rest,
    RestError,
    Subscribed,
    Unlisted,
    Venue,
    VenueTrade,
    truncate,
)

__all__ = ["Feed", "FeedState", "Intake", "Mark", "SymbolFeed"]

logger = logging.getLogger(__name__)

FeedState = Literal["connecting", "connected", "recovering", "down", "unlisted"]

# Reconnecting: quick first retry, then doubling up to a steady pace (with jitter, so many
# instances of many services do not knock on the venue in step).
_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 30.0
# How long a closing connection waits for the venue's answer. A venue answers at once; a
# stalled connection never does, and websockets' default (10 s) held back the reconnection
# (and the recovery of the gap) that long after the stall was found.
_CLOSE_SECONDS = 1.0
# Pings per stall bound, for venues without heartbeats: one lost pong is not a stall yet.
_PINGS_PER_STALL = 3
# How often a product the venue does not list is asked about again.
_RELIST_SECONDS = 60.0


class Stalled(RuntimeError):
    """No message and no heartbeat within the stall bound."""


class Relisted(RuntimeError):
    """A product the venue did not list is listed now: its stream starts on a new connection."""


@dataclass(frozen=True, slots=True)
class Mark:
    """What a committed batch makes true of a symbol: every trade id up to `last_trade_id`
    is stored, and every trade stamped up to `complete_through` (None: not known yet).
    `since` is when the current unbroken stretch of ingestion began."""

    last_trade_id: int
    complete_through: datetime | None
    since: datetime


@dataclass(slots=True)
class SymbolFeed:
    symbol: str
    state: FeedState = "down"
    contiguous: int | None = None
    contiguous_time: datetime | None = None
    # Handed-over trades above `contiguous` (arrived early, or beyond a gap): id -> timestamp.
    ahead: dict[int, datetime] = field(default_factory=dict)
    # The newest trade id the venue said exists (heartbeats), when above what we have.
    want_through: int | None = None
    complete_through: datetime | None = None
    # Start of the current unbroken stretch: reset when history cannot bridge a break.
    since: datetime | None = None
    recovering: asyncio.Task[None] | None = None
    reconnects_total: int = 0
    recovered_total: int = 0
    # Late prints stored (counted by the writer once committed), and re-delivered trades
    # skipped (here, and by the writer where the database's unique key refused them).
    late_total: int = 0
    duplicates_total: int = 0
    # Trades the writer put back for a later batch, each time, because history being
    # written (an import) held the symbol's candles.
    deferred_total: int = 0
    # Prints skipped because retention had dropped their month's trades (candles kept).
    expired_total: int = 0
    resets_total: int = 0
    # Monotonic time the symbol was last connected and caught up (or the feed was made).
    behind_since: float = field(default_factory=time.monotonic)

    def become(self, state: FeedState) -> None:
        if self.state == "connected" and state != "connected":
            self.behind_since = time.monotonic()
        self.state = state

    def behind_for(self) -> float:
        """Seconds this symbol has not been connected and caught up (0 while it is)."""
        return 0.0 if self.state == "connected" else time.monotonic() - self.behind_since

    @property
    def caught_up(self) -> bool:
        return (
            self.contiguous is not None
            and not self.ahead
            and (self.want_through is None or self.want_through <= self.contiguous)
        )

    def mark(self) -> Mark | None:
        if self.contiguous is None or self.since is None:
            return None
        return Mark(self.contiguous, self.complete_through, self.since)


class Intake:
    """Trades handed over by the feed, waiting for the writer's next transaction."""

    def __init__(self) -> None:
        self._trades: list[VenueTrade] = []

    def put(self, trade: VenueTrade) -> None:
        self._trades.append(trade)

    def take(self) -> list[VenueTrade]:
        trades, self._trades = self._trades, []
        return trades

    def give_back(self, trades: Iterable[VenueTrade]) -> None:
        """A batch that did not commit goes back in front (storing it twice is harmless)."""
        self._trades[:0] = trades

    def __len__(self) -> int:
        return len(self._trades)


class Feed:
    """Connects to `venue` for `symbols` and hands every trade to `intake` once."""

    def __init__(
        self,
        venue: Venue,
        symbols: Iterable[str],
        *,
        url: str,
        rest_url: str,
        stall_seconds: float,
        lateness: timedelta,
        intake: Intake,
    ) -> None:
        self.venue = venue
        self.symbols = {symbol: SymbolFeed(symbol) for symbol in symbols}
        self._names = frozenset(self.symbols)
        self.url = url
        self.rest = Rest(rest_url, venue.unlisted)
        self.stall_seconds = stall_seconds
        self.lateness = lateness
        self.intake = intake
        self.venue_clock: datetime | None = None
        self.malformed_total = 0
        self.connected_since: float | None = None
        self.last_error: str | None = None
        self.relist_seconds = _RELIST_SECONDS
        # What the venue said about listing, kept across connections of this run: a listed
        # product is not asked about again, an unlisted one is every `relist_seconds`.
        self._listed: set[str] = set()
        self._unlisted: set[str] = set()
        # The venue's clock less ours, as the newest trade showed it (transit time included).
        self._offset = timedelta(0)

    # -- the connection ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, resume: Mapping[str, Mark]) -> None:
        """Ingest until `stop` is set, continuing each symbol after its stored `resume` mark
        (what this instance handed over in an earlier term but never stored is forgotten)."""
        for feed in self.symbols.values():
            mark = resume.get(feed.symbol)
            feed.contiguous = mark.last_trade_id if mark is not None else None
            feed.contiguous_time = None
            feed.ahead.clear()
            feed.want_through = None
            feed.complete_through = mark.complete_through if mark is not None else None
            feed.since = mark.since if mark is not None else None
        # A client per run: the last run closed its own. The count goes on.
        throttled = self.rest.throttled_total
        self.rest = Rest(self.rest.base_url, self.venue.unlisted)
        self.rest.throttled_total = throttled
        delay = _BACKOFF_FIRST
        try:
            while not stop.is_set():
                session = asyncio.ensure_future(self._session())
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({session, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                if not session.done():
                    session.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await session
                    return
                problem = _problem(session)
                self._down(problem)
                if self.connected_since is not None:
                    delay = _BACKOFF_FIRST  # it worked for a while: start the backoff over
                self.connected_since = None
                wait = delay * random.uniform(0.8, 1.2)
                logger.warning("%s feed: %s; reconnecting in %.1fs", self.venue.name, problem, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                delay = min(delay * 2, _BACKOFF_MAX)
        finally:
            self._down("stopped")
            await self.rest.close()

    async def _session(self) -> None:
        names = sorted(self.symbols)
        for feed in self.symbols.values():
            feed.become("unlisted" if feed.symbol in self._unlisted else "connecting")
        async with connect(
            self.venue.stream_url(self.url, names),
            open_timeout=self.stall_seconds,
            # Our own keepalive below: its pongs are a heartbeat that moves the watermark.
            ping_interval=None,
            close_timeout=_CLOSE_SECONDS,
            max_size=2**22,
            # Uncompressed: inflating every message cost more CPU than anything else we do
            # with it, and a feed's bandwidth is not what runs short.
            compression=None,
        ) as ws:
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._listen(ws))
                    tasks.create_task(self._relisting(ws))
                    if not self.venue.sends_heartbeats:
                        tasks.create_task(self._keepalive(ws))
                    await self._subscribe(ws, names)
            except* (Stalled, Relisted, websockets.exceptions.ConnectionClosed, OSError) as group:
                # One of them ended the session: say which, as a bare exception.
                raise group.exceptions[0] from None

    async def _listen(self, ws: ClientConnection) -> None:
        if not self.venue.sends_heartbeats:
            # Stalls are the keepalive's to find (its pongs); a close raises here.
            while True:
                self._handle(await ws.recv())
        # One deadline moved on by every message: cheaper than a timeout per message.
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                while True:
                    deadline.reschedule(loop.time() + self.stall_seconds)
                    self._handle(await ws.recv())
        except TimeoutError:
            raise Stalled(f"no message within {self.stall_seconds:g}s") from None

    async def _keepalive(self, ws: ClientConnection) -> None:
        """Ping a few times per stall bound; each pong is a heartbeat (see the module doc)."""
        every = self.stall_seconds / _PINGS_PER_STALL
        last = time.monotonic()
        while True:
            await asyncio.sleep(every)
            sent = datetime.now(UTC)
            pong = await ws.ping()
            remaining = self.stall_seconds - (time.monotonic() - last)
            try:
                await asyncio.wait_for(pong, max(remaining, 0.0))
            except TimeoutError:
                raise Stalled(f"no pong within {self.stall_seconds:g}s") from None
            last = time.monotonic()
            self._clock(sent + self._offset)

    async def _relisting(self, ws: ClientConnection) -> None:
        """Ask the venue about products it did not list, every `relist_seconds`: over REST
        where the stream cannot say (Binance), by subscribing again where it acknowledges."""
        asks_rest = not self.venue.subscriptions(sorted(self._names))
        while True:
            if asks_rest:
                await self._check_listing()
            await asyncio.sleep(self.relist_seconds)
            unlisted = sorted(self._unlisted)
            if unlisted and not asks_rest:
                for message in self.venue.subscriptions(unlisted):
                    await ws.send(orjson.dumps(message).decode())

    async def _check_listing(self) -> None:
        for symbol in sorted(self._names - self._listed):
            try:
                await self.venue.check_listed(self.rest, symbol)
            except Unlisted as exc:
                self._not_listed(symbol, str(exc))
                continue
            except (RestError, Malformed, OSError) as exc:
                # Unknown for now: the feed carries on as if listed, and asks again later.
                logger.warning("%s feed: cannot ask about %s: %s", self.venue.name, symbol, exc)
                continue
            self._listed.add(symbol)
            if symbol in self._unlisted:
                self._unlisted.discard(symbol)
                logger.warning("%s feed: %s is listed now", self.venue.name, symbol)
                raise Relisted(f"{symbol} is listed now")

    def _not_listed(self, symbol: str, why: str) -> None:
        feed = self.symbols[symbol]
        if feed.recovering is not None:
            feed.recovering.cancel()
            feed.recovering = None
        if symbol not in self._unlisted:
            logger.warning("%s feed: the venue does not list %s (%s)", self.venue.name, symbol, why)
        self._unlisted.add(symbol)
        feed.become("unlisted")

    async def _subscribe(self, ws: ClientConnection, names: list[str]) -> None:
        messages = self.venue.subscriptions(names)
        for message in messages:
            await ws.send(orjson.dumps(message).decode())
        if not messages:
            self._subscribed(self._names)

    def _down(self, why: str) -> None:
        self.last_error = why if why != "stopped" else self.last_error
        for feed in self.symbols.values():
            if feed.state != "down":
                feed.become("down")
                if why != "stopped":
                    feed.reconnects_total += 1
            if feed.recovering is not None:
                feed.recovering.cancel()
                feed.recovering = None

    def _handle(self, raw: str | bytes) -> None:
        try:
            events = self.venue.parse(raw, self._names)
        except Malformed as exc:
            self.malformed_total += 1
            logger.warning(
                "%s feed: skipped a message (%s): %s", self.venue.name, exc, truncate(raw)
            )
            return
        for event in events:
            if isinstance(event, VenueTrade):
                self._offset = event.timestamp - datetime.now(UTC)
                self._clock(event.timestamp)
                self._take(self.symbols[event.symbol], event, live=True)
            elif isinstance(event, Heartbeat):
                self._clock(event.time)
                self._heartbeat(self.symbols[event.symbol], event)
            elif isinstance(event, Subscribed):
                self._subscribed(event.symbols)

    def _subscribed(self, symbols: frozenset[str]) -> None:
        """The venue streams `symbols` now (an acknowledgement lists every product it
        streams on the connection; without one, every product asked for)."""
        self.connected_since = time.monotonic()
        acknowledged = bool(self.venue.subscriptions(sorted(self._names)))
        for symbol in sorted(symbols):
            feed = self.symbols[symbol]
            if acknowledged:
                self._unlisted.discard(symbol)
            if feed.state not in ("connecting", "unlisted") or symbol in self._unlisted:
                continue  # already streaming, or only listed once the venue says so
            if feed.contiguous is None:
                feed.become("connected")  # nothing stored yet: ingestion starts now
            else:
                self._recover(feed)
        if acknowledged:
            for symbol in sorted(self._names - symbols):
                self._not_listed(symbol, "left out of the subscription")

    # -- trades -----------------------------------------------------------------------------

    def _clock(self, moment: datetime) -> None:
        if self.venue_clock is None or moment > self.venue_clock:
            self.venue_clock = moment

    def _take(self, feed: SymbolFeed, trade: VenueTrade, *, live: bool) -> bool:
        """Hand `trade` over unless it already was; True when it was handed over."""
        tid = trade.trade_id
        if feed.contiguous is None:
            feed.contiguous, feed.contiguous_time = tid, trade.timestamp
            feed.since = trade.timestamp
        elif tid <= feed.contiguous or tid in feed.ahead:
            if (
                live
                and tid < feed.contiguous
                and feed.contiguous_time is not None
                and trade.timestamp > feed.contiguous_time
            ):
                # A lower id with a newer time: the venue restarted its ids. History cannot
                # bridge that; the stretch of ingestion starts over here.
                logger.warning(
                    "%s feed: %s trade ids restarted at %d (had %d)",
                    self.venue.name,
                    feed.symbol,
                    tid,
                    feed.contiguous,
                )
                feed.resets_total += 1
                feed.contiguous, feed.contiguous_time = tid, trade.timestamp
                feed.ahead.clear()
                feed.want_through = None
                feed.since = trade.timestamp
            else:
                feed.duplicates_total += 1
                return False
        else:
            feed.ahead[tid] = trade.timestamp
            self._absorb(feed)
        if not live:
            feed.recovered_total += 1
        self.intake.put(trade)
        if live and not feed.caught_up:
            self._recover(feed)
        return True

    def _absorb(self, feed: SymbolFeed) -> None:
        assert feed.contiguous is not None
        while feed.contiguous + 1 in feed.ahead:
            feed.contiguous += 1
            feed.contiguous_time = feed.ahead.pop(feed.contiguous)

    def _heartbeat(self, feed: SymbolFeed, beat: Heartbeat) -> None:
        if feed.contiguous is None:
            # Nothing stored yet: the stretch starts after the venue's newest trade.
            feed.contiguous, feed.contiguous_time = beat.last_trade_id, beat.time
            feed.since = beat.time
            return
        newest = max(feed.ahead, default=feed.contiguous)
        if beat.last_trade_id > newest:
            feed.want_through = beat.last_trade_id
            self._recover(feed)

    def marks(self) -> dict[str, Mark]:
        """What a batch of everything handed over so far makes true, per symbol: the
        watermarks are moved here, once a batch rather than once a message (the venue's clock
        and each symbol's state are what they are now)."""
        marks = {}
        for symbol, feed in self.symbols.items():
            self._advance_watermark(feed)
            if (mark := feed.mark()) is not None:
                marks[symbol] = mark
        return marks

    def _advance_watermark(self, feed: SymbolFeed) -> None:
        if feed.state != "connected" or not feed.caught_up or self.venue_clock is None:
            return
        mark = self.venue_clock - self.lateness
        if feed.complete_through is None or mark > feed.complete_through:
            feed.complete_through = mark

    # -- recovery ---------------------------------------------------------------------------

    def _recover(self, feed: SymbolFeed) -> None:
        if feed.recovering is not None and not feed.recovering.done():
            return
        feed.become("recovering")
        feed.recovering = asyncio.get_running_loop().create_task(
            self._recovery(feed), name=f"mdp-recover-{feed.symbol}"
        )

    async def _recovery(self, feed: SymbolFeed) -> None:
        delay = _BACKOFF_FIRST
        while True:
            assert feed.contiguous is not None
            start = feed.contiguous
            # Up to the first trade we already have beyond the gap, else the venue's newest.
            held = min(feed.ahead, default=None)
            until = held
            if until is None and feed.want_through is not None:
                until = feed.want_through + 1
            fetched = 0
            newest = start
            try:
                async for page in self.venue.history(self.rest, feed.symbol, start, until):
                    for trade in page:
                        newest = max(newest, trade.trade_id)
                        fetched += self._take(feed, trade, live=False)
            except Unlisted as exc:
                feed.recovering = None  # this task: it ends here
                self._not_listed(feed.symbol, str(exc))
                return
            except (RestError, Malformed, OSError) as exc:
                logger.warning(
                    "%s feed: recovering %s failed (%s); retrying in %.1fs",
                    self.venue.name,
                    feed.symbol,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            assert feed.contiguous is not None
            # The pass is complete. Below a trade we hold, ids the venue's history lacks are
            # missing for good (a venue never should lose any): say so and carry on after
            # them rather than wait forever. A heartbeat's newer id may just not be in the
            # venue's history yet: that is waited for (the loop goes again, with backoff).
            reached = max(newest, held - 1) if held is not None else newest
            if feed.contiguous < reached:
                logger.error(
                    "%s feed: %s history has no trades %d..%d; continuing after them",
                    self.venue.name,
                    feed.symbol,
                    feed.contiguous + 1,
                    reached,
                )
                feed.contiguous = reached
                feed.ahead = {tid: t for tid, t in feed.ahead.items() if tid > reached}
                self._absorb(feed)
            if feed.want_through is not None and feed.want_through <= feed.contiguous:
                feed.want_through = None
            if fetched:
                logger.info(
                    "%s feed: recovered %d trades of %s", self.venue.name, fetched, feed.symbol
                )
            if feed.caught_up:
                feed.become("connected")
                feed.recovering = None
                self._advance_watermark(feed)
                return
            # A newer gap opened meanwhile, or the history is behind the heartbeat: again.
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX)


def _problem(session: asyncio.Future[None]) -> str:
    exc = session.exception()
    if exc is None:
        return "the venue closed the connection"
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        return f"connection closed ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
