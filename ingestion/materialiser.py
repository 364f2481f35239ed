"""The leader's candle step: after each batch, materialise what became final for each symbol, in
bounded steps."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.finality import BASE, INTERVALS, VISIBILITY_DEADLINE
from persistence.materialise import Advance, advance_watermark

__all__ = ["CandleMaterialiser"]

logger = logging.getLogger(__name__)

# Catching up (after an outage, a standby period, a restore) starts with an hour per step and
# then sizes its steps to the time budget: a day per step at most, a minute at least.
_FIRST_SPAN = timedelta(hours=1)
_MIN_SPAN = INTERVALS[BASE]
_MAX_SPAN = timedelta(days=1)
# Candles this far behind are caught up after an outage, not just a minute being done.
_BEHIND = timedelta(minutes=3)


class CandleMaterialiser:
    """One step per ingestion cycle, oldest minutes first, sized to stay within `budget`
    seconds so live batches keep their cadence."""

    def __init__(self, engine: AsyncEngine, *, budget: float) -> None:
        self.engine = engine
        self.budget = budget
        self.span = _FIRST_SPAN
        # Every symbol's candles are materialised up to here.
        self.until: datetime | None = None
        self._due = 0.0
        self._behind = False

    async def step(self) -> Advance | None:
        """Run one step unless nothing can have become final since the last one."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        if started < self._due:
            return None
        async with self.engine.begin() as conn:
            # The budget in wall time from here: a symbol at a time, until it is spent.
            deadline = time.monotonic() + self.budget
            advance = await advance_watermark(conn, span=self.span, deadline=deadline)
        if advance is None:
            return None
        elapsed = loop.time() - started
        self.until = advance.after
        if advance.caught_up:
            # The next minute becomes final a deadline after it ends: sleep on it till then.
            wait = advance.after + INTERVALS[BASE] + VISIBILITY_DEADLINE - datetime.now(UTC)
            self._due = started + max(wait.total_seconds(), 0.0)
            if self._behind:
                logger.info("candles caught up: materialised up to %s", advance.after.isoformat())
            self._behind = False
        else:
            # A busy feed's minute can take a few steps (the budget): not worth a line.
            self._behind |= datetime.now(UTC) - advance.before > _BEHIND
            logger.debug("candles materialised up to %s in %.3fs", advance.after, elapsed)
            self._resize(advance, elapsed)
        return advance

    def _resize(self, advance: Advance, elapsed: float) -> None:
        if elapsed > self.budget:
            self.span = max(_MIN_SPAN, self.span / 2)
        elif elapsed < self.budget / 2 and advance.moved >= self.span:
            self.span = min(_MAX_SPAN, self.span * 2)
