"""Engines, connections and the one place that decides what "database unavailable" means."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from errors import DatabaseUnavailable
from persistence.admission import Admission

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
    pooled: bool = False,
    read_only: bool = False,
    **options: Any,
) -> AsyncEngine:
    """An engine with the service's session settings. `pooled`: `url` is a transaction-mode
    pooler, which hands each transaction to any server connection (see `_POOLED`).
    `read_only`: the server refuses every write in its sessions, whatever a statement tries."""
    session = {
        "statement_timeout": str(int(query_timeout * 1000)),
        # Short index scans dominate; JIT and parallel plans only add latency here.
        "jit": "off",
        "max_parallel_workers_per_gather": "0",
        **({"default_transaction_read_only": "on"} if read_only else {}),
    }
    connect_args: dict[str, Any] = {
        "timeout": connect_timeout,
        "command_timeout": query_timeout,
        # A pooler refuses other startup parameters, and a SET would not outlive the
        # transaction: behind one, the database role carries these (docs/deploy.md).
        "server_settings": {"application_name": application_name} | ({} if pooled else session),
    }
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=connect_timeout,
        connect_args=connect_args | (_POOLED if pooled else {}),
        **options,
    )


# A named prepared statement lives in one server connection, which a transaction-mode pooler
# may not hand back for the next statement. So no statement caches, and unnamed statements
# only: asyncpg then sends Parse again with every Bind, in the same round trip.
_POOLED: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: "",
}


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
_PROBE = text(
    """
    SELECT pg_is_in_recovery(),
           CASE WHEN NOT pg_is_in_recovery() THEN NULL
                WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
                ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
           END
    """
)


# /health and /metrics share one probe per instance at most this often, however many ask.
PROBE_INTERVAL_SECONDS = 1.0


class Database:
    """The read side's engine plus readiness (not ready until migrations and seeding
    finished), admission in arrival order, and the shared database probe."""

    def __init__(self, engine: AsyncEngine, *, probe_timeout: float, admission: Admission) -> None:
        self.engine = engine
        self.probe_timeout = probe_timeout
        self.admission = admission
        self._ready = asyncio.Event()
        self._probe: tuple[float, Probe] | None = None
        self._probing: asyncio.Future[Probe] | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def mark_ready(self) -> None:
        self._ready.set()

    @asynccontextmanager
    async def connect(self, *, long: bool = False) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection for reads, once admitted; unreachable-database errors
        become domain errors. `long` for a connection held for minutes (an export), whose
        hold time must not count as a typical request's."""
        if not self.ready:
            raise DatabaseUnavailable("The database is not ready yet.")
        try:
            async with self.admission.slot(measured=not long), self.engine.connect() as conn:
                if self._probe is not None and not self._probe[1].ok:
                    # Connected: a failure probed a moment ago is news no more.
                    self._probe = None
                yield conn
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise self._unavailable(exc) from exc
            raise

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[asyncpg.Connection]:
        """Like `connect`, but the pooled connection's asyncpg connection itself: hot reads
        skip SQLAlchemy's execution layer (the live feed shares these asyncpg queries). Plain
        `fetch` calls only, so a transaction-mode pooler works too."""
        async with self.connect() as conn:
            driver = await driver_connection(conn)
            try:
                yield driver
            except Exception as exc:
                # SQLAlchemy did not see this error: tell its pool to drop a broken connection.
                if driver.is_closed() or is_unavailable(exc):
                    await conn.invalidate()
                    raise self._unavailable(exc) from exc
                raise

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
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.probe_timeout):
                async with self.admission.slot(), self.engine.connect() as conn:
                    standby, lag = (await conn.execute(_PROBE)).one()
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
