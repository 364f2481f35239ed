"""The binary COPY decoder against PostgreSQL's own binary COPY, checked by asyncpg's reading
of the same rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pytest
from sqlalchemy.engine import URL

from handlers.exports import TRADES_SCHEMA
from persistence.binary_copy import BinaryCopyDecoder, BinaryCopyError
from tests.support import dsn

# Every kind of column an export decodes; ints of each width, NULLs in each.
SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("small", pa.int64()),
        ("count", pa.int32()),
        ("name", pa.string()),
        ("price", pa.decimal128(38, 18)),
        ("at", pa.timestamp("us", tz="UTC")),
        ("flag", pa.bool_()),
    ]
)
COLUMNS = (
    "id::int8, small::int4, count::int4, name::text, price::numeric(38, 18), "
    "at::timestamptz, flag::bool"
)
EDGES = """
    (9223372036854775807, 2147483647, -2147483648, 'AAPL', 187.42, '2026-01-02 03:04:05.5', true),
    (-9223372036854775808, -1, 0, '', 0.000000000000000001, '1999-12-31 23:59:59.999999+00', false),
    (0, 0, 1, 'é 漢字 😀', 99999999999999999999.999999999999999999, '1970-01-01 00:00:00+00', NULL),
    (1, NULL, NULL, NULL, NULL, NULL, NULL),
    (2, 2, 2, 'x', 1.000000000000000001, '0001-01-01 00:00:00+00', true),
    (3, 3, 3, 'y', -12345678901234567.89, '9999-12-31 23:59:59.999999+00', false),
    (4, 4, 4, 'z', 50000, '2000-01-01 00:00:00+00', true),
    (5, 5, 5, 'w', -0.5, '2000-01-01 00:00:00.000001+00', true),
    (6, 6, 6, 'v', 0, '1900-06-15 12:00:00+00', false),
    (7, 7, 7, 'u', 12345678.12345678, '2038-01-19 03:14:08+00', true),
    (8, 8, 8, 't', 9999999999999999.9999, '2026-12-07 20:00:00+00', true)
