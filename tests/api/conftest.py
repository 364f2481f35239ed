"""Fixtures for the API tests: the real app over its own database, and committed test data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from tests.api.support import SyncDatabase, app_settings, running_app
from tests.support import DatabaseFactory


@pytest.fixture(scope="session")
async def api_database_url(database_factory: DatabaseFactory) -> AsyncIterator[URL]:
    """An empty database of the API tests' own: the app's lifespan migrates it at start-up."""
    async with database_factory.fresh(migrated=False) as url:
        yield url


@pytest.fixture(scope="session")
def client(api_database_url: URL) -> Iterator[TestClient]:
    """One running app (ingestion off) shared by the tests that do not need a special one."""
    with running_app(app_settings(api_database_url)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def _api_db(client: TestClient, api_database_url: URL) -> Iterator[SyncDatabase]:
    # Depends on `client`: the tables exist once the app has migrated the database.
    database = SyncDatabase(api_database_url)
    yield database
    database.close()


@pytest.fixture
def market(_api_db: SyncDatabase) -> SyncDatabase:
    """The shared app's database, emptied and holding only the default symbols."""
    _api_db.reset()
    return _api_db


@pytest.fixture
async def fresh_database_url(database_factory: DatabaseFactory) -> AsyncIterator[URL]:
    """A new empty database for a test that runs an app of its own (e.g. with ingestion on)."""
    async with database_factory.fresh(migrated=False) as url:
        yield url
