"""Monthly partitions of `trades`: created before the rows that need them (migration 0009)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.statements import TIMESTAMP, Connection, statement

__all__ = [
    "drop_expired",
    "dropped_months",
    "ensure_ahead",
    "ensure_partitions",
    "include_name",
    "month_of",
    "next_month",
    "oldest_month_end",
    "oldest_trade_kept",
]

# How mdp_ensure_trade_partitions names the partition of a month.
_PARTITION = re.compile(r"^trades_y[0-9]{4}m[0-9]{2}$")

# There is no default partition (DETACH ... CONCURRENTLY cannot run beside one), so a row
# whose month has no partition is refused: every writer ensures its months first.
_ensure = statement("SELECT mdp_ensure_trade_partitions(:lo, :hi)", lo=TIMESTAMP, hi=TIMESTAMP)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter for comparing the database with the models: partitions are created
    by the database's own function, not declared in the models."""
    return not (type_ == "table" and name is not None and _PARTITION.match(name))


async def ensure_partitions(conn: AsyncConnection, lo: datetime, hi: datetime) -> int:
    """Create the missing partitions of every month from `lo`'s to `hi`'s, in the caller's
    transaction (it holds the attach lock until it ends); returns how many were created."""
    created: int = (await _ensure.execute(conn, lo=lo, hi=hi)).scalar_one()
    return created


