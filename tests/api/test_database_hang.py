"""A database connection that hangs (network black hole): bounded 503s, then recovery."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import URL

from tests.api.support import app_settings, assert_problem, running_app
from tests.support import wait_until


class FreezableProxy:
    """A TCP proxy to PostgreSQL that can stop passing bytes, as a dead network path does:
    connections stay open, nothing arrives, nobody is told."""

    def __init__(self, connect: Callable[[], socket.socket]) -> None:
        self.connect = connect
        self.frozen = threading.Event()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = self.connect()
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        with client, upstream:
            while not self.closing.is_set():
                if self.frozen.is_set():
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)

    def close(self) -> None:
        self.closing.set()
        for thread in self.threads:
            thread.join(timeout=2)
        self.listener.close()


def _connector(url: URL) -> Callable[[], socket.socket]:
    if url.host:
        address = (url.host, url.port or 5432)
        return lambda: socket.create_connection(address)
    # The embedded server listens on a Unix socket only.
    path = f"{url.query['host']}/.s.PGSQL.{url.port or 5432}"

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return sock

    return connect


@pytest.fixture
def proxied_url(fresh_database_url: URL) -> Iterator[tuple[URL, FreezableProxy]]:
    proxy = FreezableProxy(_connector(fresh_database_url))
    query = {k: v for k, v in fresh_database_url.query.items() if k != "host"}
    try:
        yield fresh_database_url.set(host="127.0.0.1", port=proxy.port, query=query), proxy
    finally:
        proxy.close()


DATA_REQUESTS = [
    ("/symbols", {}),
    ("/price/latest", {"symbol": "AAPL"}),
    ("/trades", {"symbol": "AAPL"}),
    ("/candles", {"symbol": "AAPL"}),
]


@pytest.mark.timing
def test_a_hanging_database_gets_bounded_503s_and_the_service_recovers(
    proxied_url: tuple[URL, FreezableProxy],
) -> None:
    url, proxy = proxied_url
    settings = app_settings(url, db_connect_timeout_seconds=1.0, db_query_timeout_seconds=1.0)
    with running_app(settings) as client:
        assert client.get("/symbols").status_code == 200

        proxy.frozen.set()
        for path, params in DATA_REQUESTS:
            started = time.monotonic()
            response = client.get(path, params=params)
            elapsed = time.monotonic() - started
            assert_problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"]
            # Query (1 s) or connect (1 s) timeout, plus the pool wait: bounded, never a hang.
            assert elapsed < 5, (path, elapsed)
        health = client.get("/health")
        assert health.status_code == 503

        proxy.frozen.clear()
        for path, params in DATA_REQUESTS:
            wait_until(
                lambda path=path, params=params: client.get(path, params=params),
                # 200, or 404 no_trades (ingestion is off here): answered, not unavailable.
                lambda response: response.status_code in (200, 404),
                what=f"{path} answering again",
            )
