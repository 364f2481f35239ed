"""Engines, connections and the one place that decides what "database unavailable" means."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from errors import DatabaseUnavailable, ExportsAtCapacity, KeyExportsAtCapacity, ServiceError
from persistence.admission import Admission, client_gone
from persistence.budget import Budget
from persistence.pool import ReadPool, session_settings

__all__ = [
    "Database",
    "Probe",
    "create_engine",
    "dedicated_connection",
    "describe_error",
    "driver_connection",
    "is_unavailable",
]

# Errors that mean "the server is not there right now", as opposed to a bug in a query.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    PoolTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the database cannot be reached or answered late."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _UNAVAILABLE):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def describe_error(exc: BaseException) -> str:
    """A short, log- and client-safe description: the class of the innermost error (the
    driver's, under SQLAlchemy's wrappers), never its message, SQL or parameters."""
    root = exc
    seen = {id(exc)}
    while True:
        orig = getattr(root, "orig", None)
        inner = orig if isinstance(orig, BaseException) else root.__cause__
        # asyncio.timeout() chains the cancellation it used: the timeout is the news.
        if inner is None or id(inner) in seen or isinstance(inner, asyncio.CancelledError):
            return type(root).__name__
        seen.add(id(inner))
        root = inner


def create_engine(
    url: URL,
    *,
    pool_size: int,
    connect_timeout: float,
    query_timeout: float,
    application_name: str,
    **options: Any,
) -> AsyncEngine:
    """An engine with the service's session settings, for the write path and the CLI (reads
    use a `persistence.pool.ReadPool`)."""
    connect_args: dict[str, Any] = {
        "timeout": connect_timeout,
        "command_timeout": query_timeout,
        "server_settings": {"application_name": application_name} | session_settings(query_timeout),
    }
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=connect_timeout,
        connect_args=connect_args,
        **options,
    )


def dedicated_connection(
    url: URL, *, connect_timeout: float, application_name: str
) -> dict[str, Any]:
    """asyncpg.connect() arguments for a connection of its own, never a pooled one (a pool
    resets sessions: advisory locks and LISTEN would go behind our back)."""
    _, arguments = url.get_dialect()().create_connect_args(url)
    return {
        **arguments,
        "timeout": connect_timeout,
        "server_settings": {
            "application_name": application_name,
            # Over TCP, notice a vanished peer in seconds, not the OS's two hours.
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": "3",
        },
    }


@dataclass(frozen=True, slots=True)
class Probe:
    ok: bool
    latency_ms: float | None
    detail: str | None
    # Whether the database answering reads is a standby, and how far its replay is behind.
    standby: bool | None = None
    replay_lag_seconds: float | None = None


# On a standby: zero once it replayed all it received, else the age of the last transaction
# it replayed (the primary's commit time). NULL on a primary.
_PROBE = """
    SELECT pg_is_in_recovery(),
           CASE WHEN NOT pg_is_in_recovery() THEN NULL
                WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
                ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
           END
"""


# /health and /metrics share one probe per instance at most this often, however many ask.
PROBE_INTERVAL_SECONDS = 1.0


class Database:
    """The read side's connections plus readiness (not ready until migrations and seeding
    finished), admission in arrival order, and the shared database probe.

    Exports hold a connection for minutes: they draw from `exports`, connections of their
    own shared out by `export_budget`, never from the interactive read pool, so however many
    exports run, reads keep every connection they are sized for.
    """

    def __init__(
        self,
        pool: ReadPool,
        *,
        probe_timeout: float,
        admission: Admission,
        exports: ReadPool,
    ) -> None:
        self.pool = pool
        self.probe_timeout = probe_timeout
        self.admission = admission
        self.exports = exports
        self.export_budget = Budget(
            exports.size,
            full=lambda total: ExportsAtCapacity(
                f"This instance already runs {total} exports (EXPORT_MAX_CONCURRENT); retry later."
            ),
            owner_full=lambda cap: KeyExportsAtCapacity(
                f"This key already runs {cap} exports at once; retry when one has ended."
            ),
        )
        self._ready = asyncio.Event()
        self._probe: tuple[float, Probe] | None = None
        self._probing: asyncio.Future[Probe] | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def mark_ready(self) -> None:
        self._ready.set()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[asyncpg.Connection]:
        """A read connection (autocommit, read-only sessions), once admitted; unreachable-
        database errors become domain errors. Plain statements only, no session state, so a
        transaction-mode pooler works too."""
        if not self.ready:
            raise DatabaseUnavailable("The database is not ready yet.")
        async with self.admission.slot():
            async with self._hold(self.pool) as conn:
                yield conn

    @asynccontextmanager
    async def export_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of the export pool, for a caller holding a claim on `export_budget`
        (which never hands out more claims than the pool has connections)."""
        if not self.ready:
            raise DatabaseUnavailable("The database is not ready yet.")
        async with self._hold(self.exports) as conn:
            yield conn

    @asynccontextmanager
    async def _hold(self, pool: ReadPool) -> AsyncIterator[asyncpg.Connection]:
        try:
            conn = await pool.take()
        except Exception as exc:
            self._check(exc, pool)
            raise
        if self._probe is not None and not self._probe[1].ok:
            # Connected: a failure probed a moment ago is news no more.
            self._probe = None
        try:
            yield conn
        except ServiceError:
            # A domain answer (404, 409…): the connection did its job.
            pool.give(conn)
            raise
        except BaseException as exc:
            # Cut short: the query may still run, or the protocol be mid-statement.
            closed = conn.is_closed()
            await pool.retire(conn)
            if isinstance(exc, Exception):
                self._check(exc, pool, closed=closed)
            raise
        else:
            pool.give(conn)

    def _check(self, exc: Exception, pool: ReadPool, *, closed: bool = False) -> None:
        """Raises a 503 when a read's error means the database is gone (and its idle
        connections likely with it); any other error is the caller's to raise. `closed`:
        the server ended the connection (asyncpg then says only "connection is closed")."""
        if closed or is_unavailable(exc):
            pool.discard_idle()
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        # The next /health must see it, not a probe cached a moment ago.
        self._probe = None
        return DatabaseUnavailable(f"The database is unavailable ({describe_error(exc)}).")

    async def probe(self) -> Probe:
        """One round trip that also reads the replay lag, at most once a second and shared
        by every caller meanwhile; never raises, never waits longer than `probe_timeout`."""
        cached = self._probe
        if cached is not None and time.monotonic() - cached[0] < PROBE_INTERVAL_SECONDS:
            return cached[1]
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._round_trip())
        # Shielded: a client that goes away must not cancel the probe others wait for.
        return await asyncio.shield(self._probing)

    async def _round_trip(self) -> Probe:
        # Shared by every caller: the client of the request that started it may go away.
        client_gone.set(None)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.probe_timeout):
                async with self.admission.slot():
                    conn = await self.pool.take()
                    try:
                        standby, lag = await conn.fetchrow(_PROBE)
                    except BaseException:
                        self.pool.give(conn, discard=True)
                        raise
                    self.pool.give(conn)
            latency = round((time.perf_counter() - started) * 1000, 3)
            probe = Probe(True, latency, None, standby, None if lag is None else max(0.0, lag))
        except Exception as exc:
            probe = Probe(False, None, describe_error(exc))
        finally:
            self._probing = None
        self._probe = (time.monotonic(), probe)
        return probe


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy connection."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection
