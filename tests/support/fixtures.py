"""The fixtures every test tier shares (registered by tests/conftest.py): the PostgreSQL server
under test, fresh databases on it, and a session-wide migrated database with its engine."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mdp.engines import database_server
from mdp.settings import Settings, normalise_database_url
from tests.support.database import DatabaseFactory, MakeDatabase, open_test_engine


@pytest.fixture(scope="session")
async def server_url() -> AsyncIterator[URL]:
    """The PostgreSQL server under test: MDP_TEST_DATABASE_URL, else an embedded one."""
    configured = os.environ.get("MDP_TEST_DATABASE_URL")
    # Not under pytest's tmp_path: a concurrent pytest session resets that tree to mode 0700,
    # locking out the unprivileged user the embedded server runs as when tests run as root.
    parent = Path(tempfile.mkdtemp(prefix="mdp-tests-"))
    settings = Settings(
        database_url=normalise_database_url(configured) if configured else None,
        data_dir=parent,
    )
    try:
        async with database_server(settings) as url:
            yield url
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def database_factory(server_url: URL) -> DatabaseFactory:
    """Fresh databases for fixtures of any scope: `async with database_factory.fresh()`."""
    return DatabaseFactory(server_url)


@pytest.fixture
async def make_database(database_factory: DatabaseFactory) -> AsyncIterator[MakeDatabase]:
    """`await make_database()`: a fresh database at head (`migrated=False`: empty), dropped
    after the test."""
    created: list[URL] = []

    async def make(*, migrated: bool = True) -> URL:
        url = await database_factory.create(migrated=migrated)
        created.append(url)
        return url

    yield make
    for url in created:
        await database_factory.drop(url)


@pytest.fixture(scope="module")
async def module_database(database_factory: DatabaseFactory) -> AsyncIterator[URL]:
    """An empty database for one test module, whose app or `mdp serve` migrates it at start."""
    async with database_factory.fresh(migrated=False) as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(database_factory: DatabaseFactory) -> AsyncIterator[URL]:
    """A fresh database at head, shared by the session's integration tests."""
    async with database_factory.fresh() as url:
        yield url


@pytest.fixture(scope="session")
async def engine(database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = open_test_engine(database_url)
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
