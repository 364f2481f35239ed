"""Exports from a real `mdp serve`: snapshot, disconnect, lost database, SIGTERM."""

from __future__ import annotations

import io
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import URL

from tests.support import Service, dsn, generate_trades, serve, wait_until, wait_until_async

# Enough rows (about 120 MB of CSV) that the server is still streaming while the test acts,
# with the client's receive buffer pinned small: Linux grows it up to tcp_rmem's maximum (32 MB
# here), which could otherwise take a whole export before the test looks for its COPY.
ROWS = 3_000_000
SMALL_RECEIVE_BUFFER = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)]
START, END = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
PARAMS = {"symbols": "AAPL", "start": START, "end": END}
# Uncompressed: compressed, the whole export could fit in the sockets' buffers.
PLAIN = {"Accept-Encoding": "identity"}


def _slow_reader(service: Service, timeout: float) -> httpx.Client:
    """A client that reads only when asked to, with little room to buffer what it has not."""
    return httpx.Client(
        timeout=timeout,
        headers={**PLAIN, **service.headers},
        transport=httpx.HTTPTransport(socket_options=SMALL_RECEIVE_BUFFER),
    )


@pytest.fixture(scope="module")
def server(module_database: URL) -> Iterator[Service]:
    env = {"INGESTION_ENABLED": "false", "LOG_LEVEL": "INFO"}
    with serve(module_database, env, ready="/symbols") as running:
        yield running


@pytest.fixture(scope="module")
async def sql(server: Service, module_database: URL) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn(module_database))
    await generate_trades(conn, ROWS)
    yield conn
    await conn.close()


async def _copy_backend(conn: asyncpg.Connection) -> int:
    async def find() -> int | None:
        pid: int | None = await conn.fetchval(
            # This test's database only: other runs may share the server.
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'mdp-export' "
            "AND datname = current_database() AND state = 'active' AND query LIKE 'COPY%'"
        )
        return pid

    pid = await wait_until_async(
        find, lambda found: found is not None, what="a COPY running for the export", timeout=10
    )
    assert pid is not None
    return pid


async def test_a_client_that_goes_away_cancels_the_query_and_frees_the_connection(
    server: Service, sql: asyncpg.Connection
):
    with _slow_reader(server, 10) as client:
        with client.stream("GET", f"{server.base}/export/trades", params=PARAMS) as response:
            assert response.status_code == 200
            next(response.iter_raw())
        # Leaving the block closes the socket with most of the export unread.
    wait_until(lambda: "client went away" in server.output(), what="the disconnect noticed")
    # No COPY of the export is left running in this database once the client is gone.
    await wait_until_async(
        lambda: sql.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mdp-export' "
            "AND datname = current_database() AND state = 'active' AND query LIKE 'COPY%'"
        ),
        lambda count: count == 0,
        what="no export query left running",
        timeout=5,
    )
    # And the pool serves the next export.
    again = httpx.get(
        f"{server.base}/export/trades", params=PARAMS, headers=server.headers, timeout=30
    )
    assert again.status_code == 200


async def test_an_export_reads_one_snapshot_while_trades_are_added(
    server: Service, sql: asyncpg.Connection
):
    with _slow_reader(server, 30) as client:
        with client.stream("GET", f"{server.base}/export/trades", params=PARAMS) as response:
            body = io.BytesIO()
            chunks = response.iter_bytes()
            body.write(next(chunks))
            await _copy_backend(sql)
            # Any committed write will do: the export's snapshot must not see it.
            added = await sql.fetchval(
                "INSERT INTO trades (symbol, price, volume, timestamp) "
                "VALUES ('AAPL', 1, 1, '2026-01-01T23:59:59Z') RETURNING id"
            )
            for chunk in chunks:
                body.write(chunk)
    lines = body.getvalue().split(b"\r\n")
    assert lines[-1] == b""
    ids = {line.split(b",", 1)[0] for line in lines[1:-1]}
    assert len(lines) - 2 == int(response.headers["x-row-count"]) == len(ids)
    assert str(added).encode() not in ids
    await sql.execute("DELETE FROM trades WHERE id = $1", added)


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "arrow", "parquet"])
async def test_an_export_that_loses_its_database_ends_unmistakably_truncated(
    server: Service, sql: asyncpg.Connection, fmt: str
):
    received = io.BytesIO()
    with _slow_reader(server, 30) as client:
        with client.stream(
            "GET", f"{server.base}/export/trades", params={**PARAMS, "format": fmt}
        ) as response:
            chunks = response.iter_raw()
            received.write(next(chunks))
            await sql.execute("SELECT pg_terminate_backend($1)", await _copy_backend(sql))
            with pytest.raises(httpx.RemoteProtocolError):
                for chunk in chunks:
                    received.write(chunk)
    data = received.getvalue()
    if fmt in {"csv", "ndjson"}:
        assert not data.endswith(b"\n")
    elif fmt == "arrow":
        with pytest.raises((pa.ArrowInvalid, OSError)):
            pa_ipc.open_stream(data).read_all()
    else:
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(io.BytesIO(data))
    wait_until(lambda: f"as {fmt} failed after" in server.output(), what="the log line", timeout=5)
    assert "ends truncated" in server.output()


async def test_sigterm_ends_an_open_export_within_cloud_runs_grace(
    module_database: URL, sql: asyncpg.Connection
):
    env = {"INGESTION_ENABLED": "false"}
    with serve(module_database, env, ready="/symbols") as service:
        with _slow_reader(service, 30) as client:
            with client.stream("GET", f"{service.base}/export/trades", params=PARAMS) as response:
                assert response.status_code == 200
                next(response.iter_raw())
                service.process.send_signal(signal.SIGTERM)
                # Cloud Run kills the instance 10 s after SIGTERM.
                service.process.wait(timeout=10)
    assert not await sql.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mdp-export' "
        "AND datname = current_database() AND query LIKE 'COPY%' AND state = 'active'"
    )
