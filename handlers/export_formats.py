"""Export formats: negotiation, and encoders from COPY output to CSV, NDJSON, Parquet, Arrow."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import zstandard

from errors import NotAcceptable
from web.negotiation import media_range

__all__ = [
    "FORMATS",
    "Compressor",
    "Encoder",
    "ExportFormat",
    "choose_coding",
    "choose_format",
    "make_compressor",
    "make_encoder",
    "with_price_type",
]

Emit = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ExportFormat:
    name: str
    media_type: str
    extension: str
    # Text formats come straight from COPY and may be compressed with Content-Encoding;
    # binary ones are parsed into Arrow and carry their own compression (Parquet).
    text: bool

    @property
    def content_type(self) -> str:
        if self.name == "csv":
            return "text/csv; charset=utf-8; header=present"
        return self.media_type


FORMATS = {
    fmt.name: fmt
    for fmt in (
        ExportFormat("csv", "text/csv", "csv", True),
        ExportFormat("ndjson", "application/x-ndjson", "ndjson", True),
        ExportFormat("parquet", "application/vnd.apache.parquet", "parquet", False),
        ExportFormat("arrow", "application/vnd.apache.arrow.stream", "arrows", False),
    )
}
_BY_MEDIA_TYPE = {fmt.media_type: fmt for fmt in FORMATS.values()}


def _weighted(header: str) -> list[tuple[str, float]]:
    """`a/b;q=0.5, c/d` as [(value, q)], highest q first, in header order among equals."""
    items = [media_range(part) for part in header.split(",")]
    return sorted((item for item in items if item[0]), key=lambda item: -item[1])


def choose_format(requested: str | None, accept: str | None) -> ExportFormat:
    """`format` wins; otherwise the best supported type in `Accept`; CSV when nothing says."""
    if requested is not None:
        return FORMATS[requested]
    if accept is None or not accept.strip():
        return FORMATS["csv"]
    for media_type, q in _weighted(accept):
        if q <= 0:
            continue
        if media_type in _BY_MEDIA_TYPE:
            return _BY_MEDIA_TYPE[media_type]
        if media_type in {"*/*", "text/*"}:
            return FORMATS["csv"]
    raise NotAcceptable(
        f"None of the media types in Accept ({accept}) can be produced; use "
        + ", ".join(FORMATS[name].media_type for name in FORMATS)
        + ", or the format parameter."
    )


def choose_coding(fmt: ExportFormat, accept_encoding: str | None) -> str | None:
    """zstd or gzip for text formats when the client accepts it (zstd first), else None."""
    if not fmt.text or accept_encoding is None:
        return None
    accepted = {coding for coding, q in _weighted(accept_encoding) if q > 0}
    for coding in ("zstd", "gzip"):
        if coding in accepted:
            return coding
    return None


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def make_compressor(coding: str | None) -> Compressor | None:
    if coding == "gzip":
        return zlib.compressobj(6, zlib.DEFLATED, 31)
    if coding == "zstd":
        compressor: Compressor = zstandard.ZstdCompressor(level=3).compressobj()
        return compressor
    return None


class Encoder(Protocol):
    """Turns COPY output into the file's bytes, handed on through `emit` as they are ready."""

    async def feed(self, chunk: bytes, emit: Emit) -> None: ...
    async def finish(self, emit: Emit) -> None: ...
    def abort(self) -> None: ...


# Sends are batched: one per ~256 KiB of text rather than per network read of COPY.
_TEXT_BATCH = 256 * 1024
# Arrow converts blocks of ~4 MiB of COPY output (tens of thousands of rows) at a time.
_ARROW_BLOCK = 4 * 1024 * 1024


class TextEncoder:
    """COPY's CSV or text output, passed through; CSV lines end in CRLF as RFC 4180 asks.

    Safe as a byte replacement: no exported value can contain a line break.
    """

    def __init__(self, *, crlf: bool) -> None:
        self._crlf = crlf
        self._buffer = bytearray()

    async def feed(self, chunk: bytes, emit: Emit) -> None:
        self._buffer += chunk.replace(b"\n", b"\r\n") if self._crlf else chunk
        if len(self._buffer) >= _TEXT_BATCH:
            data = bytes(self._buffer)
            self._buffer.clear()
            await emit(data)

    async def finish(self, emit: Emit) -> None:
        await emit(bytes(self._buffer))
        self._buffer.clear()

    def abort(self) -> None:
        self._buffer.clear()


class _Collector:
    """A write-only file for pyarrow's writers: collects what they write until taken."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data: Any) -> int:
        block = bytes(data)
        self._parts.append(block)
        self._position += len(block)
        return len(block)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class ArrowEncoder:
    """COPY's CSV parsed by pyarrow into record batches, written as Parquet or Arrow IPC.

    Parsing runs in a worker thread (pyarrow releases the GIL) while COPY delivers the next
    block; at most one block is in flight, so memory stays bounded by two blocks.
    """

    def __init__(self, schema: pa.Schema, *, parquet: bool) -> None:
        self._schema = schema
        self._out = _Collector()
        self._writer: Any = (
            pq.ParquetWriter(self._out, schema, compression="zstd")
            if parquet
            else pa_ipc.new_stream(self._out, schema)
        )
        self._parquet = parquet
        self._buffer = bytearray()
        self._pending: asyncio.Task[None] | None = None
        self._read = pa_csv.ReadOptions(column_names=schema.names)
        self._convert = pa_csv.ConvertOptions(
            column_types={field.name: field.type for field in schema},
            # PostgreSQL's text form of booleans.
            true_values=["t"],
            false_values=["f"],
            # COPY's CSV writes NULL unquoted and empty, an empty string as "".
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )

    def _encode(self, block: bytes) -> bytes:
        table = pa_csv.read_csv(
            pa.py_buffer(block), read_options=self._read, convert_options=self._convert
        )
        if self._parquet:
            self._writer.write_table(table, row_group_size=table.num_rows)
        else:
            for batch in table.to_batches():
                self._writer.write_batch(batch)
        return self._out.take()

    async def _encode_and_emit(self, block: bytes, emit: Emit) -> None:
        await emit(await asyncio.to_thread(self._encode, block))

    async def _settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def feed(self, chunk: bytes, emit: Emit) -> None:
        self._buffer += chunk
        if len(self._buffer) < _ARROW_BLOCK:
            return
        cut = self._buffer.rfind(b"\n") + 1
        block = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        await self._settle()
        self._pending = asyncio.ensure_future(self._encode_and_emit(block, emit))

    async def finish(self, emit: Emit) -> None:
        await self._settle()
        if self._buffer:
            await emit(await asyncio.to_thread(self._encode, bytes(self._buffer)))
            self._buffer.clear()
        # Only a complete export gets the footer (Parquet) or end-of-stream marker (Arrow).
        self._writer.close()
        await emit(self._out.take())

    def abort(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._buffer.clear()


def with_price_type(schema: pa.Schema, price_type: str) -> pa.Schema:
    """`schema` with every decimal column as float64 when `price_type` is `float64`: pandas
    reads decimal128 as Python Decimal objects, which its numeric methods leave out."""
    if price_type != "float64":
        return schema
    return pa.schema(
        pa.field(f.name, pa.float64(), f.nullable) if pa.types.is_decimal(f.type) else f
        for f in schema
    )


def make_encoder(fmt: ExportFormat, schema: pa.Schema) -> Encoder:
    if fmt.text:
        return TextEncoder(crlf=fmt.name == "csv")
    return ArrowEncoder(schema, parquet=fmt.name == "parquet")
