"""uvicorn's httptools protocol with the limits it lacks, before any request reaches the app.

httptools (llhttp) buffers a header of any size and waits for the rest of a request forever:
four connections sending 64 MiB headers took the process from 119 to 428 MiB, and slowloris
connections stayed open indefinitely. h11's `h11_max_incomplete_event_size` bounds the size
only, not the time, and costs every request h11's pure-Python parsing: about 90 µs more server
CPU than httptools, where this subclass costs nothing measurable (`bench/protocols.py`,
bench/README.md). So this subclass adds, per connection:

- a bound on the request line and headers: over `max_url_bytes` of target, `414`; over
  `max_head_bytes` in all, `431`; both close the connection (RFC 9110 §15.5.15, RFC 6585 §5);
- a time for a request's head to arrive, from the connection opening or the first byte of the
  request: past `head_timeout`, `408` (or, with nothing received, just the close);
- a time for a client to accept data: a response whose writes stay paused (the client's
  socket and our buffer full) for `slow_client_seconds` is cut, which frees what its stream
  or export holds (the app sees `http.disconnect`);
- one `send()` per response where uvicorn makes two: what one event-loop turn writes goes
  out together (`_Coalescing`).

Everything else is uvicorn's. `tests/unit/mdp/test_http_protocol.py` fails when an upgrade
renames what is overridden here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = ["Limits", "bounded_protocol", "closed_connections"]

logger = logging.getLogger("mdp.http")

# Connections this process closed for a limit, by reason (read by /metrics at scrape).
closed_connections: dict[str, int] = {"head_too_large": 0, "head_timeout": 0, "slow_client": 0}


@dataclass(frozen=True, slots=True)
class Limits:
    max_url_bytes: int
    max_head_bytes: int
    head_timeout: float
    slow_client_seconds: float


def _refusal(status: int, detail: str) -> bytes:
    # A problem document like every other error, built here: the app never sees this request.
    code = {408: "request_timeout", 414: "uri_too_long", 431: "header_too_large"}[status]
    body = orjson.dumps(
        {
            "type": f"urn:mdp:problem:{code}",
            "title": STATUS_LINE[status][13:-2].decode(),
            "status": status,
            "detail": detail,
            "code": code,
        }
    )
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


# Up to this size a held write and the next are joined into one buffer (a copy cheaper than
# the vectored write's set-up); larger pairs go out as one writev.
_JOIN_BYTES = 64 * 1024


class _Coalescing:
    """The connection's transport, writing what one event-loop turn sends in one `send()`.

    uvicorn writes a response's head and its body with two `transport.write` calls, and uvloop
    sends each at once: two system calls per response, the largest single cost of a small
    answer (a third of `/metrics`'s server CPU under wrk). A write is held until the next one
    or the end of the turn, whichever comes first; order and flow control are unchanged, as
    the bytes reach the real transport within the same turn.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            if len(held) + len(data) <= _JOIN_BYTES:
                self._transport.write(held + data)
            else:
                # An export's chunk: uvloop sends both in one writev, without a copy.
                self._transport.writelines((held, data))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            self._transport.write(held)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # get_extra_info, pause_reading, resume_reading, set_protocol: the transport's own.
        return getattr(self._transport, name)


class _BoundedProtocol(HttpToolsProtocol):
    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes of the head being read, and whether one is being read (between requests, or
        # before the first, anything received is the start of a head).
        self._head_bytes = 0
        self._in_head = True
        self.url = b""
        # When the head being read began (None: none is). One timer per connection, moved
        # only when it fires: arming and cancelling one per request cost 5 µs of its 30.
        self._head_started: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _Coalescing(transport, self.loop)))
        # A connection that never sends a byte is as bounded as one that sends slowly.
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _start_head(self) -> None:
        self._head_started = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(
                self._head_started + self.limits.head_timeout, self._head_due
            )

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_started is None:
                self._start_head()
        super().data_received(data)
        # Still inside a head after this chunk: what llhttp buffered is bounded by one
        # chunk beyond the limit, then the connection goes.
        if self._in_head and (
            self._head_bytes > self.limits.max_head_bytes
            or len(self.url) > self.limits.max_url_bytes
        ):
            if self.parser is None or self.transport.is_closing():
                return
            if len(self.url) > self.limits.max_url_bytes:
                self._refuse(414, f"The request target exceeds {self.limits.max_url_bytes} bytes.")
            else:
                self._refuse(
                    431,
                    f"The request line and headers exceed {self.limits.max_head_bytes} bytes.",
                )

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._head_started = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever comes next on this connection starts the next request's head.
        self._in_head = True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.slow_client_seconds, self._slow_client
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _refuse(self, status: int, detail: str) -> None:
        closed_connections["head_too_large"] += 1
        logger.warning("%s from %s: %d, connection closed", detail, self._peer(), status)
        self.transport.write(_refusal(status, detail))
        self.transport.close()

    def _head_due(self) -> None:
        self._head_timer = None
        started = self._head_started
        if started is None or self.transport.is_closing():
            return  # no head pending: the next one arms the timer again
        due = started + self.limits.head_timeout
        if self.loop.time() < due:
            # A later head than the one this timer was armed for.
            self._head_timer = self.loop.call_at(due, self._head_due)
            return
        closed_connections["head_timeout"] += 1
        if self._head_bytes:
            detail = f"The request head did not arrive within {self.limits.head_timeout:g} s."
            logger.warning("%s from %s: 408, connection closed", detail, self._peer())
            self.transport.write(_refusal(408, detail))
        self.transport.close()

    def _slow_client(self) -> None:
        self._write_timer = None
        if self.transport.is_closing():
            return
        closed_connections["slow_client"] += 1
        path = self.scope.get("path", "?") if self.scope else "?"
        logger.warning(
            "client %s accepted no data for %g s on %s: connection closed",
            self._peer(),
            self.limits.slow_client_seconds,
            path,
        )
        # abort(): close() would wait to flush what the client does not read.
        self.transport.abort()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "?"


def bounded_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these limits."""
    return type("BoundedHttpToolsProtocol", (_BoundedProtocol,), {"limits": limits})
