"""Export formats: negotiation, compression, and the encoder each format is written by."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import zstandard

from errors import NotAcceptable
from handlers.export_encoders import ArrowEncoder, CsvEncoder
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
]

Emit = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ExportFormat:
    name: str
    media_type: str
    extension: str
    # Text formats may be compressed with Content-Encoding; binary ones carry their own
    # compression (Parquet).
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


class TextEncoder:
    """COPY's text output (one JSON object per line), passed through."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    async def feed(self, chunk: bytes, emit: Emit) -> None:
        self._buffer += chunk
        if len(self._buffer) >= _TEXT_BATCH:
            data = bytes(self._buffer)
            self._buffer.clear()
            await emit(data)

    async def finish(self, emit: Emit) -> None:
        await emit(bytes(self._buffer))
        self._buffer.clear()

    def abort(self) -> None:
        self._buffer.clear()


def _with_price_type(schema: pa.Schema, price_type: str) -> pa.Schema:
    """`schema` with every decimal column as float64 when `price_type` is `float64`: pandas
    reads decimal128 as Python Decimal objects, which its numeric methods leave out."""
    if price_type != "float64":
        return schema
    return pa.schema(
        pa.field(f.name, pa.float64(), f.nullable) if pa.types.is_decimal(f.type) else f
        for f in schema
    )


def make_encoder(fmt: ExportFormat, schema: pa.Schema, price_type: str) -> Encoder:
    """The encoder of `fmt` for rows of `schema` (text formats stay exact whatever
    `price_type` says)."""
    if fmt.name == "ndjson":
        return TextEncoder()
    if fmt.name == "csv":
        return CsvEncoder(schema)
    return ArrowEncoder(_with_price_type(schema, price_type), parquet=fmt.name == "parquet")
