"""Queries on `trades`, inside a transaction that is rolled back after each test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.connections import driver_connection
from persistence.history import write_history
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade, latest_trade, list_trades
from tests.support import seed_trades

T0 = datetime(2026, 1, 5, 14, 30, 0, 123456, tzinfo=UTC)


async def _stored(conn: AsyncConnection, symbol: str) -> list[tuple[int, datetime]]:
    """(id, timestamp) of every stored trade of `symbol`, in (timestamp, id) order."""
    rows = await conn.execute(
        text('SELECT id, "timestamp" FROM trades WHERE symbol = :s ORDER BY "timestamp", id'),
        {"s": symbol},
    )
    return [(row.id, row.timestamp) for row in rows]


async def _count(conn: AsyncConnection, symbol: str) -> int:
    query = text("SELECT count(*) FROM trades WHERE symbol = :s")
    return int((await conn.execute(query, {"s": symbol})).scalar_one())


def _trade(symbol: str, seconds: float, price: str = "10.00", volume: int = 1) -> NewTrade:
    return NewTrade(symbol, Decimal(price), volume, T0 + timedelta(seconds=seconds))


async def test_latest_trade_is_newest_by_timestamp_not_by_id(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("LTS", "Latest")])
    # The newest trade is inserted first, so it has the lowest id.
    await seed_trades(conn, [_trade("LTS", 60, "12.34", 7)])
    await seed_trades(conn, [_trade("LTS", 0, "11.00"), _trade("LTS", 30, "11.50")])

    latest = await latest_trade(await driver_connection(conn), "LTS")

    assert latest is not None
    assert (latest.price, latest.volume, latest.timestamp) == (
        Decimal("12.34"),
        7,
        T0 + timedelta(seconds=60),
    )


async def test_latest_trade_breaks_timestamp_ties_by_highest_id(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("LTT", "Latest tie")])
    await seed_trades(conn, [_trade("LTT", 10, "1.00"), _trade("LTT", 5, "2.00")])
    await seed_trades(conn, [_trade("LTT", 10, "3.00")])
    await seed_trades(conn, [_trade("LTT", 10, "4.00"), _trade("LTT", 9, "5.00")])
    newest_id = max(
        id_ for id_, ts in await _stored(conn, "LTT") if ts == T0 + timedelta(seconds=10)
    )

    latest = await latest_trade(await driver_connection(conn), "LTT")

    assert latest is not None
    assert latest.id == newest_id
    assert latest.price == 4.0


async def test_latest_trade_is_none_for_symbol_without_trades(conn: AsyncConnection) -> None:
    await ensure_symbols(conn, [("EMPTY", "No trades")])
    await ensure_symbols(conn, [("BUSY", "Trades")])
    await seed_trades(conn, [_trade("BUSY", 0)])

    assert await latest_trade(await driver_connection(conn), "EMPTY") is None


@pytest.fixture
async def window_trades(conn: AsyncConnection) -> list[tuple[int, datetime]]:
    """Twelve trades of WIN over 0..50 s with ties at 10 s and 20 s, inserted out of order."""
    await ensure_symbols(conn, [("WIN", "Window"), ("OTHER", "Other")])
    seconds = [20, 0, 10, 50, 10, 30, 20, 40, 10, 45, 20, 5]
    await seed_trades(conn, [_trade("WIN", s) for s in seconds])
    await seed_trades(conn, [_trade("OTHER", s) for s in (10, 20, 30)])
    return await _stored(conn, "WIN")


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
async def test_list_trades_window_includes_start_and_excludes_end(
    conn: AsyncConnection, window_trades: list[tuple[int, datetime]], descending: bool
) -> None:
    start, end = T0 + timedelta(seconds=10), T0 + timedelta(seconds=45)

    page = await list_trades(
        await driver_connection(conn),
        symbol="WIN",
        start=start,
        end=end,
        descending=descending,
        after=None,
        limit=100,
    )

    expected = [(i, ts) for i, ts in window_trades if start <= ts < end]
    if descending:
        expected.reverse()
    assert [(row["id"], row["timestamp"]) for row in page] == expected
    assert {row["symbol"] for row in page} == {"WIN"}
    assert min(ts for _, ts in expected) == start


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 2, 3, 5])
async def test_list_trades_keyset_walk_returns_every_row_once_in_order(
    conn: AsyncConnection,
    window_trades: list[tuple[int, datetime]],
    descending: bool,
    limit: int,
) -> None:
    walked: list[asyncpg.Record] = []
    after = None
    while page := await list_trades(
        await driver_connection(conn),
        symbol="WIN",
        start=None,
        end=None,
        descending=descending,
        after=after,
        limit=limit,
    ):
        assert len(page) <= limit
        walked.extend(page)
        after = (page[-1]["timestamp"], page[-1]["id"])

    expected = list(reversed(window_trades)) if descending else window_trades
    assert [(row["id"], row["timestamp"]) for row in walked] == expected


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
async def test_list_trades_after_continues_strictly_past_the_key_inside_a_tie(
    conn: AsyncConnection, window_trades: list[tuple[int, datetime]], descending: bool
) -> None:
    tie = [(i, ts) for i, ts in window_trades if ts == T0 + timedelta(seconds=10)]
    assert len(tie) == 3
    middle = tie[1]

    page = await list_trades(
        await driver_connection(conn),
        symbol="WIN",
        start=None,
        end=None,
        descending=descending,
        after=(middle[1], middle[0]),
        limit=100,
    )

    ordered = list(reversed(window_trades)) if descending else window_trades
    assert [(row["id"], row["timestamp"]) for row in page] == ordered[ordered.index(middle) + 1 :]


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("100.10", "100.1"),
        ("0.30", "0.3"),
        ("1234.56", "1234.56"),
        ("0.000001", "0.000001"),
        ("99999.99", "99999.99"),
        ("12.345678", "12.345678"),
        ("333.33", "333.33"),
        ("100", "100"),
        # Beyond a binary float's ~15 significant digits.
        ("123456.789012345678", "123456.789012345678"),
    ],
)
async def test_trade_prices_come_back_as_the_stored_decimal_without_trailing_zeros(
    conn: AsyncConnection, stored: str, shown: str
) -> None:
    await ensure_symbols(conn, [("PRX", "Prices")])
    await seed_trades(conn, [NewTrade("PRX", Decimal(stored), 1, T0)])

    latest = await latest_trade(await driver_connection(conn), "PRX")
    (listed,) = await list_trades(
        await driver_connection(conn),
        symbol="PRX",
        start=None,
        end=None,
        descending=True,
        after=None,
        limit=10,
    )

    assert latest is not None
    for price in (latest.price, listed["price"]):
        assert type(price) is Decimal
        assert price == Decimal(stored)
        assert str(price) == shown


async def test_trade_timestamps_keep_microseconds_and_come_back_in_utc(
    conn: AsyncConnection,
) -> None:
    await ensure_symbols(conn, [("UTC", "Zulu")])
    offset = datetime(2026, 1, 5, 16, 30, 0, 654321, tzinfo=timezone(timedelta(hours=2)))
    await seed_trades(conn, [NewTrade("UTC", Decimal("1.00"), 1, offset)])

    latest = await latest_trade(await driver_connection(conn), "UTC")

    assert latest is not None
    assert latest.timestamp == offset
    assert latest.timestamp.microsecond == 654321
    assert latest.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "bad",
    [NewTrade("GOOD", Decimal("10.00"), 0, T0), NewTrade("GOOD", Decimal("0"), 5, T0)],
    ids=["zero-volume", "zero-price"],
)
async def test_history_with_one_bad_row_stores_nothing(
    conn: AsyncConnection, bad: NewTrade
) -> None:
    await ensure_symbols(conn, [("GOOD", "Good")])
    good = [_trade("GOOD", s, "10.00", 5) for s in range(20)]

    with pytest.raises(asyncpg.CheckViolationError):
        async with conn.begin_nested():
            await write_history(conn, "GOOD", [*good[:10], bad, *good[10:]])

    assert await _count(conn, "GOOD") == 0
