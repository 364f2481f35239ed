"""The leader's care of `trades`: monthly partitions created ahead, expired raw trades dropped.

On a connection of its own, beside the ingestion loop: a retention detach waits for the
snapshots that may still read the partition (a running export's), and the loop must not
wait with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from ingestion.status import IngestionStatus
from persistence.connections import describe_error
from persistence.partitions import drop_expired, ensure_ahead, oldest_trade_kept

__all__ = ["AHEAD", "TradeHousekeeping"]

logger = logging.getLogger(__name__)

# Partitions exist this far ahead of now: months of slack if housekeeping cannot run.
AHEAD = timedelta(days=92)
# Leadership is checked this often; the work runs once per `every` while leading.
_POLL_SECONDS = 60.0


class TradeHousekeeping:
    """Runs `once` after this instance becomes the leader and then every `every` seconds."""

    def __init__(
        self,
        connect: dict[str, Any],
        *,
        status: IngestionStatus,
        leading: Callable[[], bool],
        every: float = 3600.0,
    ) -> None:
        self._connect = connect
        self.status = status
        self._leading = leading
        self._every = every
        self._last: float | None = None

    async def once(self, now: datetime | None = None) -> list[str]:
        """Create the partitions ahead and drop the expired ones; returns those dropped."""
        now = now or datetime.now(UTC)
        conn = await asyncpg.connect(**self._connect)
        try:
            created = await ensure_ahead(conn, now, AHEAD)
            if created:
                logger.info("created %d trades partition(s) ahead of %s", created, now.date())
            retention = self.status.trades_retention
            dropped = await drop_expired(conn, now - retention) if retention is not None else []
            self.status.oldest_trade_kept = await oldest_trade_kept(conn)
        finally:
            await conn.close()
        if dropped:
            logger.info(
                "dropped trades older than TRADES_RETENTION (candles kept): %s", ", ".join(dropped)
            )
        return dropped

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if not self._leading():
                self._last = None
            elif self._last is None or loop.time() - self._last >= self._every:
                self._last = loop.time()
                try:
                    await self.once()
                except Exception as exc:
                    # Nothing is half done: a detach left pending is finished next time.
                    logger.warning("trades housekeeping failed: %s", describe_error(exc))
            try:
                await asyncio.wait_for(stop.wait(), _POLL_SECONDS)
            except TimeoutError:
                pass
