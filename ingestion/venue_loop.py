"""The venue source's loop: while this instance leads, a feed runs and each interval's trades
are committed in one transaction together with the watermarks they make true."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.feed import Feed, Mark
from ingestion.leader import LEADER_LOCK_KEY, LeaderLock
from ingestion.loop import BatchRefused, IngestionLoop
from ingestion.sources.base import VenueTrade
from ingestion.status import IngestionStatus
from persistence import trades as stored
from persistence.feeds import StoredMark, insert_venue_batch, stored_marks

__all__ = ["VenueIngestor"]

logger = logging.getLogger(__name__)


def _row(trade: VenueTrade) -> stored.VenueTrade:
    return stored.VenueTrade(
        trade.symbol, trade.price, trade.size, trade.timestamp, str(trade.trade_id), trade.side
    )


class VenueIngestor(IngestionLoop):
    def __init__(
        self,
        engine: AsyncEngine,
        feed: Feed,
        status: IngestionStatus,
        leader: LeaderLock | None = None,
    ) -> None:
        super().__init__(engine, status, leader)
        self.feed = feed
        status.feed = feed
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None
        # Symbols whose trades the last batch put back (logged when that starts and ends).
        self._waiting: set[str] = set()

    async def _start_feed(self) -> None:
        """Connect, resuming every symbol after what the previous leader stored."""
        async with self.engine.connect() as conn:
            marks = await stored_marks(conn, self.feed.venue.name)
        resume = {s: Mark(m.last_trade_id, m.complete_through, m.since) for s, m in marks.items()}
        self._stop = asyncio.Event()
        self._running = asyncio.create_task(self.feed.run(self._stop, resume), name="mdp-feed")

    async def stop_source(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(running, 5)
        except TimeoutError:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        # What was handed over but not committed is recovered again by the next leader.
        self.feed.intake.take()
        self._resumed = False

    async def run_once(self) -> int:
        running = self._running
        if running is not None and running.done() and not running.cancelled():
            # The feed retries whatever the venue does: ending by itself is a bug, said loudly.
            error = running.exception()
            logger.error("venue feed ended: %r; restarting it", error, exc_info=error)
        if not self._resumed or running is None or running.done():
            await self.stop_source()
            await self._start_feed()
            self._resumed = True
        intake = self.feed.intake
        # Taken together, with no await between: the marks cover exactly what was handed over.
        trades = intake.take()
        marks = {
            symbol: StoredMark(mark.last_trade_id, mark.complete_through, mark.since)
            for symbol, mark in self.feed.marks().items()
        }
        stamped = datetime.now(UTC)
        try:
            async with self.engine.begin() as conn:
                batch = await insert_venue_batch(
                    conn,
                    [_row(trade) for trade in trades],
                    marks,
                    feed=self.feed.venue.name,
                    stamped=stamped,
                    leader_pid=self.leader.backend_pid if self.leader is not None else None,
                    lock_key=LEADER_LOCK_KEY,
                )
                if batch is None:
                    raise BatchRefused("not the leader any more, or not newer than the last batch")
        except BaseException:
            # Storing them again later is harmless (the unique key), losing them is not.
            intake.give_back(trades)
            raise
        self._put_back([trades[i] for i in batch.deferred])
        # Counted once committed: a late print or a duplicate is what the database found.
        for symbol, count in batch.late.items():
            self.feed.symbols[symbol].late_total += count
        for symbol, count in batch.duplicates.items():
            self.feed.symbols[symbol].duplicates_total += count
        for symbol, count in batch.expired.items():
            self.feed.symbols[symbol].expired_total += count
            logger.warning(
                "%d trade(s) of %s skipped: stamped in a month whose trades TRADES_RETENTION "
                "dropped (its candles are kept as they were)",
                count,
                symbol,
            )
        self.status.record_success(batch.stored)
        return batch.stored

    def _put_back(self, deferred: list[VenueTrade]) -> None:
        """Offer again next batch the trades left out because history being written held
        their symbol's candles; say when a symbol starts and stops waiting so (once, not a
        line a batch)."""
        if not deferred and not self._waiting:
            return
        self.feed.intake.give_back(deferred)
        waiting = Counter(trade.symbol for trade in deferred)
        for symbol, count in waiting.items():
            self.feed.symbols[symbol].deferred_total += count
        if started := sorted(waiting.keys() - self._waiting):
            logger.info(
                "trades of %s wait for history being written (mdp import, backfill) to commit; "
                "the rest of each batch commits meanwhile",
                ", ".join(started),
            )
        if ended := sorted(self._waiting - waiting.keys()):
            logger.info("trades of %s no longer wait for history being written", ", ".join(ended))
        self._waiting = set(waiting)
