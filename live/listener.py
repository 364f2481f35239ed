"""Hearing live batches: LISTEN on a dedicated connection, catch up after every gap.

The connection is never a pooled one (returning a connection to asyncpg's pool drops its
listeners). Every notice only says "a batch committed"; what the broadcaster gets is read
back as "every live trade after my position", so a missed or duplicated notice, a reconnect
or a leader change can neither lose nor repeat a trade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from live.broadcaster import Broadcaster
from persistence.batches import (
    START,
    latest_trades,
    newest_position,
    oldest_live_batch,
    parse_notice,
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
            while True:
                trades = await trades_after(conn, position, limit=_PAGE)
                broadcaster.publish(trades)
                if len(trades) < _PAGE:
                    return
                position = broadcaster.position or position
