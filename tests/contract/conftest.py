"""The live server the contract tests use: `mdp serve` (uvicorn) on a free port, own database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import schemathesis
from sqlalchemy.engine import URL

from tests.support import DatabaseFactory, serve_live


@pytest.fixture(scope="session")
async def contract_database(database_factory: DatabaseFactory) -> AsyncIterator[URL]:
    async with database_factory.fresh(migrated=False) as url:
        yield url


@pytest.fixture(scope="session")
def live_server(contract_database: URL) -> Iterator[str]:
    """Base URL of a real uvicorn process with live ingestion, stopped with SIGTERM."""
    with serve_live(contract_database) as service:
        yield service.base


@pytest.fixture(scope="session")
def api_schema(live_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")
