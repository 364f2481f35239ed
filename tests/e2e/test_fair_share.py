"""Fair shares on a real `mdp serve` with keys: exports and streams within their budgets."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode, urlsplit

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from access.apikeys import key_id_of, revoke
from tests.support import (
    Service,
    dsn,
    generate_trades,
    metric_value,
    open_test_engine,
    provision_key_now,
    serve,
    wait_until,
)

ROWS = 1_000_000
EXPORT = "/export/trades?" + urlencode(
    {"symbols": "AAPL", "start": "2026-01-01T00:00:00Z", "end": "2026-01-03T00:00:00Z"}
)
STREAM = "/stream/trades?symbols=AAPL"


@pytest.fixture(scope="module")
def server(module_database: URL) -> Iterator[Service]:
    env = {
        "INGESTION_ENABLED": "false",
        "LOG_LEVEL": "INFO",
        # Small enough that the old way (exports on read connections) starves reads.
        "DB_POOL_SIZE": "2",
        "DB_CONNECT_TIMEOUT_SECONDS": "2",
        "EXPORT_MAX_CONCURRENT": "2",
        "EXPORT_MAX_PER_KEY": "1",
        "STREAM_MAX_PER_KEY": "1",
        "SLOW_CLIENT_SECONDS": "30",
    }
    with serve(module_database, env, ready="/symbols") as running:
        yield running


@pytest.fixture(scope="module")
async def trades(server: Service, module_database: URL) -> AsyncIterator[None]:
    conn = await asyncpg.connect(dsn(module_database))
    # Enough rows that an unread export never finishes.
    await generate_trades(conn, ROWS)
    await conn.close()
    yield


def _key(server: Service, module_database: URL) -> str:
    key = provision_key_now(module_database)
    wait_until(
        lambda: httpx.get(f"{server.base}/symbols", headers={"X-API-Key": key}).status_code,
        lambda status: status == 200,
        what="the new key admitted",
    )
    return key


@contextlib.contextmanager
def _never_reading(server: Service, path: str, key: str) -> Iterator[tuple[int, bytes]]:
    """A GET whose client reads the answer's head, then nothing: (status, what it read)."""
    address = urlsplit(server.base)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect((address.hostname, address.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(2048)
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            # A refusal: its whole problem document (Content-Length long).
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(head.split(b"\r\n\r\n", 1)[1]) < length:
                head += sock.recv(2048)
        yield status, head
    finally:
        sock.close()


def _metric(server: Service, name: str) -> float:
    headers = {**server.headers, "Accept": "text/plain"}
    return metric_value(httpx.get(f"{server.base}/metrics", headers=headers).text, name)


def _refusal(head: bytes, code: bytes) -> bool:
    return code in head and b"retry-after:" in head.lower()


# Asserts that reads beside two held exports answer within 2 s: a wall-clock bound.
@pytest.mark.timing
def test_exports_take_their_own_connections_and_their_share(
    server: Service, trades: None, module_database: URL
) -> None:
    first, second, third = (_key(server, module_database) for _ in range(3))
    with _never_reading(server, EXPORT, first) as (status, _):
        assert status == 200
        # The same key again: over its own cap, while the instance still has room.
        with _never_reading(server, EXPORT, first) as (status, head):
            assert status == 429 and _refusal(head, b'"code":"key_exports_at_capacity"'), head
        with _never_reading(server, EXPORT, second) as (status, _):
            assert status == 200
            with _never_reading(server, EXPORT, third) as (status, head):
                assert status == 503 and _refusal(head, b'"code":"exports_at_capacity"'), head
            # Two exports hold two connections; reads still have both of theirs, at once.
            started = time.monotonic()
            for path in ("/symbols", "/trades?symbol=AAPL&limit=5", "/candles?symbol=AAPL"):
                answer = httpx.get(f"{server.base}{path}", headers={"X-API-Key": third})
                assert answer.status_code == 200, (path, answer.text)
            assert time.monotonic() - started < 2
            assert httpx.get(f"{server.base}/health").status_code == 200
            assert _metric(server, "mdp_exports_open") == 2
    wait_until(lambda: _metric(server, "mdp_exports_open"), lambda n: n == 0, what="slots freed")


def test_a_key_at_its_cap_can_start_its_next_export_once_the_last_is_whole(
    server: Service, trades: None, module_database: URL
) -> None:
    # This key may run one export at a time: each export, read to its end, must have given its
    # share back by the time the client has the last byte.
    key = _key(server, module_database)
    small = "/export/trades?" + urlencode(
        {"symbols": "AAPL", "start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:00:10Z"}
    )
    with httpx.Client(base_url=server.base, headers={"X-API-Key": key}) as client:
        statuses = [client.get(small).status_code for _ in range(30)]
    assert statuses == [200] * 30


def test_one_key_cannot_hold_every_stream(
    server: Service, trades: None, module_database: URL
) -> None:
    greedy, other = _key(server, module_database), _key(server, module_database)
    with _never_reading(server, STREAM, greedy) as (status, _):
        assert status == 200
        with _never_reading(server, STREAM, greedy) as (status, head):
            assert status == 429 and _refusal(head, b'"code":"key_streams_at_capacity"'), head
        with _never_reading(server, STREAM, other) as (status, _):
            assert status == 200


async def test_revoking_a_key_cuts_its_running_export_off(
    server: Service, trades: None, module_database: URL
) -> None:
    doomed = _key(server, module_database)
    doomed_id = key_id_of(doomed)
    assert doomed_id is not None
    with _never_reading(server, EXPORT, doomed) as (status, _):
        assert status == 200
        wait_until(lambda: _metric(server, "mdp_exports_open"), lambda n: n == 1, what="running")
        engine = open_test_engine(module_database)
        try:
            await revoke(engine, doomed_id)
        finally:
            await engine.dispose()
        revoked_at = time.monotonic()
        wait_until(
            lambda: _metric(server, "mdp_exports_open"),
            lambda n: n == 0,
            what="the export cut off",
            timeout=5,
        )
        assert time.monotonic() - revoked_at < 5
    assert "its API key was revoked" in server.output()


def test_head_on_an_export_answers_its_headers_without_running_it(
    server: Service, trades: None
) -> None:
    logged_before = len(server.output())
    started = time.monotonic()
    answer = httpx.head(f"{server.base}{EXPORT}", headers=server.headers, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["x-row-count"] == str(ROWS)
    assert answer.headers["cache-control"] == "no-store"
    assert answer.content == b""
    assert time.monotonic() - started < 2
    assert "export trades of 1 symbols as csv complete" not in server.output()[logged_before:]
    unknown = httpx.head(
        f"{server.base}{EXPORT.replace('AAPL', 'ZZZZ')}", headers=server.headers, timeout=10
    )
    assert unknown.status_code == 404
