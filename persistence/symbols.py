"""Queries on `symbols`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import Table, exists, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import Symbol

__all__ = ["SymbolRow", "ensure_symbols", "list_symbols", "symbol_exists"]

_symbols = cast(Table, Symbol.__table__)


class SymbolRow(NamedTuple):
    symbol: str
    name: str
    created_at: datetime


async def ensure_symbols(conn: AsyncConnection, symbols: Iterable[tuple[str, str]]) -> None:
    """Insert missing (symbol, name) pairs; existing rows keep their name and creation time."""
    values = [{"symbol": code, "name": name} for code, name in symbols]
    if values:
        await conn.execute(insert(_symbols).values(values).on_conflict_do_nothing())


async def list_symbols(
    conn: AsyncConnection, *, limit: int, after: str | None
) -> Sequence[SymbolRow]:
    """Up to `limit` symbols in code order, starting after `after`."""
    # Byte order, whatever the database's collation: pages must not depend on the server.
    code = _symbols.c.symbol.collate("C")
    query = select(_symbols.c.symbol, _symbols.c.name, _symbols.c.created_at)
    if after is not None:
        query = query.where(code > after)
    result = await conn.execute(query.order_by(code).limit(limit))
    return [SymbolRow(*row) for row in result]


async def symbol_exists(conn: AsyncConnection, symbol: str) -> bool:
    result = await conn.execute(select(exists().where(_symbols.c.symbol == symbol)))
    return bool(result.scalar_one())
