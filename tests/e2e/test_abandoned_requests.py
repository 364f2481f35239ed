"""A request queued for a database connection whose client goes away leaves the queue at once:
it does not take its turn, and a connection, for an answer nobody reads."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from sqlalchemy.engine import URL

from tests.support import dsn, metric_value, serve, wait_until_async

QUEUED = 3
# One read connection; a generous queue timeout, so that nothing here is cut short by it.
SERVICE_ENV = {
    "AUTH_MODE": "off",
    "INGESTION_ENABLED": "false",
    "DB_POOL_SIZE": "1",
    "DB_CONNECT_TIMEOUT_SECONDS": "60",
}
TRADES = "/trades?symbol=AAPL"
OPERATION = "listTrades"


async def _send(base: str, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = httpx.URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _metric(client: httpx.AsyncClient, name: str, labels: dict[str, str]) -> float:
    response = await client.get("/metrics", headers={"Accept": "text/plain"})
    return metric_value(response.text, name, labels)


async def test_a_queued_request_whose_client_leaves_gives_up_its_turn(
    module_database: URL,
) -> None:
    locker = await asyncpg.connect(dsn(module_database))
    with serve(module_database, SERVICE_ENV) as service:
        async with httpx.AsyncClient(base_url=service.base, timeout=10) as client:
            await locker.execute("BEGIN; LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
            try:
                # The holder: the instance's only read connection, waiting for the lock.
                holder = await _send(service.base, TRADES)
                queued = [await _send(service.base, TRADES) for _ in range(QUEUED)]
                await wait_until_async(
                    lambda: _metric(client, "mdp_db_admission_waiting", {}),
                    lambda waiting: waiting == QUEUED,
                    what="requests queued behind the holder",
                )
                for _, writer in queued:
                    writer.close()
                # Gone from the queue while the connection is still held: not at their turn.
                await wait_until_async(
                    lambda: _metric(client, "mdp_db_admission_waiting", {}),
                    lambda waiting: waiting == 0,
                    what="the queue emptied",
                )
                # Each logged and counted as 499, "client closed request".
                abandoned = await wait_until_async(
                    lambda: _metric(
                        client,
                        "mdp_http_requests_total",
                        {"operation": OPERATION, "method": "GET", "status": "499"},
                    ),
                    lambda count: count == QUEUED,
                    what="the abandoned requests counted",
                )
            finally:
                await locker.execute("ROLLBACK")
                await locker.close()
            status_line = await asyncio.wait_for(holder[0].readline(), timeout=30)
            holder[1].close()
            # The connection was not lost with them: the next request is served.
            after = await client.get(TRADES)

    assert abandoned == QUEUED
    assert status_line.startswith(b"HTTP/1.1 200")
    assert after.status_code == 200