"""


@pytest.fixture
async def pg(database_url: URL) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn(database_url), server_settings={"TimeZone": "UTC"})
    try:
        yield conn
    finally:
        await conn.close()


async def _binary(conn: asyncpg.Connection, query: str, *args: Any) -> bytes:
    chunks: list[bytes] = []

    async def sink(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(query, *args, output=sink, format="binary")
    return b"".join(chunks)


def _decode(schema: pa.Schema, data: bytes, *, chunk: int | None = None) -> pa.Table:
    """`data` through a decoder as an encoder hands it over: in pieces of `chunk` bytes,
    each decoded after what the last one left."""
    decoder = BinaryCopyDecoder(schema)
    batches: list[pa.RecordBatch] = []
    rest = b""
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        block = rest + data[start : start + step]
        found, used = decoder.decode(block)
        batches += found
        rest = block[used:]
    assert rest == b""
    return pa.Table.from_batches(batches, schema=schema)


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(record) for record in records]


def _same(decoded: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected, strict=True):
        # Decimals compare by value (decimal128 keeps all 18 decimals), timestamps as instants.
        assert got == want


async def test_every_column_type_decodes_as_asyncpg_reads_it(pg: asyncpg.Connection):
    query = f"SELECT {COLUMNS} FROM (VALUES {EDGES}) AS v(id, small, count, name, price, at, flag)"
    decoded = _decode(SCHEMA, await _binary(pg, query))
    assert decoded.schema == SCHEMA
    _same(decoded.to_pylist(), _rows(await pg.fetch(query)))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
async def test_rows_cut_anywhere_decode_the_same(pg: asyncpg.Connection, chunk: int):
    query = f"SELECT {COLUMNS} FROM (VALUES {EDGES}) AS v(id, small, count, name, price, at, flag)"
    data = await _binary(pg, query)
    assert _decode(SCHEMA, data, chunk=chunk).equals(_decode(SCHEMA, data))


async def test_an_empty_result_is_no_rows_and_every_byte_taken(pg: asyncpg.Connection):
    query = f"SELECT {COLUMNS} FROM (VALUES {EDGES}) AS v(id, small, count, name, price, at, flag)"
    data = await _binary(pg, query + " WHERE false")
    assert _decode(SCHEMA, data).num_rows == 0


async def test_copies_one_after_the_other_decode_as_one_stream(pg: asyncpg.Connection):
    query = f"SELECT {COLUMNS} FROM (VALUES {EDGES}) AS v(id, small, count, name, price, at, flag)"
    first = await _binary(pg, query + " WHERE id > 2")
    second = await _binary(pg, query + " WHERE id <= 2")
    decoded = _decode(SCHEMA, first + second, chunk=100)
    expected = _rows(await pg.fetch(query + " WHERE id > 2"))
    _same(decoded.to_pylist(), expected + _rows(await pg.fetch(query + " WHERE id <= 2")))


async def test_trades_whose_values_hold_a_row_start_decode_row_for_row(pg: asyncpg.Connection):
    # 00 07 (seven fields) 00 00 00 08 (an int8 follows): the bytes every trade row starts
    # with, inside ids (0x0007_0000_0008_xxxx), prices (digits 7, 0, 8) and symbols.
    query = """
        SELECT (x'0007000000080007'::bit(64)::int8 + n) AS id,
               CASE WHEN n % 3 = 0 THEN E'\\x07' ELSE 'AAPL' END AS symbol,
               7.00000008 + n AS price, 7.00000008::numeric(38, 18) AS volume,
               '2026-01-02 03:04:05+00'::timestamptz + n * interval '7 microseconds'
                   AS timestamp,
               CASE WHEN n % 2 = 0 THEN repeat(E'\\x07', n % 11) END AS venue_trade_id,
               CASE WHEN n % 5 = 0 THEN 'buy' WHEN n % 5 = 1 THEN 'sell' END AS side
        FROM generate_series(0, 2999) AS n
    """
    data = await _binary(pg, query)
    decoded = _decode(TRADES_SCHEMA, data, chunk=4096)
    _same(decoded.to_pylist(), _rows(await pg.fetch(query)))


def test_a_start_reached_only_through_false_starts_is_left_out():
    # True rows at 0, 100, 200; false starts at 1…7 inside the first row, each leading to the
    # next and the last to 200: more links than the vectorised pruning follows.
    starts = np.array([0, 1, 2, 3, 4, 5, 6, 7, 100, 200])
    ends = np.array([100, 2, 3, 4, 5, 6, 7, 200, 200, 300])
    assert BinaryCopyDecoder._chain(starts, ends).tolist() == [0, 8, 9]


@pytest.mark.parametrize(
    ("value", "arrow"),
    [
        ("0.0000000000000000001::numeric", pa.decimal128(38, 18)),
        ("'NaN'::numeric", pa.decimal128(38, 18)),
        ("123456789012345678901::numeric", pa.decimal128(38, 18)),
        ("'infinity'::timestamptz", pa.timestamp("us", tz="UTC")),
    ],
)
async def test_values_without_an_exact_arrow_form_are_refused(
    pg: asyncpg.Connection, value: str, arrow: pa.DataType
):
    data = await _binary(pg, f"SELECT {value}")
    with pytest.raises(BinaryCopyError):
        _decode(pa.schema([("value", arrow)]), data)


async def test_float64_is_the_nearest_double_to_the_decimal(pg: asyncpg.Connection):
    texts = ["0.000001", "0.1", "187.42", "99999.999999", "1.000000000000000001", "3.3"]
    query = "SELECT v::numeric(38, 18) FROM unnest($1::text[]) AS v"
    decoded = _decode(pa.schema([("v", pa.float64())]), await _binary(pg, query, texts))
    assert decoded.column("v").to_pylist() == [float(Decimal(text)) for text in texts]


def test_a_column_type_without_a_decoder_is_refused_up_front():
    with pytest.raises(TypeError):
        BinaryCopyDecoder(pa.schema([("d", pa.date32())]))


def test_bytes_that_are_no_binary_copy_are_refused():
    with pytest.raises(BinaryCopyError):
        BinaryCopyDecoder(SCHEMA).decode(b"id,name\n1,x\n" + bytes(20))
