"""The live server Schemathesis fuzzes: `mdp serve` (uvicorn) on a free port, own database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import schemathesis
from sqlalchemy.engine import URL

from tests.conftest import create_database, drop_database


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
async def contract_database(server_url: URL) -> AsyncIterator[URL]:
    url = await create_database(server_url)
    yield url
    await drop_database(server_url, url)


@pytest.fixture(scope="session")
def live_server(contract_database: URL) -> Iterator[str]:
    """Base URL of a real uvicorn process with live ingestion, stopped with SIGTERM."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": contract_database.render_as_string(hide_password=False),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "INGESTION_INTERVAL_SECONDS": "0.2",
        "INGESTION_SEED": "7",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "mdp.cli", "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                # /symbols answers 200 once migrations and seeding are done.
                if httpx.get(f"{base}/symbols", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


@pytest.fixture(scope="session")
def api_schema(live_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{live_server}/openapi.json")
