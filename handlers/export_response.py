"""The streaming response of bulk exports: flat memory, cancelled by a vanished client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from handlers.export_formats import Encoder, ExportFormat, make_compressor
from persistence.connections import describe_error
from web.request import disconnected

__all__ = ["ExportResponse", "Produce"]

logger = logging.getLogger(__name__)

# Writes every row through `sink`, chunk by chunk (PostgreSQL's COPY).
Produce = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]


class ExportTruncated(Exception):
    """Raised after the first byte: the server closes the connection without ending the body."""


class ExportResponse(Response):
    """Streams `produce`'s rows through `encoder` (and a Content-Encoding) to the client.

    The connection behind `produce` is handed over by the handler and given back by
    `release(complete=…)` when the stream ends, however it ends. The last byte of the file
    is held back until the export is complete, so a failed export never looks whole: CSV and
    NDJSON lack their final newline, an Arrow stream its last message's end, Parquet its footer; the
    body is then cut off (no final chunk) and the failure logged.
    """

    def __init__(
        self,
        *,
        fmt: ExportFormat,
        encoder: Encoder,
        produce: Produce,
        release: Callable[..., Awaitable[object]],
        ended: asyncio.Event,
        coding: str | None,
        filename: str,
        rows: int | None,
        what: str,
    ) -> None:
        self.status_code = 200
        self.media_type = fmt.content_type
        self.background = None
        headers = {
            "Content-Type": fmt.content_type,
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Vary": "Accept, Accept-Encoding",
            # Too big to keep, and fetched with a key: no cache stores it (mdp.caching).
            "Cache-Control": "no-store",
        }
        if rows is not None:
            headers["X-Row-Count"] = str(rows)
        if coding is not None:
            headers["Content-Encoding"] = coding
        self.init_headers(headers)
        self._encoder = encoder
        self._produce = produce
        self._release = release
        self._ended = ended
        self._compressor = make_compressor(coding)
        self._what = what
        self._held = b""
        self._sent = 0
        self._complete = False
        self._released = False
        self._send: Send | None = None

    async def _release_once(self) -> None:
        if not self._released:
            self._released = True
            await self._release(complete=self._complete)

    async def _body(self, data: bytes, *, more: bool = True) -> None:
        assert self._send is not None
        await self._send({"type": "http.response.body", "body": data, "more_body": more})
        self._sent += len(data)

    async def _emit(self, data: bytes) -> None:
        if not data:
            return
        # One copy: the byte held back last time, and all of this but its last byte.
        out, self._held = b"".join((self._held, memoryview(data)[:-1])), data[-1:]
        if self._compressor is not None:
            out = self._compressor.compress(out)
        if out:
            await self._body(out)

    async def _sink(self, chunk: bytes) -> None:
        await self._encoder.feed(chunk, self._emit)

    async def _stream(self, send: Send) -> None:
        self._send = send
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            await self._produce(self._sink)
            await self._encoder.finish(self._emit)
        except asyncio.CancelledError:
            self._encoder.abort()
            raise
        except Exception as exc:
            self._encoder.abort()
            logger.error(
                "export %s failed after %d bytes (%s): the response ends truncated",
                self._what,
                self._sent,
                describe_error(exc),
            )
            raise ExportTruncated(self._what) from exc
        tail = self._held
        if self._compressor is not None:
            tail = self._compressor.compress(tail) + self._compressor.flush()
        self._complete = True
        # Give back the connection and the key's share before the last byte goes out: a
        # client that starts its next export as soon as this one is whole must find them free.
        await self._release_once()
        await self._body(tail, more=False)
        logger.info("export %s complete: %d bytes", self._what, self._sent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            # What GET would answer (its checks ran, X-Row-Count is counted), not the file.
            self._complete = True
            await self._release_once()
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b""})
            return
        stream = asyncio.ensure_future(self._stream(send))
        watch = asyncio.ensure_future(disconnected(receive))
        revoked = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait((stream, watch, revoked), return_when=asyncio.FIRST_COMPLETED)
            if not stream.done():
                logger.info(
                    "export %s: %s after %d bytes; query cancelled, response cut off",
                    self._what,
                    "its API key was revoked" if revoked.done() else "client went away",
                    self._sent,
                )
        finally:
            revoked.cancel()
            watch.cancel()
            stream.cancel()
            # The COPY must have stopped before its connection goes back to the pool.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((stream,))
            await self._release_once()
        if not stream.cancelled():
            stream.result()
