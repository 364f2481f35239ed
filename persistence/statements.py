"""Statements declared once with their parameters' types: run by asyncpg or by SQLAlchemy.

Every statement of the service is a SQLAlchemy construct whose parameters carry declared types
(a Core `select()`/`insert()`, whose columns type them, or `statement()`'s text with a type per
name). It is compiled once, at import, by SQLAlchemy's asyncpg dialect into the driver's SQL:
positional `$n` parameters, each cast to its declared type (PostgreSQL cannot infer `$1 * $2`,
and a varchar comparison keeps the index). The hot reads send that SQL on the read pool's bare
asyncpg connections (`persistence.pool`), without SQLAlchemy's per-call compilation and result
machinery; writes and the CLI run the same construct through an SQLAlchemy connection, in the
transaction its caller owns. A parameter without a declared type is refused at import.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, cast

import asyncpg
from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import NullType, TypeEngine

__all__ = ["TIMESTAMP", "Connection", "Row", "Statement", "statement"]

# The one timestamp type of the schema: every column and parameter is a UTC instant.
TIMESTAMP = DateTime(timezone=True)

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]

# Either stack's connection: a statement runs on both, so a helper is written once.
Connection: TypeAlias = asyncpg.Connection | AsyncConnection
# A row from either: asyncpg's Record or SQLAlchemy's Row, both indexed by position and
# unpacked like tuples (a Record by name too). Any, as asyncpg is untyped.
Row: TypeAlias = Any


class Statement:
    """One SQL statement: `clause` for SQLAlchemy connections, `sql` (with `$n` parameters in
    `names` order) for asyncpg ones. `fetch`, `fetchrow` and `fetchval` take either; values
    are passed by name either way."""

    __slots__ = ("_converters", "_defaults", "clause", "names", "sql")

    def __init__(self, clause: ClauseElement) -> None:
        compiled = cast(SQLCompiler, clause.compile(dialect=_DIALECT))
        untyped = [name for name, bind in compiled.binds.items() if isinstance(bind.type, NullType)]
        if untyped:
            raise TypeError(f"parameters without a declared type: {', '.join(untyped)}")
        self.clause = clause
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        # Literal values a construct carries itself (a Core `.limit(1)`).
        self._defaults = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if not bind.required and name in self.names
        }
        # What SQLAlchemy would do to a value before the driver sees it (most types: nothing).
        self._converters: dict[str, Callable[[Any], Any]] = {}
        for name in self.names:
            convert = compiled.binds[name].type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            if convert is not None:
                self._converters[name] = convert

    def arguments(self, values: Mapping[str, Any]) -> list[Any]:
        """The driver's positional arguments for named `values`."""
        merged = {**self._defaults, **values} if self._defaults else values
        arguments = [merged[name] for name in self.names]
        if self._converters:
            for i, name in enumerate(self.names):
                convert = self._converters.get(name)
                if convert is not None and arguments[i] is not None:
                    arguments[i] = convert(arguments[i])
        return arguments

    async def fetch(self, conn: Connection, **values: Any) -> list[Row]:
        """Every row."""
        if isinstance(conn, AsyncConnection):
            return list((await self.execute(conn, **values)).all())
        rows: list[Row] = await conn.fetch(self.sql, *self.arguments(values))
        return rows

    async def fetchrow(self, conn: Connection, **values: Any) -> Row | None:
        """The first row, or None."""
        if isinstance(conn, AsyncConnection):
            return (await self.execute(conn, **values)).first()
        row: Row | None = await conn.fetchrow(self.sql, *self.arguments(values))
        return row

    async def fetchval(self, conn: Connection, **values: Any) -> Any:
        """The first column of the first row, or None."""
        if isinstance(conn, AsyncConnection):
            return (await self.execute(conn, **values)).scalar()
        return await conn.fetchval(self.sql, *self.arguments(values))

    async def execute(self, conn: AsyncConnection, **values: Any) -> CursorResult[Any]:
        """Run through SQLAlchemy, in the transaction of `conn`'s caller."""
        return await conn.execute(self.clause, values)  # type: ignore[call-overload,no-any-return]


def statement(sql: str, **types: TypeEngine[Any] | type[TypeEngine[Any]]) -> Statement:
    """A text statement whose `:name` parameters are each declared in `types`."""
    clause = text(sql).bindparams(*(bindparam(name, type_=t) for name, t in types.items()))
    return Statement(clause)
