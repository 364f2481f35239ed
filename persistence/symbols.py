"""Queries on `symbols`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import asyncpg
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import Symbol

__all__ = ["EXISTS", "FIRST_PAGE", "NEXT_PAGE", "ensure_symbols", "list_symbols", "symbol_exists"]

_symbols = cast(Table, Symbol.__table__)


async def ensure_symbols(conn: AsyncConnection, symbols: Iterable[tuple[str, str]]) -> None:
    """Insert missing (symbol, name) pairs; existing rows keep their name and creation time."""
    values = [{"symbol": code, "name": name} for code, name in symbols]
    if values:
        await conn.execute(insert(_symbols).values(values).on_conflict_do_nothing())


# Hot reads, sent on the read pool's asyncpg connections (see persistence.pool). Byte order
# ("C"), whatever the database's collation: pages must not depend on the server.
FIRST_PAGE = 'SELECT symbol, name, created_at FROM symbols ORDER BY symbol COLLATE "C" LIMIT $1'
NEXT_PAGE = (
    'SELECT symbol, name, created_at FROM symbols WHERE symbol COLLATE "C" > $1 '
    'ORDER BY symbol COLLATE "C" LIMIT $2'
)
EXISTS = "SELECT EXISTS (SELECT 1 FROM symbols WHERE symbol = $1)"


async def list_symbols(
    conn: asyncpg.Connection, *, limit: int, after: str | None
) -> list[asyncpg.Record]:
    """Up to `limit` (symbol, name, created_at) records in code order, after `after`."""
    if after is None:
        rows: list[asyncpg.Record] = await conn.fetch(FIRST_PAGE, limit)
    else:
        rows = await conn.fetch(NEXT_PAGE, after, limit)
    return rows


async def symbol_exists(conn: asyncpg.Connection, symbol: str) -> bool:
    return bool(await conn.fetchval(EXISTS, symbol))
