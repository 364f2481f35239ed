"""The CSV encoder: PostgreSQL's text forms of COPY rewritten as the export's CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys

import pyarrow as pa
import pytest

from handlers import export_encoders
from handlers.export_encoders import CsvEncoder
from handlers.exports import FILLED_CANDLES_SCHEMA, TRADES_SCHEMA


def _encode(schema: pa.Schema, copy_csv: bytes, *, chunk: int | None = None) -> bytes:
    """`copy_csv` through the encoder, handed over whole or in chunks of `chunk` bytes."""
    out: list[bytes] = []

    async def emit(data: bytes) -> None:
        out.append(data)

    async def run() -> None:
        encoder = CsvEncoder(schema)
        step = chunk or max(len(copy_csv), 1)
        for start in range(0, len(copy_csv), step):
            await encoder.feed(copy_csv[start : start + step], emit)
        await encoder.finish(emit)

    asyncio.run(run())
    return b"".join(out)


def test_values_are_written_as_the_json_operations_write_them():
    # numeric(38, 18) with all its decimals, a timestamp without trailing fractional zeros.
    copy = (
        b"7,AAPL,187.420000000000000000,100.000000000000000000,2026-01-02 03:04:05.5+00,,\n"
        b"8,AAPL,0.001230000000000000,1.000000000000000001,2026-01-02 03:04:06+00,x-9,buy\n"
    )
    assert _encode(TRADES_SCHEMA, copy) == (
        b"id,symbol,price,volume,timestamp,venue_trade_id,side\r\n"
        b"7,AAPL,187.42,100,2026-01-02T03:04:05.500000Z,,\r\n"
        b"8,AAPL,0.00123,1.000000000000000001,2026-01-02T03:04:06.000000Z,x-9,buy\r\n"
    )


def test_a_string_that_needs_quotes_is_quoted_and_empty_strings_stay_apart_from_null():
    copy = (
        b'1,AAPL,1.000000000000000000,1.000000000000000000,2026-01-02 03:04:05+00,"a,""b""",\n'
        b'2,AAPL,1.000000000000000000,1.000000000000000000,2026-01-02 03:04:05+00,"",sell\n'
    )
    rows = list(csv.reader(io.StringIO(_encode(TRADES_SCHEMA, copy).decode())))
    assert [row[5:] for row in rows[1:]] == [['a,"b"', ""], ["", "sell"]]
    assert b'"",' in _encode(TRADES_SCHEMA, copy)  # not an empty field: that would be NULL


@pytest.mark.parametrize("needing", ['a"b', "a,b", "a\rb", "a\nb", ""])
def test_each_byte_rfc_4180_quotes_gets_its_block_quoted(needing: str):
    quoted = '"' + needing.replace('"', '""') + '"'
    copy = (
        "1,AAPL,1.000000000000000000,1.000000000000000000,2026-01-02 03:04:05+00,plain,\n"
        f"2,AAPL,1.000000000000000000,1.000000000000000000,2026-01-02 03:04:05+00,{quoted},\n"
    ).encode()
    out = _encode(TRADES_SCHEMA, copy).decode()
    assert '"plain"' in out
    assert [row[5] for row in csv.reader(io.StringIO(out, newline=""))][1:] == ["plain", needing]


def test_a_block_of_plain_strings_is_not_quoted():
    copy = b"1,AAPL,1.000000000000000000,1.000000000000000000,2026-01-02 03:04:05+00,x-1,buy\n"
    assert b'"' not in _encode(TRADES_SCHEMA, copy)


def test_filled_candles_keep_whole_numbers_and_nulls():
    # An empty bucket: null prices, volume 0 as a whole number (no decimal point to trim at).
    copy = b"AAPL,2026-01-02 03:04:00+00,,,,,0,,0,t,0,t\n"
    assert _encode(FILLED_CANDLES_SCHEMA, copy).split(b"\r\n")[1] == (
        b"AAPL,2026-01-02T03:04:00.000000Z,,,,,0,,0,true,0,true"
    )


def test_an_export_without_rows_is_its_header():
    header = b"id,symbol,price,volume,timestamp,venue_trade_id,side\r\n"
    assert _encode(TRADES_SCHEMA, b"") == header


def test_rows_cut_across_chunks_and_blocks_come_out_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
):
    copy = b"".join(
        b"%d,AAPL,1.%d00000000000000000,2.000000000000000000,2026-01-02 03:04:%02d+00,,\n"
        % (n, n, n)
        for n in range(40)
    )
    whole = _encode(TRADES_SCHEMA, copy)
    # Blocks of a few rows, fed in chunks that end mid-row.
    monkeypatch.setattr(export_encoders, "_BLOCK", 200)
    assert _encode(TRADES_SCHEMA, copy, chunk=37) == whole
    assert len(whole.split(b"\r\n")) == 42  # header, 40 rows, the final line end


# A fresh interpreter: whatever this test process imported already does not count.
_EVERY_ENCODER = """
import asyncio, sys
from handlers.export_encoders import ArrowEncoder, CsvEncoder
from handlers.exports import TRADES_SCHEMA

COPY = b"7,AAPL,187.420000000000000000,100.000000000000000000,2026-01-02 03:04:05.5+00,,\\n"
# The same row in binary COPY: header; field count; id; symbol; 187.42 and 100 as numeric
# (ndigits, weight, sign, dscale, base-10,000 digits); microseconds since 2000; two NULLs.
BINARY = (
    b"PGCOPY\\n\\xff\\r\\n\\x00" + bytes(8)
    + b"\\x00\\x07" + b"\\x00\\x00\\x00\\x08" + (7).to_bytes(8, "big")
    + b"\\x00\\x00\\x00\\x04AAPL"
    + b"\\x00\\x00\\x00\\x0c\\x00\\x02\\x00\\x00\\x00\\x00\\x00\\x12\\x00\\xbb\\x10\\x68"
    + b"\\x00\\x00\\x00\\x0a\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x12\\x00\\x64"
    + b"\\x00\\x00\\x00\\x08" + (820_638_245_500_000).to_bytes(8, "big")
    + b"\\xff\\xff\\xff\\xff" * 2
    + b"\\xff\\xff"
)

async def emit(data):
    pass

async def run(encoder, copy):
    await encoder.feed(copy, emit)
    await encoder.finish(emit)

for encoder, copy in (
    (CsvEncoder(TRADES_SCHEMA), COPY),
    (ArrowEncoder(TRADES_SCHEMA, parquet=True), BINARY),
    (ArrowEncoder(TRADES_SCHEMA, parquet=False), BINARY),
):
    asyncio.run(run(encoder, copy))
print("pandas" in sys.modules)
"""


def test_exporting_never_imports_pandas_into_the_server():
    # pyarrow imports pandas, where it is installed, to convert a Python value: 150 MiB of the
    # server's memory for good, and seconds on its first export.
    ran = subprocess.run(
        [sys.executable, "-c", _EVERY_ENCODER], capture_output=True, text=True, check=True
    )
    assert ran.stdout.strip() == "False", ran.stderr
