"""The ingestion loop: one batch per interval, one transaction per batch, never giving up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.generator import TradeGenerator
from ingestion.leader import LEADER_LOCK_KEY, LeaderLock
from ingestion.materialiser import CandleMaterialiser
from ingestion.status import IngestionStatus
from persistence.batches import latest_trades
from persistence.connections import describe_error, is_unavailable
from persistence.feeds import record_intervals
from persistence.finality import VISIBILITY_DEADLINE
from persistence.trades import insert_live_batch

__all__ = ["BatchRefused", "BatchTooLate", "IngestionLoop", "Ingestor"]

logger = logging.getLogger(__name__)

# The `feed` the synthetic walk's ingestion intervals are recorded under (FEED=synthetic).
SYNTHETIC_FEED = "synthetic"


class BatchTooLate(RuntimeError):
    """The batch could not be written within the visibility deadline and was rolled back."""


class BatchRefused(RuntimeError):
    """The database refused the batch: not the leader any more, or not newer than the last."""


class IngestionLoop:
    """One batch per interval from a source, written through its own engine (one connection)
    so read traffic can never starve it; only while this instance leads."""

    def __init__(
        self, engine: AsyncEngine, status: IngestionStatus, leader: LeaderLock | None = None
    ) -> None:
        """Without a `leader`, this is the only writer (no election)."""
        self.engine = engine
        self.status = status
        self.leader = leader
        # Candles: a quarter of each cycle at most, so the next batch still starts on time.
        self.candles = CandleMaterialiser(engine, budget=status.interval_seconds / 4)
        self._resumed = False

    async def run_once(self) -> int:
        """Store one batch; returns how many trades it stored."""
        raise NotImplementedError

    async def stop_source(self) -> None:
        """This instance stopped leading, or the loop ends: let go of the source."""

    def _fail(self, exc: Exception) -> None:
        error = describe_error(exc)
        self.status.record_failure(error)
        if is_unavailable(exc) or isinstance(exc, BatchRefused):
            logger.warning("ingestion batch failed: %s", error)
        else:
            logger.exception("ingestion batch failed: %s", error)

    async def _materialise(self) -> None:
        try:
            await self.candles.step()
        except Exception as exc:
            # Nothing is lost: the watermark did not move, the next cycle tries again.
            self.status.candle_failures_total += 1
            if is_unavailable(exc):
                logger.warning("candle materialisation failed: %s", describe_error(exc))
            else:
                logger.exception("candle materialisation failed: %s", describe_error(exc))
        self.status.candles_until = self.candles.until

    async def _elect(self) -> bool:
        if self.leader is None:
            return True
        was_leader = self.leader.is_leader
        try:
            leading = await self.leader.refresh()
        except Exception as exc:
            # Cannot even tell who leads: this instance is not ingesting, and that is a failure.
            self.status.became(None, None)
            self._fail(exc)
            await self.stop_source()
            return False
        if leading and not was_leader:
            # Taking over: continue from what the previous leader stored.
            self._resumed = False
        if was_leader and not leading:
            await self.stop_source()
        self.status.became("leader" if leading else "standby", self.leader.leader_since)
        return leading

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set (the batch under way finishes whole) or until cancelled,
        keeping a fixed cadence: a slow batch does not shift the grid."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        interval = self.status.interval_seconds
        deadline = loop.time()
        try:
            while not stop.is_set():
                if await self._elect():
                    try:
                        await self.run_once()
                    except Exception as exc:
                        self._fail(exc)
                    else:
                        await self._materialise()
                deadline += interval
                now = loop.time()
                if deadline < now:
                    # Fell behind (e.g. a long outage): skip missed ticks instead of bursting.
                    deadline = now
                try:
                    await asyncio.wait_for(stop.wait(), deadline - now)
                except TimeoutError:
                    pass
        finally:
            self.status.stopped = True
            await self.stop_source()
            if self.leader is not None:
                # Hand over at once rather than when the session times out.
                await self.leader.release()


class Ingestor(IngestionLoop):
    """The synthetic source: a batch of walk steps per interval, all stamped alike."""

    def __init__(
        self,
        engine: AsyncEngine,
        generator: TradeGenerator,
        status: IngestionStatus,
        leader: LeaderLock | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`clock` stamps the batches (tests replay a past session through it)."""
        super().__init__(engine, status, leader)
        self.generator = generator
        self.clock = clock
        # The unbroken stretch this instance has stored: (its first batch, its last batch).
        self._stretch: tuple[datetime, datetime] | None = None

    async def run_once(self) -> int:
        """Generate and store one batch; on any failure nothing is stored and the walk rewinds."""
        if not self._resumed:
            # After a restart each walk continues from its symbol's last stored price.
            async with self.engine.connect() as conn:
                latest = await latest_trades(conn, list(self.generator.walks))
            self.generator.resume({s: t.price for s, t in latest.items() if t is not None})
            self._resumed = True
            # A (re)start or a takeover: nothing proves what happened since the last batch.
            self._stretch = None
        snapshot = self.generator.snapshot()
        stamped = self.clock()
        since = stamped
        stale = timedelta(seconds=self.status.stale_after_seconds)
        if self._stretch is not None and stamped - self._stretch[1] <= stale:
            since = self._stretch[0]
        try:
            async with self.engine.begin() as conn:
                size = await insert_live_batch(
                    conn,
                    self.generator.batch(stamped),
                    stamped=stamped,
                    leader_pid=self.leader.backend_pid if self.leader is not None else None,
                    lock_key=LEADER_LOCK_KEY,
                )
                if not size:
                    raise BatchRefused("not the leader any more, or not newer than the last batch")
                # The walk prints every trade there is: its symbols were ingested throughout.
                await record_intervals(
                    conn,
                    dict.fromkeys(self.generator.walks, (since, stamped)),
                    feed=SYNTHETIC_FEED,
                )
                if self.clock() - stamped > VISIBILITY_DEADLINE / 2:
                    # Readers treat buckets older than the deadline as final: never let a
                    # slow commit add trades behind their back. Roll back; the next cycle retries.
                    raise BatchTooLate(f"batch took longer than {VISIBILITY_DEADLINE / 2}")
        except BaseException:
            self.generator.restore(snapshot)
            raise
        self._stretch = (since, stamped)
        self.status.record_success(size)
        return size
