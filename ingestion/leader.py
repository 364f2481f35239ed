"""Leader election among instances: a PostgreSQL advisory lock on a dedicated connection.

Cloud Run runs several instances of a revision, each with its own lifespan; only the holder
of the lock ingests. The lock lives on a connection of its own, never a pooled one (a pool
may reset sessions, releasing the lock behind our back). When the leader dies its session
ends and PostgreSQL frees the lock; a standby trying every interval takes over within one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg
from sqlalchemy.engine import URL

from persistence.connections import dedicated_connection, describe_error

__all__ = ["LEADER_LOCK_KEY", "LeaderLock"]

logger = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every instance of the service.
LEADER_LOCK_KEY = 7_262_023_002


class LeaderLock:
    """Holds (or tries to take) the ingestion leadership on a dedicated connection."""

    def __init__(self, url: URL, *, connect_timeout: float, timeout: float) -> None:
        self._connect_kwargs = dedicated_connection(
            url, connect_timeout=connect_timeout, application_name="mdp-leader"
        )
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self.leader_since: datetime | None = None

    @property
    def is_leader(self) -> bool:
        return self.leader_since is not None

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend holding the lock: writes check it to fence a lost leader."""
        return self._conn.get_server_pid() if self._conn is not None and self.is_leader else None

    async def refresh(self) -> bool:
        """Take the lock if free, or confirm we still hold it: True when leading, False when
        another instance leads. Raises when the database cannot tell (leadership is dropped)."""
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.is_closed():
                    self.leader_since = None
                    self._conn = await asyncpg.connect(**self._connect_kwargs)
                if self.is_leader:
                    # Still connected means still holding: the lock dies only with the session.
                    await self._conn.fetchval("SELECT 1")
                elif await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    self.leader_since = datetime.now(UTC)
                    logger.info("this instance is now the ingestion leader")
        except Exception as exc:
            if self.is_leader:
                logger.warning("lost ingestion leadership: %s", describe_error(exc))
            await self.release()
            raise
        return self.is_leader

    async def release(self) -> None:
        """Give the lock up by ending the session (also on shutdown, so a standby takes over)."""
        self.leader_since = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.close()
            except Exception:
                conn.terminate()
