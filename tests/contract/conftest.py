"""The live server the contract tests use: `mdp serve` (uvicorn) on a free port, own database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import schemathesis
from sqlalchemy.engine import URL

from tests.conftest import create_database, drop_database
from tests.contract.support import running_service


@pytest.fixture(scope="session")
async def contract_database(server_url: URL) -> AsyncIterator[URL]:
    url = await create_database(server_url)
    yield url
    await drop_database(server_url, url)


@pytest.fixture(scope="session")
def live_server(contract_database: URL) -> Iterator[str]:
    """Base URL of a real uvicorn process with live ingestion, stopped with SIGTERM."""
    with running_service(contract_database.render_as_string(hide_password=False), {}) as base:
        yield base


@pytest.fixture(scope="session")
def api_schema(live_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")
