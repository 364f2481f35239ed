"""Integration fixtures: private databases for tests whose writes must be committed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.migrate import upgrade
from tests.conftest import create_database, drop_database, make_engine


@pytest.fixture
async def empty_database(server_url: URL) -> AsyncIterator[URL]:
    """A brand-new database with no schema at all, dropped after the test."""
    url = await create_database(server_url)
    yield url
    await drop_database(server_url, url)


@pytest.fixture
async def fresh_engine(empty_database: URL) -> AsyncIterator[AsyncEngine]:
    """An engine on a private database at head: for tests whose writes must be committed."""
    engine = make_engine(empty_database)
    await upgrade(engine)
    yield engine
    await engine.dispose()
