"""Shared fixtures: a real PostgreSQL (embedded, or the server named by MDP_TEST_DATABASE_URL)
with a fresh database migrated to head by Alembic, exactly as the service does at start-up."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mdp.embedded import EmbeddedPostgres
from mdp.settings import normalise_database_url
from persistence.database import create_engine
from persistence.migrate import upgrade


def _dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> Iterator[URL]:
    """The PostgreSQL server under test: MDP_TEST_DATABASE_URL, else an embedded one."""
    configured = os.environ.get("MDP_TEST_DATABASE_URL")
    if configured:
        yield normalise_database_url(configured)
        return
    # Not under pytest's tmp_path: a concurrent pytest session resets that tree to mode 0700,
    # locking out the unprivileged user the embedded server runs as when tests run as root.
    parent = Path(tempfile.mkdtemp(prefix="mdp-tests-"))
    embedded = EmbeddedPostgres(parent / "pgdata")
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(parent, ignore_errors=True)


async def create_database(server: URL) -> URL:
    """A new, empty database on `server`, so test runs never see each other's rows."""
    name = f"mdp_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_dsn(server))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.set(database=name)


async def drop_database(server: URL, database: URL) -> None:
    conn = await asyncpg.connect(_dsn(server))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database.database}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def database_url(server_url: URL) -> AsyncIterator[URL]:
    """A fresh database at head, shared by the session's integration and API tests."""
    url = await create_database(server_url)
    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    yield url
    await drop_database(server_url, url)


def make_engine(url: URL, **options: object) -> AsyncEngine:
    return create_engine(
        url,
        pool_size=2,
        connect_timeout=5,
        query_timeout=30,
        application_name="mdp-tests",
        **options,
    )


@pytest.fixture(scope="session")
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def conn(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that is rolled back: each test starts clean."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            yield connection
        finally:
            await transaction.rollback()


@pytest.fixture
async def clean_tables(engine: AsyncEngine) -> None:
    """For tests whose writes must be committed (they go through the app's own pool)."""
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE trades, candles, symbols RESTART IDENTITY CASCADE"))
