"""Databases for tests: fresh ones on the server under test, migrated as the service does it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mdp.engines import open_engine
from mdp.settings import Settings
from persistence.migrate import upgrade

__all__ = [
    "TEST_SETTINGS",
    "DatabaseFactory",
    "MakeDatabase",
    "dsn",
    "migrate",
    "open_test_engine",
]

# The `make_database` fixture: `await make_database(migrated=...)`.
MakeDatabase = Callable[..., Awaitable[URL]]

# What the tests' own engines use: patient, since the machine running them may be loaded.
TEST_SETTINGS = Settings(db_connect_timeout_seconds=5, db_query_timeout_seconds=30)


def dsn(url: URL) -> str:
    """`url` as a plain libpq/asyncpg DSN."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def open_test_engine(url: URL) -> AsyncEngine:
    """An engine for a test's own set-up and checks (the service's factory, "tests" use)."""
    return open_engine(TEST_SETTINGS, url, "tests")


async def migrate(url: URL) -> None:
    """Bring the database at `url` to head with Alembic, as the service's start-up does."""
    engine = open_test_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


class DatabaseFactory:
    """Creates databases on one server, so tests never see each other's rows."""

    def __init__(self, server: URL) -> None:
        self.server = server

    async def create(self, *, migrated: bool = True) -> URL:
        """A new database, at head by Alembic (as start-up leaves it) unless `migrated` is
        False: then empty, for code that must create the schema itself."""
        name = f"mdp_test_{uuid.uuid4().hex[:12]}"
        await self._admin(f'CREATE DATABASE "{name}"')
        url = self.server.set(database=name)
        if migrated:
            await migrate(url)
        return url

    async def drop(self, url: URL) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')

    @asynccontextmanager
    async def fresh(self, *, migrated: bool = True) -> AsyncIterator[URL]:
        """A new database for the length of the block, dropped afterwards."""
        url = await self.create(migrated=migrated)
        try:
            yield url
        finally:
            await self.drop(url)

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(dsn(self.server))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()