# A partition's month from its name: bounds are whole UTC months (mdp_ensure_trade_partitions).
def _month(name: str) -> datetime:
    return datetime(int(name[8:12]), int(name[13:15]), 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    """The start of the month after `month` (the start of a month)."""
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


# Every partition table by name: attached, detaching (an interrupted DETACH CONCURRENTLY leaves
# it pending) or detached but not dropped yet (the drop did not happen).
_PARTITIONS = """
    SELECT c.relname, i.inhrelid IS NOT NULL, coalesce(i.inhdetachpending, false)
    FROM pg_class AS c
    LEFT JOIN pg_inherits AS i ON i.inhrelid = c.oid AND i.inhparent = 'trades'::regclass
    WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
      AND c.relname ~ '^trades_y[0-9]{4}m[0-9]{2}$'
    ORDER BY c.relname
"""
# Raw trades may go only once their candles are stored: a month holds a trade of some symbol
# at or past its candle watermark (any trade, while it has none yet). Judged per symbol, not
# by the slowest watermark: a symbol whose feed stopped (no longer configured) keeps its
# watermark where the feed stopped for ever, and holds back only a month where it has trades
# not in stored candles, never the months after. One index probe per symbol.
_HOLDS_UNSTORED = statement(
    """
    SELECT EXISTS (
        SELECT FROM symbols AS s
        LEFT JOIN candle_watermarks AS w ON w.symbol = s.symbol
        WHERE EXISTS (
            SELECT FROM trades AS t
            WHERE t.symbol = s.symbol AND t.timestamp >= :lo AND t.timestamp < :hi
              AND t.timestamp >= coalesce(w.candles_until, :lo)
        )
    )
    """,
    lo=TIMESTAMP,
    hi=TIMESTAMP,
)
# Creating a partition gives up rather than queue behind a detach that waits for an export.
_ATTACH_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
# A detach waits that long for the transactions still reading its partition (an export's);
# past it, it stays pending and the next round finishes it.
_DETACH_LOCK_TIMEOUT = "SET lock_timeout = '60s'"


async def ensure_ahead(conn: asyncpg.Connection, now: datetime, ahead: timedelta) -> int:
    """Create the partitions from `now`'s month to `now + ahead`'s (a transaction of its own,
    giving up rather than queueing behind a retention detach); returns how many were new."""
    async with conn.transaction():
        await conn.execute(_ATTACH_LOCK_TIMEOUT)
        created: int = await conn.fetchval(
            "SELECT mdp_ensure_trade_partitions($1, $2)", now, now + ahead
        )
    return created


_RECORD_DROPPED = "INSERT INTO trades_dropped_months (month) VALUES ($1) ON CONFLICT DO NOTHING"
_DROPPED = statement(
    """
    SELECT month FROM trades_dropped_months
    WHERE month > :lo - INTERVAL '1 month' AND month <= :hi
    ORDER BY month
    """,
    lo=TIMESTAMP,
    hi=TIMESTAMP,
)


async def dropped_months(conn: Connection, lo: datetime, hi: datetime) -> list[datetime]:
    """The months retention dropped the trades of (`drop_expired`) that hold a moment of
    [lo, hi], oldest first: no trade is written into them again."""
    months: list[datetime] = [row[0] for row in await _DROPPED.fetch(conn, lo=lo, hi=hi)]
    return months


def month_of(moment: datetime) -> datetime:
    """The start of `moment`'s UTC month, as partitions and `dropped_months` have them."""
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


async def drop_expired(conn: asyncpg.Connection, before: datetime) -> list[str]:
    """Detach and drop every partition whose month ended at or before `before` and whose
    trades are all in stored candles (each before its symbol's candle watermark); returns
    the partitions dropped.

    Run on a connection outside any transaction: `DETACH ... CONCURRENTLY` cannot run in
    one, and it waits for every transaction that may still read the partition (an export's
    snapshot included) instead of locking readers out.
    """
    dropped = []
    await conn.execute(_DETACH_LOCK_TIMEOUT)
    for name, attached, pending in await conn.fetch(_PARTITIONS):
        month = _month(name)
        if next_month(month) > before:
            continue
        if (
            attached
            and not pending
            and await _HOLDS_UNSTORED.fetchval(conn, lo=month, hi=next_month(month))
        ):
            continue
        # Recorded first: from now on no writer adds trades to the month (its candles could
        # only be recomputed from what is left). One already writing is waited for below.
        await conn.execute(_RECORD_DROPPED, month)
        if pending:
            await conn.execute(f'ALTER TABLE trades DETACH PARTITION "{name}" FINALIZE')
        elif attached:
            await conn.execute(f'ALTER TABLE trades DETACH PARTITION "{name}" CONCURRENTLY')
        await conn.execute(f'DROP TABLE "{name}"')
        dropped.append(name)
    return dropped


# The oldest partition attached: no trade is older than the end of its month. A read without
# a window that looks for the oldest trades tries that month first, planned alone (planning
# every monthly partition costs milliseconds).
_OLDEST_PARTITION = statement(
    """
    SELECT min(c.relname) FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'trades'::regclass AND NOT i.inhdetachpending
    """
)


async def oldest_month_end(conn: Connection) -> datetime | None:
    """The end of the oldest month `trades` has a partition for (None without any)."""
    name: str | None = await _OLDEST_PARTITION.fetchval(conn)
    return next_month(_month(name)) if name is not None else None


_OLDEST_KEPT = """
    SELECT min(o.timestamp) FROM symbols AS s, LATERAL (
        SELECT timestamp FROM trades WHERE symbol = s.symbol {bound}
        ORDER BY timestamp LIMIT 1
    ) AS o
"""
_OLDEST_KEPT_BEFORE = statement(
    _OLDEST_KEPT.format(bound="AND timestamp < :before"), before=TIMESTAMP
)
_OLDEST_KEPT_EVER = statement(_OLDEST_KEPT.format(bound=""))


async def oldest_trade_kept(conn: Connection) -> datetime | None:
    """The time of the oldest stored trade of any symbol: one ordered probe per symbol, in the
    oldest month first."""
    before = await oldest_month_end(conn)
    moment: datetime | None = None
    if before is not None:
        moment = await _OLDEST_KEPT_BEFORE.fetchval(conn, before=before)
    if moment is None:
        moment = await _OLDEST_KEPT_EVER.fetchval(conn)
    return moment
