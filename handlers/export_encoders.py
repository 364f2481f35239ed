"""Encoders of COPY's output, a block at a time: binary COPY decoded into Parquet or Arrow IPC
(PostgreSQL prints nothing), or CSV parsed by pyarrow and rewritten as the export's CSV
(PostgreSQL only prints its cheapest text forms)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq

from persistence.binary_copy import BinaryCopyDecoder, BinaryCopyError

__all__ = ["ArrowEncoder", "CsvEncoder"]

Emit = Callable[[bytes], Awaitable[None]]

# Blocks of ~512 KiB of COPY output (thousands of rows) are converted at a time: as fast per
# row as 4 MiB blocks, and what an export holds (and leaves the allocator with) is an eighth.
_BLOCK = 512 * 1024
# Binary COPY is decoded by numpy, a few hundred array operations per block whatever its size,
# each handing the GIL to the event loop (reading COPY) and taking it back: 2 MiB blocks
# (~28,000 rows) export a fifth more rows/s than 1 MiB ones, about as many as 4 MiB ones. The
# peak RSS of a 1M-trade export over idle: Arrow +12, +24 and +38 MiB with 1, 2 and 4 MiB
# blocks, Parquet (whose writer holds more) +51, +46 and +76 MiB.
_BINARY_BLOCK = 2 * 1024 * 1024
# The bytes for which RFC 4180 CSV quotes a string.
_QUOTED = (b'"', b",", b"\r", b"\n")
# pyarrow's default allocator (mimalloc) keeps for good, per thread, what an export's blocks
# took: 80 MiB more resident after one 500,000-row CSV export, against 25 MiB with the system
# allocator and without pyarrow's own thread pool (`use_threads=False` below: the encoding
# already runs beside the event loop, and on two cores more threads only take PostgreSQL's).
pa.set_memory_pool(pa.system_memory_pool())

# A slice starting past any string's end: replacing it appends. Nothing here hands pyarrow a
# Python value to convert: that imports pandas where it is installed (150 MiB of a server's
# memory, for good, and seconds on its first export).
_END = 2**31 - 1


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


class _BlockEncoder:
    """COPY's output cut into blocks, each encoded by `_encode` up to its last complete row.

    Encoding runs in a worker thread (pyarrow and numpy release the GIL) while COPY delivers
    the next block; at most one block is in flight, so memory stays bounded by two blocks.
    """

    block = _BLOCK

    def __init__(self) -> None:
        # COPY's chunks since the last block, joined once a block's worth has come: every
        # byte is copied once, and pyarrow reads the block where it lies.
        self._chunks: list[bytes] = []
        self._size = 0
        # The incomplete row a block ended with: the start of the next block.
        self._rest = b""
        self._pending: asyncio.Task[None] | None = None

    def _encode(self, block: bytes, *, last: bool) -> tuple[bytes, int]:
        """The file's bytes for the complete rows at the start of `block` (all of them when
        it is the `last`), and how many of its bytes they took."""
        raise NotImplementedError

    def _close(self) -> bytes:
        """The file's last bytes, once every row is encoded."""
        raise NotImplementedError

    def _encode_block(self, block: bytes, *, last: bool) -> bytes:
        data, used = self._encode(block, last=last)
        if last and used < len(block):
            raise ValueError(f"COPY ended inside a row ({len(block) - used} bytes left over)")
        self._rest = block[used:]
        return data

    async def _encode_and_emit(self, block: bytes, emit: Emit, *, last: bool = False) -> None:
        await emit(await asyncio.to_thread(self._encode_block, block, last=last))

    async def _settle(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    def _take(self) -> bytes:
        data = b"".join((self._rest, *self._chunks))
        self._chunks.clear()
        self._size = 0
        return data

    async def feed(self, chunk: bytes, emit: Emit) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size < self.block:
            return
        # The previous block's encoding says where this one starts.
        await self._settle()
        block = self._take()
        self._pending = asyncio.ensure_future(self._encode_and_emit(block, emit))

    async def finish(self, emit: Emit) -> None:
        await self._settle()
        block = self._take()
        if block:
            await self._encode_and_emit(block, emit, last=True)
        await emit(self._close())

    def abort(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._chunks.clear()


class ArrowEncoder(_BlockEncoder):
    """Binary COPY's rows as record batches of `schema`, written as Parquet or Arrow IPC."""

    block = _BINARY_BLOCK

    def __init__(self, schema: pa.Schema, *, parquet: bool) -> None:
        super().__init__()
        self._decoder = BinaryCopyDecoder(schema)
        self._out = _Collector()
        self._writer: Any = (
            pq.ParquetWriter(self._out, schema, compression="zstd")
            if parquet
            else pa_ipc.new_stream(self._out, schema)
        )
        self._parquet = parquet

    def _encode(self, block: bytes, *, last: bool) -> tuple[bytes, int]:
        batches, used = self._decoder.decode(block)
        if not used and len(block) > 4 * self.block:
            # No row is that long: these are not rows of the schema's columns.
            raise BinaryCopyError(f"no complete row of {self._decoder.columns} in 4 blocks")
        for batch in batches:
            if self._parquet:
                self._writer.write_batch(batch, row_group_size=batch.num_rows)
            else:
                self._writer.write_batch(batch)
        return self._out.take(), used

    def _close(self) -> bytes:
        # Only a complete export gets the footer (Parquet) or end-of-stream marker (Arrow).
        self._writer.close()
        return self._out.take()


def _needs_quotes(strings: pa.StringArray) -> bool:
    """Whether a string of `strings` holds a byte RFC 4180 quotes, or is empty (unquoted, it
    would read as NULL)."""
    if strings.null_count == len(strings):
        return False
    if pc.min(pc.binary_length(strings)).as_py() == 0:
        return True
    # The bytes of every string at once: a search per byte, not a regular expression per
    # string (a tenth of a CSV export's CPU).
    data = strings.buffers()[2]
    text = data.to_pybytes() if data is not None else b""
    return any(byte in text for byte in _QUOTED)


class CsvEncoder(_BlockEncoder):
    """COPY's CSV of PostgreSQL's own text forms rewritten as the JSON operations write values:
    decimals in their shortest exact form, timestamps RFC 3339 UTC with microseconds, booleans
    `true`/`false`; a header row, and CRLF line ends as RFC 4180 asks.

    Values are only quoted where a block holds a string that needs it (then every string of
    that block is quoted, which RFC 4180 allows).
    """

    def __init__(self, schema: pa.Schema) -> None:
        super().__init__()
        kept = (pa.timestamp("us", tz="UTC"), pa.bool_())
        self._read = pa_csv.ReadOptions(column_names=schema.names, use_threads=False)
        self._convert = pa_csv.ConvertOptions(
            column_types={
                field.name: field.type if field.type in kept else pa.string() for field in schema
            },
            # PostgreSQL's text form of booleans.
            true_values=["t"],
            false_values=["f"],
            # COPY's CSV writes NULL unquoted and empty, an empty string as "".
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        self._decimals = [f.name for f in schema if pa.types.is_decimal(f.type)]
        self._timestamps = [f.name for f in schema if pa.types.is_timestamp(f.type)]
        self._booleans = [f.name for f in schema if pa.types.is_boolean(f.type)]
        self._strings = [f.name for f in schema if pa.types.is_string(f.type)]
        self._header = ",".join(schema.names).encode() + b"\r\n"

    def _rewrite(self, table: pa.Table) -> pa.Table:
        columns = {}
        for name in self._decimals:
            # numeric(38, 18) prints all 18 decimals: the zeros after the point go, and the
            # point when nothing is left after it (a whole number without one stays whole).
            text = table[name]
            trimmed = pc.ascii_rtrim(pc.ascii_rtrim(text, characters="0"), characters=".")
            columns[name] = pc.if_else(pc.match_substring(text, "."), trimmed, text)
        for name in self._timestamps:
            # Arrow prints a microsecond timestamp as `2026-01-02 03:04:05.123456`; without its
            # zone (UTC all the same), several times faster.
            text = pc.cast(pc.cast(table[name], pa.timestamp("us")), pa.string())
            text = pc.replace_substring(text, " ", "T", max_replacements=1)
            columns[name] = pc.binary_replace_slice(text, start=_END, stop=_END, replacement="Z")
        for name in self._booleans:
            columns[name] = pc.cast(table[name], pa.string())
        for name, column in columns.items():
            table = table.set_column(table.schema.get_field_index(name), name, column)
        return table

    def _quoting(self, table: pa.Table) -> str:
        for name in self._strings:
            if any(_needs_quotes(chunk) for chunk in table[name].chunks):
                return "needed"
        return "none"

    def _encode(self, block: bytes, *, last: bool) -> tuple[bytes, int]:
        cut = len(block) if last else block.rfind(b"\n") + 1
        if not cut:
            return b"", 0
        parsed = pa_csv.read_csv(
            pa.py_buffer(block).slice(0, cut),
            read_options=self._read,
            convert_options=self._convert,
        )
        table = self._rewrite(parsed)
        out = pa.BufferOutputStream()
        options = pa_csv.WriteOptions(
            include_header=False, quoting_style=self._quoting(table), eol="\r\n"
        )
        pa_csv.write_csv(table, out, options)
        data: bytes = out.getvalue().to_pybytes()
        if self._header:
            data, self._header = self._header + data, b""
        return data, cut

    def _close(self) -> bytes:
        # An export without rows is its header alone.
        header, self._header = self._header, b""
        return header
