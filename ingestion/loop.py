"""The ingestion loop: one batch per interval, one transaction per batch, never giving up."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from ingestion.generator import TradeGenerator
from ingestion.status import IngestionStatus
from persistence.database import describe_error, is_unavailable
from persistence.trades import VISIBILITY_DEADLINE, insert_trades, last_prices

__all__ = ["Ingestor"]

logger = logging.getLogger(__name__)


class BatchTooLate(RuntimeError):
    """The batch could not be written within the visibility deadline and was rolled back."""


class Ingestor:
    """Writes through its own engine (one connection) so read traffic can never starve it."""

    def __init__(
        self,
        engine: AsyncEngine,
        generator: TradeGenerator,
        status: IngestionStatus,
    ) -> None:
        self.engine = engine
        self.generator = generator
        self.status = status
        self._resumed = False

    async def run_once(self) -> int:
        """Generate and store one batch; on any failure nothing is stored and the walk rewinds."""
        if not self._resumed:
            # After a restart each walk continues from its symbol's last stored price.
            async with self.engine.connect() as conn:
                self.generator.resume(await last_prices(conn, list(self.generator.walks)))
            self._resumed = True
        snapshot = self.generator.snapshot()
        stamped = datetime.now(UTC)
        try:
            async with self.engine.begin() as conn:
                size = await insert_trades(conn, self.generator.batch(stamped))
                if datetime.now(UTC) - stamped > VISIBILITY_DEADLINE / 2:
                    # Readers treat buckets older than the deadline as final: never let a
                    # slow commit add trades behind their back. Roll back; the next cycle retries.
                    raise BatchTooLate(f"batch took longer than {VISIBILITY_DEADLINE / 2}")
        except BaseException:
            self.generator.restore(snapshot)
            raise
        self.status.record_success(size)
        return size

    async def run(self) -> None:
        """Run until cancelled, keeping a fixed cadence (a slow batch does not shift the grid)."""
        loop = asyncio.get_running_loop()
        interval = self.status.interval_seconds
        deadline = loop.time()
        try:
            while True:
                try:
                    await self.run_once()
                except Exception as exc:
                    error = describe_error(exc)
                    self.status.record_failure(error)
                    if is_unavailable(exc):
                        logger.warning("ingestion batch failed, database unavailable: %s", error)
                    else:
                        logger.exception("ingestion batch failed: %s", error)
                deadline += interval
                now = loop.time()
                if deadline < now:
                    # Fell behind (e.g. a long outage): skip missed ticks instead of bursting.
                    deadline = now
                await asyncio.sleep(deadline - now)
        finally:
            self.status.stopped = True
