"""Readiness, probes and the "database unavailable" mapping, on real connections and failures."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from errors import DatabaseUnavailable
from persistence.admission import Admission
from persistence.database import Database, create_engine, describe_error, is_unavailable
from persistence.trades import NewTrade, insert_trades
from tests.support import open_test_engine

NOTHING_LISTENS = make_url("postgresql+asyncpg://postgres@127.0.0.1:1/x")
CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@pytest.fixture
async def dead_engine() -> AsyncIterator[AsyncEngine]:
    """An engine whose server refuses every connection."""
    engine = open_test_engine(NOTHING_LISTENS)
    yield engine
    await engine.dispose()


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


def _database(engine: AsyncEngine, *, probe_timeout: float) -> Database:
    admission = Admission(
        engine.pool.size(), max_waiting=100, max_wait=probe_timeout, timeout=probe_timeout
    )
    return Database(engine, probe_timeout=probe_timeout, admission=admission)


def _hung_engine(url: URL, connect_timeout: float) -> AsyncEngine:
    return create_engine(
        url, pool_size=1, connect_timeout=connect_timeout, query_timeout=30, application_name="t"
    )


async def test_connect_raises_database_unavailable_before_ready(engine: AsyncEngine) -> None:
    database = _database(engine, probe_timeout=2)

    with pytest.raises(DatabaseUnavailable) as raised:
        async with database.connect():
            pytest.fail("connect() handed out a connection before mark_ready()")

    assert raised.value.code == "database_unavailable"
    assert database.ready is False


async def test_connect_gives_a_working_connection_once_ready(engine: AsyncEngine) -> None:
    database = _database(engine, probe_timeout=2)
    database.mark_ready()

    async with database.connect() as conn:
        assert (await conn.execute(text("SELECT 41 + 1"))).scalar_one() == 42

    assert database.ready is True


async def test_probe_reports_ok_with_latency_on_live_database(engine: AsyncEngine) -> None:
    probe = await _database(engine, probe_timeout=2).probe()

    assert probe.ok is True
    assert probe.latency_ms is not None and probe.latency_ms >= 0
    assert probe.detail is None


async def test_probe_reports_failure_without_raising_when_nothing_listens(
    dead_engine: AsyncEngine,
) -> None:
    probe = await _database(dead_engine, probe_timeout=2).probe()

    assert probe.ok is False
    assert probe.latency_ms is None
    assert probe.detail is not None and CLASS_NAME.fullmatch(probe.detail)


async def test_probe_gives_up_after_probe_timeout_when_server_never_answers(
    silent_server: URL,
) -> None:
    # The engine itself would wait 20 s for the handshake; the probe must not.
    engine = _hung_engine(silent_server, connect_timeout=20)
    started = time.monotonic()
    try:
        probe = await _database(engine, probe_timeout=0.2).probe()
    finally:
        await engine.dispose()
    elapsed = time.monotonic() - started

    assert probe.ok is False
    assert probe.latency_ms is None
    assert elapsed < 10


async def test_probe_that_times_out_says_timeout_error(silent_server: URL) -> None:
    # /health shows this detail: a hung server must read as a timeout, not a cancellation.
    engine = _hung_engine(silent_server, connect_timeout=20)
    try:
        probe = await _database(engine, probe_timeout=0.2).probe()
    finally:
        await engine.dispose()

    assert probe.detail == "TimeoutError"


async def test_connect_raises_database_unavailable_when_nothing_listens(
    dead_engine: AsyncEngine,
) -> None:
    database = _database(dead_engine, probe_timeout=2)
    database.mark_ready()

    with pytest.raises(DatabaseUnavailable) as raised:
        async with database.connect():
            pytest.fail("connected to a port where nothing listens")

    assert is_unavailable(raised.value.__cause__)  # type: ignore[arg-type]
    # Safe for clients: names the error class, not the address or the driver message.
    assert "127.0.0.1" not in raised.value.detail


async def test_connect_raises_database_unavailable_when_handshake_times_out(
    silent_server: URL,
) -> None:
    engine = _hung_engine(silent_server, connect_timeout=0.2)
    database = _database(engine, probe_timeout=2)
    database.mark_ready()
    try:
        with pytest.raises(DatabaseUnavailable):
            async with database.connect():
                pytest.fail("connected to a server that never answered")
    finally:
        await engine.dispose()


async def test_connect_raises_database_unavailable_when_server_kills_the_session(
    database_url: URL,
) -> None:
    engine = open_test_engine(database_url)
    database = _database(engine, probe_timeout=2)
    database.mark_ready()
    try:
        with pytest.raises(DatabaseUnavailable):
            async with database.connect() as conn:
                pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                async with engine.connect() as admin:
                    await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def test_connect_lets_query_errors_through_unchanged(engine: AsyncEngine) -> None:
    database = _database(engine, probe_timeout=2)
    database.mark_ready()

    with pytest.raises(ProgrammingError):
        async with database.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))


async def test_refused_connection_is_unavailable_and_described_by_class(
    dead_engine: AsyncEngine,
) -> None:
    with pytest.raises(Exception) as raised:
        async with dead_engine.connect():
            pass

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
            await insert_trades(conn, [NewTrade("ANY", Decimal("1.00"), 0, datetime.now(UTC))])

    assert not is_unavailable(raised.value)
    description = describe_error(raised.value)
    assert CLASS_NAME.fullmatch(description)
    assert description == "CheckViolationError"
    assert "INSERT" not in str(description)


async def test_probes_asked_together_or_within_a_second_share_one_round_trip(
    engine: AsyncEngine,
) -> None:
    database = _database(engine, probe_timeout=2)

    together = await asyncio.gather(*(database.probe() for _ in range(5)))
    moments_later = await database.probe()

    assert together[0].ok
    assert all(probe is together[0] for probe in [*together, moments_later])


async def test_a_failed_connection_drops_the_probe_cached_before_it(
    dead_engine: AsyncEngine,
) -> None:
    database = _database(dead_engine, probe_timeout=2)
    database.mark_ready()
    first = await database.probe()

    with pytest.raises(DatabaseUnavailable):
        async with database.connect():
            pytest.fail("connected to a port where nothing listens")

    assert await database.probe() is not first
