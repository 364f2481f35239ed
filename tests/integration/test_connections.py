"""Readiness, probes and the "database unavailable" mapping, on real connections and failures."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from errors import DatabaseUnavailable, SymbolNotFound
from persistence.admission import Admission, client_gone
from persistence.connections import Database, Probe, describe_error, is_unavailable
from persistence.pool import ReadPool, read_connection
from tests.support import dsn, open_test_engine, wait_until_async

NOTHING_LISTENS = make_url("postgresql+asyncpg://postgres@127.0.0.1:1/x")
CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@pytest.fixture
async def silent_server() -> AsyncIterator[URL]:
    """A TCP server that accepts connections and never says a word: a hung database."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x")
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def _terminate(url: URL, pid: int) -> None:
    admin = await asyncpg.connect(dsn(url))
    try:
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def _sleeping_backends(url: URL) -> int:
    admin = await asyncpg.connect(dsn(url))
    try:
        count: int = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
            "AND datname = current_database()"
        )
        return count
    finally:
        await admin.close()


OpenDatabase = Callable[..., Database]


@pytest.fixture
async def open_database() -> AsyncIterator[OpenDatabase]:
    """The service's read side on a URL: its pool, admission and probe, ready to serve unless
    `ready=False` (as start-up marks it once migrations ran); closed afterwards."""
    opened: list[Database] = []

    def open_(
        url: URL,
        *,
        probe_timeout: float,
        connect_timeout: float = 5,
        size: int = 2,
        ready: bool = True,
    ) -> Database:
        connect = read_connection(
            url, connect_timeout=connect_timeout, query_timeout=30, application_name="t"
        )
        admission = Admission(size, max_waiting=100, max_wait=probe_timeout, timeout=probe_timeout)
        database = Database(
            ReadPool(connect, size),
            probe_timeout=probe_timeout,
            admission=admission,
            exports=ReadPool(connect, 1),
        )
        if ready:
            database.mark_ready()
        opened.append(database)
        return database

    yield open_
    for database in opened:
        await database.pool.close()


async def test_connect_raises_database_unavailable_before_ready(
    database_url: URL, open_database: OpenDatabase
) -> None:
    database = open_database(database_url, probe_timeout=2, ready=False)

    with pytest.raises(DatabaseUnavailable) as raised:
        async with database.connect():
            pytest.fail("connect() handed out a connection before mark_ready()")

    assert raised.value.code == "database_unavailable"
    assert database.ready is False


async def test_connect_gives_a_working_connection_once_ready(
    database_url: URL, open_database: OpenDatabase
) -> None:
    database = open_database(database_url, probe_timeout=2)

    async with database.connect() as conn:
        assert await conn.fetchval("SELECT 41 + 1") == 42

    assert database.ready is True


async def test_probe_reports_ok_with_latency_on_live_database(
    database_url: URL, open_database: OpenDatabase
) -> None:
    probe = await open_database(database_url, probe_timeout=2).probe()

    assert probe.ok is True
    assert probe.latency_ms is not None and probe.latency_ms >= 0
    assert probe.detail is None


async def test_probe_reports_failure_without_raising_when_nothing_listens(
    open_database: OpenDatabase,
) -> None:
    probe = await open_database(NOTHING_LISTENS, probe_timeout=2).probe()

    assert probe.ok is False
    assert probe.latency_ms is None
    assert probe.detail is not None and CLASS_NAME.fullmatch(probe.detail)


async def test_probe_gives_up_after_probe_timeout_when_server_never_answers(
    silent_server: URL,
    open_database: OpenDatabase,
) -> None:
    # The connection itself would wait 20 s for the handshake; the probe must not.
    database = open_database(silent_server, probe_timeout=0.2, connect_timeout=20)
    started = time.monotonic()
    probe = await database.probe()
    elapsed = time.monotonic() - started

    assert probe.ok is False
    assert probe.latency_ms is None
    assert elapsed < 10


async def test_probe_that_times_out_says_timeout_error(
    silent_server: URL, open_database: OpenDatabase
) -> None:
    # /health shows this detail: a hung server must read as a timeout, not a cancellation.
    probe = await open_database(silent_server, probe_timeout=0.2, connect_timeout=20).probe()

    assert probe.detail == "TimeoutError"


async def test_connect_raises_database_unavailable_when_nothing_listens(
    open_database: OpenDatabase,
) -> None:
    database = open_database(NOTHING_LISTENS, probe_timeout=2)

    with pytest.raises(DatabaseUnavailable) as raised:
        async with database.connect():
            pytest.fail("connected to a port where nothing listens")

    assert is_unavailable(raised.value.__cause__)  # type: ignore[arg-type]
    # Safe for clients: names the error class, not the address or the driver message.
    assert "127.0.0.1" not in raised.value.detail


async def test_connect_raises_database_unavailable_when_handshake_times_out(
    silent_server: URL,
    open_database: OpenDatabase,
) -> None:
    database = open_database(silent_server, probe_timeout=2, connect_timeout=0.2)
    with pytest.raises(DatabaseUnavailable):
        async with database.connect():
            pytest.fail("connected to a server that never answered")


