"""In-memory ingestion heartbeat of this instance (instance-local by design)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ingestion.feed import Feed

__all__ = ["IngestionRole", "IngestionState", "IngestionStatus"]

IngestionState = Literal[
    "starting", "running", "standby", "stale", "failing", "stopped", "disabled"
]
IngestionRole = Literal["leader", "standby"]


@dataclass(slots=True)
class IngestionStatus:
    enabled: bool
    interval_seconds: float
    symbols: tuple[str, ...]
    started_monotonic: float = field(default_factory=time.monotonic)
    last_batch_at: datetime | None = None
    last_batch_monotonic: float | None = None
    last_batch_size: int = 0
    batches_total: int = 0
    trades_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    stopped: bool = False
    # Only the leader among the instances ingests; None until the first election attempt.
    role: IngestionRole | None = None
    leader_since: datetime | None = None
    # Candles materialised by this instance (as leader): the slowest symbol's watermark it
    # last saw.
    candles_until: datetime | None = None
    candle_failures_total: int = 0
    # The venue feed, when FEED names one (its per-symbol state is reported as is).
    feed: Feed | None = None
    # TRADES_RETENTION, and the oldest trade kept as the leader's housekeeping last saw it.
    trades_retention: timedelta | None = None
    oldest_trade_kept: datetime | None = None

    @property
    def stale_after_seconds(self) -> float:
        # Rounded: 3 × 0.1 is 0.30000000000000004 in binary floating point.
        return round(3 * self.interval_seconds, 6)

    def record_success(self, size: int) -> None:
        self.last_batch_at = datetime.now(UTC)
        self.last_batch_monotonic = time.monotonic()
        self.last_batch_size = size
        self.batches_total += 1
        self.trades_total += size
        self.consecutive_failures = 0

    def record_failure(self, error: str) -> None:
        self.failures_total += 1
        self.consecutive_failures += 1
        self.last_error = error
        self.last_error_at = datetime.now(UTC)

    def became(self, role: IngestionRole | None, since: datetime | None) -> None:
        if role == "leader" and self.role != "leader":
            # The stale clock starts when this instance takes over, not at process start.
            self.started_monotonic = time.monotonic()
        self.role = role
        self.leader_since = since

    def feeds_behind(self) -> list[str]:
        """Venue symbols not connected and caught up for longer than the stale window (only
        the leader runs the feed)."""
        if self.feed is None or self.role != "leader":
            return []
        limit = self.stale_after_seconds
        return [s.symbol for s in self.feed.symbols.values() if s.behind_for() > limit]

    def heartbeat_age(self) -> float | None:
        """Seconds since the last committed batch (monotonic: immune to clock steps)."""
        if self.last_batch_monotonic is None:
            return None
        return time.monotonic() - self.last_batch_monotonic

    def state(self) -> IngestionState:
        if not self.enabled:
            return "disabled"
        if self.stopped:
            return "stopped"
        if self.role == "standby":
            return "standby"
        age = self.heartbeat_age()
        since = age if age is not None else time.monotonic() - self.started_monotonic
        if since > self.stale_after_seconds:
            return "stale"
        if self.consecutive_failures:
            return "failing"
        return "running" if age is not None else "starting"
