"""This instance's copy of the API keys: read at start-up, refreshed within a second or two of
any change, so checking a request's key never touches the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from access.apikeys import RateLimit
from persistence.api_keys import key_version, load_keys, record_last_used
from persistence.connections import describe_error

__all__ = ["Key", "KeyRing"]

logger = logging.getLogger(__name__)

# A change reaches every instance within REFRESH_SECONDS plus one query: well inside the 5 s
# the contract promises. Last-used times are written in one batch every FLUSH_SECONDS.
REFRESH_SECONDS = 1.0
FLUSH_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    name: str
    key_hash: bytes
    scopes: frozenset[str]
    limit: RateLimit
    revoked: bool
    # Its own caps on concurrent exports and streams; None: the instance's settings.
    max_exports: int | None = None
    max_streams: int | None = None


class KeyRing:
    """Keys by id. `loaded` turns true after the first successful read; until then nobody can
    be judged (requests get 503, like any request that needs the database before it is up)."""

    def __init__(self) -> None:
        self._keys: dict[str, Key] = {}
        self._version: int | None = None
        self._used: dict[str, float] = {}
        self.loaded = False

    def get(self, key_id: str) -> Key | None:
        return self._keys.get(key_id)

    @property
    def active(self) -> int:
        return sum(not key.revoked for key in self._keys.values())

    @property
    def active_ids(self) -> frozenset[str]:
        return frozenset(key.id for key in self._keys.values() if not key.revoked)

    def mark_used(self, key_id: str) -> None:
        self._used[key_id] = time.time()

    async def refresh(self, engine: AsyncEngine) -> bool:
        """Reload the keys if the change counter moved; True when they were reloaded."""
        async with engine.connect() as conn:
            if self.loaded and await key_version(conn) == self._version:
                return False
            version, rows = await load_keys(conn)
        self._keys = {
            row.id: Key(
                id=row.id,
                name=row.name,
                key_hash=row.key_hash,
                scopes=frozenset(row.scopes),
                limit=RateLimit(row.rate_limit, row.rate_window_seconds),
                revoked=row.revoked_at is not None,
                max_exports=row.max_exports,
                max_streams=row.max_streams,
            )
            for row in rows
        }
        self._version = version
        self.loaded = True
        logger.info("API keys loaded: %d active, %d revoked", self.active, len(rows) - self.active)
        return True

    async def flush_usage(self, engine: AsyncEngine) -> None:
        used, self._used = self._used, {}
        if not used:
            return
        try:
            async with engine.begin() as conn:
                await record_last_used(
                    conn, {key: datetime.fromtimestamp(at, UTC) for key, at in used.items()}
                )
        except Exception:
            # Try again next time; a newer use recorded meanwhile wins.
            self._used = {**used, **self._used}
            raise

    async def maintain(
        self,
        engine: AsyncEngine,
        stop: asyncio.Event,
        on_reload: Callable[[], None] = lambda: None,
    ) -> None:
        """Refresh every REFRESH_SECONDS (calling `on_reload` after each reload) and flush
        last-used times until `stop`, then flush."""
        next_flush = time.monotonic() + FLUSH_SECONDS
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
            try:
                if await self.refresh(engine):
                    on_reload()
                if time.monotonic() >= next_flush or stop.is_set():
                    next_flush = time.monotonic() + FLUSH_SECONDS
                    await self.flush_usage(engine)
            except Exception as exc:
                # Keep serving with the keys we have; the database may be back next time.
                logger.warning("API keys not refreshed (%s); retrying", describe_error(exc))
