"""The live server the contract tests use: `mdp serve` (uvicorn) on a free port, own database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import schemathesis
from sqlalchemy.engine import URL

from tests.support import DatabaseFactory, Service, serve_live


@pytest.fixture(scope="session")
async def contract_database(database_factory: DatabaseFactory) -> AsyncIterator[URL]:
    async with database_factory.fresh(migrated=False) as url:
        yield url


@pytest.fixture(scope="session")
def live_service(contract_database: URL) -> Iterator[Service]:
    """A real uvicorn process with live ingestion and a key with every scope
    (`live_service.api_key`), stopped with SIGTERM."""
    with serve_live(contract_database) as service:
        yield service


@pytest.fixture(scope="session")
def live_server(live_service: Service) -> str:
    """Base URL of the live service."""
    return live_service.base


@pytest.fixture(scope="session")
def api_schema(live_service: Service) -> schemathesis.BaseSchema:
    # schemathesis.toml sends ${MDP_CONTRACT_API_KEY} for the ApiKeyAuth scheme; the config is
    # read (and the variable resolved) while the schema loads.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MDP_CONTRACT_API_KEY", str(live_service.api_key))
        return schemathesis.openapi.from_url(f"{live_service.base}/openapi.json")
