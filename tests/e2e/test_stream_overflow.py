"""A stream whose client stops reading ends with `overflow`; other streams and ingestion carry on.

A client that merely stops reading is only noticed once every buffer between it and its queue
is full: its socket's receive buffer, the server's write buffer and the server socket's send
buffer, which the kernel grows to a few megabytes (tcp_wmem). At one trade a second that takes
minutes; here the stalled client's receive buffer is a few kilobytes, it asks for every symbol
of batches of up to 1,000 trades per symbol (about 0.5 MB a second in all) and each stream
queues four batches, so the stall is noticed within seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.e2e.sse import TRADES_AFTER, Event, consuming, fetch, parse_events, stream_data
from tests.support import Service, metric_value, serve_live, wait_until

ALL_SYMBOLS = "AAPL,GOOGL,MSFT,TSLA,AMZN"
# Small enough that a stall fills the socket: the kernel rounds it up to a few kilobytes.
_RECEIVE_BUFFER = 4096
# Generous for a loaded 2-core machine; each wait ends as soon as its outcome is there.
_PATIENCE = 120.0


@pytest.fixture(scope="module")
def service(module_database: URL) -> Iterator[Service]:
    env = {
        "AUTH_MODE": "off",
        # Every 0.5 s up to 1,000 trades per symbol, with 1.5 s of heartbeat slack before
        # ingestion would count as stale.
        "INGESTION_INTERVAL_SECONDS": "0.5",
        "INGESTION_MAX_TRADES_PER_SYMBOL": "1000",
        "STREAM_QUEUE_BATCHES": "4",
        # Long enough for the first test's client to read again after its overflow; short
        # enough for the second's never-reading client to be cut soon.
        "SLOW_CLIENT_SECONDS": "10",
        "LOG_LEVEL": "INFO",
    }
    with serve_live(module_database, env) as live:
        yield live


def _open_stalled(service: Service, symbols: str) -> socket.socket:
    """A stream request on a socket with a tiny receive buffer (set before connecting, so
    the window it advertises is small from the start); reads the response head only."""
    url = httpx.URL(service.base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
    sock.settimeout(_PATIENCE)
    sock.connect((url.host, url.port))
    # HTTP/1.0: the body is not chunked and its end is the connection's end.
    sock.sendall(
        f"GET /stream/trades?symbols={symbols} HTTP/1.0\r\nHost: {url.host}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"connection closed in the response head: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def _read_to_end(sock: socket.socket) -> str:
    """Everything the server still sends, until it closes the connection."""
    body = bytearray()
    while chunk := sock.recv(65536):
        body += chunk
    return body.decode()


def _timestamp(event: Event) -> datetime:
    return datetime.fromisoformat(event.data["timestamp"])


async def test_a_stalled_client_gets_overflow_while_others_and_ingestion_keep_going(
    service: Service, module_database: URL
) -> None:
    states: list[str] = []

    def overflows() -> float:
        # Each look also samples ingestion's health, the whole time the client is stalled.
        states.append(httpx.get(f"{service.base}/status/ingestion", timeout=10).json()["state"])
        metrics = httpx.get(f"{service.base}/metrics", headers={"Accept": "text/plain"}).text
        return metric_value(metrics, "mdp_stream_overflows_total")

    trades = f"{service.base}/stream/trades"
    with consuming(trades, {"symbols": "AAPL"}, timeout=_PATIENCE) as on_time:
        wait_until(lambda: on_time, what="the prompt client's first trade", timeout=_PATIENCE)
        before = overflows()
        with _open_stalled(service, ALL_SYMBOLS) as stalled:
            wait_until(
                overflows,
                lambda count: count > before,
                what="the stalled stream overflowing",
                timeout=_PATIENCE,
                every=0.2,
            )
            overflowed_at = datetime.now(UTC)
            # The client reads again: what was in flight, then `overflow`, then the end.
            late = list(parse_events(_read_to_end(stalled).splitlines()))
        wait_until(
            lambda: on_time and _timestamp(on_time[-1]) > overflowed_at,
            what="the prompt client hearing trades committed after the overflow",
            timeout=_PATIENCE,
        )

    assert late[-1].kind == "overflow"
    assert {event.kind for event in late[:-1]} <= {"trade"}
    assert states and set(states) == {"running"}, states
    # The prompt client missed nothing: exactly the stored trades, in order.
    assert {event.kind for event in on_time} == {"trade"}
    first = on_time[0].data
    stored = await fetch(
        module_database,
        TRADES_AFTER,
        ["AAPL"],
        datetime.fromisoformat(first["timestamp"]),
        first["id"] - 1,
        len(on_time),
    )
    assert [event.data for event in on_time] == [stream_data(row) for row in stored]


def test_a_client_that_never_reads_again_is_cut_and_its_slot_freed(service: Service) -> None:
    def metric(name: str, **labels: str) -> float:
        text = httpx.get(f"{service.base}/metrics", headers={"Accept": "text/plain"}).text
        return metric_value(text, name, labels)

    cut_before = metric("mdp_connections_closed_total", reason="slow_client")
    with _open_stalled(service, ALL_SYMBOLS):
        wait_until(lambda: metric("mdp_streams_open"), lambda n: n == 1, what="stream open")
        # Never read again: the server cuts the connection, which frees the stream's slot.
        wait_until(
            lambda: metric("mdp_streams_open"),
            lambda n: n == 0,
            what="the stalled stream's slot freed",
            timeout=_PATIENCE,
            every=0.2,
        )
    assert metric("mdp_connections_closed_total", reason="slow_client") == cut_before + 1
    cut = [line for line in service.output().splitlines() if "accepted no data" in line]
    assert len(cut) == 1 + int(cut_before), cut
    assert "Traceback" not in service.output()
