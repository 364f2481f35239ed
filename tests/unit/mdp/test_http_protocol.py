"""The limits mdp.http_protocol adds to uvicorn's httptools protocol, on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mdp import http_protocol
from mdp.http_protocol import Limits, bounded_protocol
from tests.support.polling import wait_until
from tests.support.processes import free_port

_LIMITS = Limits(max_url_bytes=512, max_head_bytes=2048, head_timeout=0.5, slow_client_seconds=0.5)
_CHUNK = b"x" * 65536
# What the app saw: requests served, and streams that learnt their client went away.
_seen: dict[str, int] = {"requests": 0, "disconnects": 0}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    _seen["requests"] += 1
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] != "/flood":
        await send({"type": "http.response.body", "body": b"ok"})
        return

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        _seen["disconnects"] += 1

    watcher = asyncio.ensure_future(watch())
    # Endless data: only a client that reads keeps this going.
    while not watcher.done():
        await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=bounded_protocol(_LIMITS), log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="server started")
    yield port
    server.should_exit = True
    thread.join(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _answer(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_small_request_is_served(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _answer(sock).startswith(b"HTTP/1.1 200")


def test_oversized_headers_get_431_and_the_connection_closes(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"code":"header_too_large"' in answer


def test_a_huge_header_sent_without_end_is_cut_early(server: int) -> None:
    """The 64 MiB header of the issue: refused after the limit, not buffered to the end."""
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: ")
        with pytest.raises(OSError):
            for _ in range(1024):  # 64 MiB, if the server kept reading
                sock.sendall(_CHUNK)


def test_an_overlong_request_target_gets_414(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /" + b"a" * 1024)
        assert _answer(sock).startswith(b"HTTP/1.1 414")


def test_a_slow_head_gets_408_and_the_connection_closes(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    with _connect(server) as sock:
        assert _answer(sock) == b""


def test_pipelined_requests_are_not_counted_as_one_head(server: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(request * 5 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _answer(sock).count(b"HTTP/1.1 200") == 6


def test_a_client_that_stops_reading_is_cut_and_the_app_told(server: int) -> None:
    before = dict(_seen), dict(http_protocol.closed_connections)
    with _connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: _seen["disconnects"], lambda n: n > before[0]["disconnects"], what="cut")
    assert http_protocol.closed_connections["slow_client"] == before[1]["slow_client"] + 1


def test_the_protocol_still_overrides_what_uvicorn_calls() -> None:
    """Fails when a uvicorn upgrade renames a hook this module relies on."""
    for name in (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "on_message_complete",
        "pause_writing",
        "resume_writing",
    ):
        assert callable(getattr(HttpToolsProtocol, name)), name


def test_a_stalled_second_request_on_a_kept_alive_connection_gets_408(server: int) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next head, never finished
        rest = _answer(sock)
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 408")


class _RecordingTransport(asyncio.Transport):
    """What reaches the socket: each write (or writev) as one call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append([bytes(data)])

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append([bytes(data) for data in list_of_data])

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_a_responses_head_and_body_leave_in_one_send() -> None:
    transport = _RecordingTransport()
    coalescing = http_protocol._Coalescing(transport, asyncio.get_running_loop())
    coalescing.write(b"HTTP/1.1 200 OK\r\n\r\n")
    coalescing.write(b"ok")
    assert transport.calls == [[b"HTTP/1.1 200 OK\r\n\r\nok"]]


async def test_a_lone_write_leaves_by_the_end_of_the_loop_turn() -> None:
    transport = _RecordingTransport()
    coalescing = http_protocol._Coalescing(transport, asyncio.get_running_loop())
    coalescing.write(b"chunk")
    assert transport.calls == []
    await asyncio.sleep(0)  # one turn of the loop, not a wait for something
    assert transport.calls == [[b"chunk"]]


async def test_large_writes_leave_together_without_being_joined() -> None:
    transport = _RecordingTransport()
    coalescing = http_protocol._Coalescing(transport, asyncio.get_running_loop())
    coalescing.write(b"head")
    coalescing.write(_CHUNK)
    assert transport.calls == [[b"head", _CHUNK]]


async def test_closing_sends_what_is_held_first() -> None:
    transport = _RecordingTransport()
    coalescing = http_protocol._Coalescing(transport, asyncio.get_running_loop())
    coalescing.write(b"last words")
    coalescing.close()
    assert transport.calls == [[b"last words"]] and transport.closed
    await asyncio.sleep(0)
    assert transport.calls == [[b"last words"]]
