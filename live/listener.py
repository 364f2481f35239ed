"""Hearing live batches: LISTEN on a dedicated connection, catch up after every gap.

The connection is never a pooled one (returning a connection to asyncpg's pool drops its
listeners). Every notice only says "a batch committed"; what the broadcaster gets is read
back as "every live trade after my position", so a missed or duplicated notice, a reconnect
or a leader change can neither lose nor repeat a trade.

Only what this instance serves is read back: the newest trade of each symbol (a row a
symbol), and every trade of the symbols its streams follow. A venue batch holds thousands of
trades, and an instance without streams (a feed's leader apart from the readers) would
otherwise read them all back once a second, for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

import asyncpg

from live.broadcaster import Broadcaster
from persistence.batches import (
    START,
    latest_trades,
    newest_after,
    newest_position,
    oldest_live_batch,
    parse_notice,
    position,
    trades_after,
)
from persistence.connections import describe_error
from persistence.trades import LIVE_CHANNEL

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

# Trades read back a page at a time. Reading and handing out a page holds the event loop
# (a few microseconds a trade): 1,000 keep the requests in between waiting a few
# milliseconds at most, where 10,000 held them some 30 ms behind a venue feed's busy batch.
_PAGE = 1_000


class Listener:
    """Keeps a broadcaster fed for as long as it runs, reconnecting with backoff."""

    def __init__(
        self,
        connect_kwargs: dict[str, Any],
        broadcaster: Broadcaster,
        *,
        timeout: float,
        check_every: float,
        retry_first: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self._connect_kwargs = connect_kwargs
        self._broadcaster = broadcaster
        self._timeout = timeout
        self._check_every = check_every
        self._retry_first = retry_first
        self._retry_max = retry_max

    async def run(self, stop: asyncio.Event) -> None:
        delay = self._retry_first
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = self._retry_first
            except Exception as exc:
                if self._broadcaster.listening:
                    logger.warning("live feed lost (%s); reconnecting", describe_error(exc))
                self._broadcaster.listening = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, self._retry_max)
        self._broadcaster.listening = False

    async def _session(self, stop: asyncio.Event) -> None:
        async with asyncio.timeout(self._timeout):
            conn: asyncpg.Connection = await asyncpg.connect(**self._connect_kwargs)
        heard = asyncio.Event()
        # A lost connection wakes the loop at once: its next read fails and we reconnect.
        conn.add_termination_listener(lambda _: heard.set())
        try:
            await conn.add_listener(LIVE_CHANNEL, lambda *args: self._on_notice(args[-1], heard))
            await self._catch_up(conn)
            if not self._broadcaster.listening:
                logger.info("live feed: listening")
            self._broadcaster.listening = True
            while not stop.is_set():
                waiter = asyncio.ensure_future(heard.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait(
                        (waiter, stopper),
                        timeout=self._check_every,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()
                    stopper.cancel()
                heard.clear()
                # Also without a notice: a quiet connection may be a dead one, and a read
                # proves it alive (and catches up with whatever a lost notice announced).
                await self._catch_up(conn)
        finally:
            self._broadcaster.listening = False
            conn.terminate()

    def _on_notice(self, payload: str, heard: asyncio.Event) -> None:
        notice = parse_notice(payload)
        if notice is None:
            heard.set()
            return
        if notice.closed != frozenset():
            # Committed before we heard it: a read now sees the candles closed.
            self._broadcaster.closed(notice.closed)
        position = self._broadcaster.position
        # A batch an earlier catch-up already read (it committed meanwhile), or one that
        # stored no trade, needs no query.
        if notice.first_id is not None and (position is None or notice.stamped > position[0]):
            heard.set()

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        broadcaster = self._broadcaster
        async with asyncio.timeout(self._timeout):
            position = broadcaster.position
            if position is not None and position[0] != START:
                oldest = await oldest_live_batch(conn)
                if oldest is None or position[0] < oldest:
                    # Batches after our position were pruned before we heard them.
                    position = None
            if position is None:
                # First start, or a gap longer than replay: take the newest state as it is.
                # Position first: a batch committing in between is then published, not lost.
                newest = await newest_position(conn)
                broadcaster.remember(await latest_trades(conn))
                if broadcaster.position is None:
                    broadcaster.position = newest
                else:
                    broadcaster.reset(newest)
                return
            upto = await newest_position(conn)
            if upto <= position:
                return
            latest = await newest_after(conn, position, upto)
            broadcaster.remember({trade.symbol: trade for trade in latest})
            await self._read_followed(conn, position, upto)
            broadcaster.position = upto

    async def _read_followed(
        self, conn: asyncpg.Connection, start: tuple[datetime, int], upto: tuple[datetime, int]
    ) -> None:
        """Publish the trades after `start` up to `upto` of the symbols streams follow, a page
        at a time. A stream may begin to follow a symbol while a page is read: that symbol's
        trades up to where the others got are then read first, so that no stream that
        subscribed before the catch-up's end misses a trade of it."""
        broadcaster = self._broadcaster
        read: frozenset[str] = frozenset()
        after = start
        while True:
            if joined := broadcaster.followed - read:
                if after > start:
                    await self._read_joined(conn, start, after, joined)
                read |= joined
                continue
            if not read or after >= upto:
                return
            page = await trades_after(conn, after, symbols=read, upto=upto, limit=_PAGE)
            broadcaster.publish(page)
            after = position(page[-1]) if len(page) == _PAGE else upto

    async def _read_joined(
        self,
        conn: asyncpg.Connection,
        start: tuple[datetime, int],
        upto: tuple[datetime, int],
        symbols: frozenset[str],
    ) -> None:
        """Publish the trades of `symbols` after `start` up to `upto`, a page at a time."""
        while True:
            page = await trades_after(conn, start, symbols=symbols, upto=upto, limit=_PAGE)
            self._broadcaster.publish(page)
            if len(page) < _PAGE:
                return
            start = position(page[-1])
