"""Queries on `symbols`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import Integer, String, Table, bindparam, text
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


# Built once (hot read paths). Byte order ("C"), whatever the database's collation: pages
# must not depend on the server.
_first_page = text(
    """
    SELECT symbol, name, created_at FROM symbols
    ORDER BY symbol COLLATE "C"
    LIMIT :limit
    """
).bindparams(bindparam("limit", type_=Integer))
_next_page = text(
    """
    SELECT symbol, name, created_at FROM symbols
    WHERE symbol COLLATE "C" > :after
    ORDER BY symbol COLLATE "C"
    LIMIT :limit
    """
).bindparams(bindparam("after", type_=String), bindparam("limit", type_=Integer))
_exists = text("SELECT EXISTS (SELECT 1 FROM symbols WHERE symbol = :symbol)").bindparams(
    bindparam("symbol", type_=String)
)


async def list_symbols(
    conn: AsyncConnection, *, limit: int, after: str | None
) -> Sequence[SymbolRow]:
    """Up to `limit` symbols in code order, starting after `after`."""
    if after is None:
        result = await conn.execute(_first_page, {"limit": limit})
    else:
        result = await conn.execute(_next_page, {"after": after, "limit": limit})
    return [SymbolRow(*row) for row in result]


async def symbol_exists(conn: AsyncConnection, symbol: str) -> bool:
    return bool((await conn.execute(_exists, {"symbol": symbol})).scalar_one())
