"""Reads of a partitioned `trades` plan only the partitions their window touches."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence import batches, trades
from persistence.connections import driver_connection
from persistence.partitions import ensure_partitions, oldest_month_end
from persistence.statements import Statement
from persistence.trades import RECENT, page_sql

# Three years of monthly partitions: what a service keeps for years plans against.
FIRST, LAST = datetime(2024, 1, 1, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC)
CURSOR = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _json(plan: object) -> object:
    return json.loads(plan) if isinstance(plan, str) else plan


def _scanned(plan: object) -> set[str]:
    """The relations a JSON plan reads."""
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            found.add(plan["Relation Name"])
        for value in plan.values():
            found |= _scanned(value)
    elif isinstance(plan, list):
        for item in plan:
            found |= _scanned(item)
    return found


async def test_a_page_after_a_cursor_plans_only_the_months_of_its_bounds(
    conn: AsyncConnection,
) -> None:
    await ensure_partitions(conn, FIRST, LAST)
    driver = await driver_connection(conn)
    # What list_trades sends for a newest-first page after a cursor: the cursor's row
    # comparison, the plain bound beside it, and the time bound it tries first.
    sql = page_sql(start=True, end=False, after=True, descending=True)
    plan = await driver.fetchval(
        f"EXPLAIN (FORMAT JSON) {sql.sql}", "PLAN", CURSOR - RECENT, CURSOR, 1, 101
    )

    assert _scanned(_json(plan)) == {"trades_y2025m05", "trades_y2025m06"}


async def test_latest_within_recent_plans_only_the_months_since(conn: AsyncConnection) -> None:
    await ensure_partitions(conn, FIRST, LAST)
    driver = await driver_connection(conn)
    since = datetime(2026, 12, 20, tzinfo=UTC) - RECENT
    sql = page_sql(start=True, end=False, after=False, descending=True)
    plan = await driver.fetchval(f"EXPLAIN (FORMAT JSON) {sql.sql}", "PLAN", since, 1)

    # December, and the months created ahead of it.
    assert {name for name in _scanned(_json(plan)) if name < "trades_y2026m12"} == set()


async def _scanned_by(conn: AsyncConnection, read: Statement, **values: object) -> set[str]:
    """The partitions the plan of `read` with `values` touches."""
    driver = await driver_connection(conn)
    plan = await driver.fetchval(f"EXPLAIN (FORMAT JSON) {read.sql}", *read.arguments(values))
    return _scanned(_json(plan))


async def test_latest_trades_within_recent_plan_only_the_months_since(
    conn: AsyncConnection,
) -> None:
    await ensure_partitions(conn, FIRST, LAST)
    since = datetime(2026, 12, 20, tzinfo=UTC) - RECENT

    scanned = await _scanned_by(conn, batches._LATEST_SINCE, symbols=["PLAN"], since=since)

    # December, and the months created ahead of it.
    assert "trades_y2026m12" in scanned
    assert {
        name for name in scanned if name.startswith("trades_y") and name < "trades_y2026m12"
    } == set()


async def test_the_oldest_trade_is_looked_for_in_the_oldest_month_first(
    conn: AsyncConnection,
) -> None:
    await ensure_partitions(conn, FIRST, LAST)
    before = await oldest_month_end(conn)

    scanned = await _scanned_by(conn, trades._OLDEST_BEFORE, symbol="PLAN", before=before)

    assert before == datetime(2024, 2, 1, tzinfo=UTC)
    assert scanned == {"trades_y2024m01"}
