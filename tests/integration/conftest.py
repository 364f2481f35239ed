"""Integration fixtures: private databases for tests whose writes must be committed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.migrate import upgrade
from tests.support import MakeDatabase, open_test_engine


@pytest.fixture
async def empty_database(make_database: MakeDatabase) -> URL:
    """A brand-new database with no schema (until `fresh_engine` migrates it), dropped after
    the test."""
    return await make_database(migrated=False)


@pytest.fixture
async def fresh_engine(empty_database: URL) -> AsyncIterator[AsyncEngine]:
    """An engine on `empty_database`, brought to head: for tests whose writes must be
    committed."""
    engine = open_test_engine(empty_database)
    await upgrade(engine)
    yield engine
    await engine.dispose()
