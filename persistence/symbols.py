"""Queries on `symbols`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from sqlalchemy import Integer, String, Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import Symbol
from persistence.statements import Connection, Row, statement

__all__ = ["EXISTS", "FIRST_PAGE", "NEXT_PAGE", "ensure_symbols", "list_symbols", "symbol_exists"]

_symbols = cast(Table, Symbol.__table__)


async def ensure_symbols(conn: AsyncConnection, symbols: Iterable[tuple[str, str]]) -> None:
    """Insert missing (symbol, name) pairs; existing rows keep their name and creation time."""
    values = [{"symbol": code, "name": name} for code, name in symbols]
    if values:
        await conn.execute(insert(_symbols).values(values).on_conflict_do_nothing())


# Hot reads, sent on the read pool's asyncpg connections (see persistence.pool). Byte order
# ("C"), whatever the database's collation: pages must not depend on the server.
FIRST_PAGE = statement(
    'SELECT symbol, name, created_at FROM symbols ORDER BY symbol COLLATE "C" LIMIT :limit',
    limit=Integer,
)
NEXT_PAGE = statement(
    'SELECT symbol, name, created_at FROM symbols WHERE symbol COLLATE "C" > :after '
    'ORDER BY symbol COLLATE "C" LIMIT :limit',
    after=String,
    limit=Integer,
)
EXISTS = statement("SELECT EXISTS (SELECT 1 FROM symbols WHERE symbol = :symbol)", symbol=String)


async def list_symbols(conn: Connection, *, limit: int, after: str | None) -> list[Row]:
    """Up to `limit` (symbol, name, created_at) records in code order, after `after`."""
    if after is None:
        return await FIRST_PAGE.fetch(conn, limit=limit)
    return await NEXT_PAGE.fetch(conn, after=after, limit=limit)


async def symbol_exists(conn: Connection, symbol: str) -> bool:
    return bool(await EXISTS.fetchval(conn, symbol=symbol))