async def test_connect_raises_database_unavailable_when_server_kills_the_session(
    database_url: URL,
    open_database: OpenDatabase,
) -> None:
    database = open_database(database_url, probe_timeout=2)
    with pytest.raises(DatabaseUnavailable):
        async with database.connect() as conn:
            await _terminate(database_url, conn.get_server_pid())
            await conn.fetchval("SELECT 1")

    # The next request gets a fresh connection, not the dead one.
    async with database.connect() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_connect_lets_query_errors_through_unchanged(
    database_url: URL, open_database: OpenDatabase
) -> None:
    database = open_database(database_url, probe_timeout=2)

    with pytest.raises(asyncpg.UndefinedTableError):
        async with database.connect() as conn:
            await conn.fetch("SELECT * FROM no_such_table")


async def test_connections_are_reused_one_request_after_another(
    database_url: URL, open_database: OpenDatabase
) -> None:
    database = open_database(database_url, probe_timeout=2)

    pids = []
    for _ in range(3):
        async with database.connect() as conn:
            pids.append(conn.get_server_pid())

    assert len(set(pids)) == 1
    assert (database.pool.open, database.pool.in_use) == (1, 0)


async def test_a_domain_error_keeps_the_connection_and_a_cut_short_query_closes_it(
    database_url: URL,
    open_database: OpenDatabase,
) -> None:
    database = open_database(database_url, probe_timeout=2)
    with pytest.raises(SymbolNotFound):
        async with database.connect() as conn:
            kept = conn.get_server_pid()
            raise SymbolNotFound("NOPE")
    async with database.connect() as conn:
        assert conn.get_server_pid() == kept

    with pytest.raises(DatabaseUnavailable):
        async with database.connect() as conn:
            async with asyncio.timeout(0.1):
                await conn.fetch("SELECT pg_sleep(30)")

    # Closed, and the server was asked to cancel the query: it stops long before its 30 s.
    assert (database.pool.open, database.pool.in_use) == (0, 0)
    await wait_until_async(
        lambda: _sleeping_backends(database_url),
        lambda n: n == 0,
        what="the query cancelled",
        timeout=10,
    )


async def test_a_connection_left_in_a_transaction_is_not_reused(
    database_url: URL, open_database: OpenDatabase
) -> None:
    database = open_database(database_url, probe_timeout=2)
    async with database.connect() as conn:
        await conn.execute("BEGIN")
        left = conn.get_server_pid()

    async with database.connect() as conn:
        assert conn.get_server_pid() != left
        assert not conn.is_in_transaction()


async def test_refused_connection_is_unavailable_and_described_by_class() -> None:
    engine = open_test_engine(NOTHING_LISTENS)
    try:
        with pytest.raises(Exception) as raised:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()

    assert is_unavailable(raised.value)
    assert describe_error(raised.value) == "ConnectionRefusedError"


async def test_statement_timeout_is_unavailable(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SET LOCAL statement_timeout = 20"))
        with pytest.raises(DBAPIError) as raised:
            await conn.execute(text("SELECT pg_sleep(5)"))

    assert is_unavailable(raised.value)
    assert CLASS_NAME.fullmatch(describe_error(raised.value))


async def test_constraint_violation_is_not_unavailable_and_described_without_sql(
    conn: AsyncConnection,
) -> None:
    with pytest.raises(IntegrityError) as raised:
        async with conn.begin_nested():
            await conn.execute(
                text(
                    "INSERT INTO trades (symbol, price, volume, timestamp) "
                    "VALUES ('ANY', 1.00, 0, now())"
                )
            )

    assert not is_unavailable(raised.value)
    description = describe_error(raised.value)
    assert CLASS_NAME.fullmatch(description)
    assert description == "CheckViolationError"
    assert "INSERT" not in str(description)


async def test_probes_asked_together_or_within_a_second_share_one_round_trip(
    database_url: URL,
    open_database: OpenDatabase,
) -> None:
    database = open_database(database_url, probe_timeout=2)

    together = await asyncio.gather(*(database.probe() for _ in range(5)))
    moments_later = await database.probe()

    assert together[0].ok
    assert all(probe is together[0] for probe in [*together, moments_later])


async def test_a_failed_connection_drops_the_probe_cached_before_it(
    open_database: OpenDatabase,
) -> None:
    database = open_database(NOTHING_LISTENS, probe_timeout=2)
    first = await database.probe()

    with pytest.raises(DatabaseUnavailable):
        async with database.connect():
            pytest.fail("connected to a port where nothing listens")

    assert await database.probe() is not first


async def test_a_probe_waiting_for_a_connection_outlives_the_client_that_started_it(
    database_url: URL, open_database: OpenDatabase
) -> None:
    database = open_database(database_url, probe_timeout=5, size=1)

    async def gone_at_once() -> None:
        return None

    async def ask_as_a_request_whose_client_left() -> Probe:
        # What the web layer sets for a request (mdp.connexion_adaptations).
        client_gone.set(gone_at_once)
        return await database.probe()

    joined = asyncio.Event()

    async def ask_as_another_request() -> Probe:
        joined.set()
        # Joins the probe under way at once: nothing is awaited before it.
        return await database.probe()

    async with database.connect():
        # The probe queues behind this holder; the client that asked for it is already gone.
        asking = asyncio.create_task(ask_as_a_request_whose_client_left())
        await wait_until_async(
            lambda: len(database.admission.waiters) == 1, what="the probe queued"
        )
        other = asyncio.create_task(ask_as_another_request())
        await wait_until_async(joined.is_set, what="a second caller joined the probe")
    # Shared by every caller, it is served in its turn, not abandoned with its first asker.
    probes = await asyncio.gather(asking, other)

    assert probes[0] is probes[1]
    assert probes[0].ok, probes[0].detail
