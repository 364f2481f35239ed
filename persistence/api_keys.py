"""Queries on `api_keys`: create, list, revoke, load with the change version, record use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.models import ApiKey

__all__ = [
    "KeyRow",
    "insert_key",
    "key_version",
    "list_keys",
    "load_keys",
    "record_last_used",
    "revoke_key",
    "set_caps",
]

_keys = cast(Table, ApiKey.__table__)
_COLUMNS = (
    "id",
    "name",
    "key_hash",
    "scopes",
    "rate_limit",
    "rate_window_seconds",
    "created_at",
    "revoked_at",
    "last_used_at",
    "max_exports",
    "max_streams",
)


class KeyRow(NamedTuple):
    id: str
    name: str
    key_hash: bytes
    scopes: list[str]
    rate_limit: int
    rate_window_seconds: int
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    max_exports: int | None
    max_streams: int | None


async def insert_key(
    conn: AsyncConnection,
    *,
    key_id: str,
    name: str,
    key_hash: bytes,
    scopes: Sequence[str],
    rate_limit: int,
    rate_window_seconds: int,
    max_exports: int | None = None,
    max_streams: int | None = None,
) -> KeyRow:
    statement = (
        insert(_keys)
        .values(
            id=key_id,
            name=name,
            key_hash=key_hash,
            scopes=list(scopes),
            rate_limit=rate_limit,
            rate_window_seconds=rate_window_seconds,
            max_exports=max_exports,
            max_streams=max_streams,
        )
        .returning(*(_keys.c[name] for name in _COLUMNS))
    )
    return KeyRow(*(await conn.execute(statement)).one())


async def list_keys(conn: AsyncConnection) -> list[KeyRow]:
    statement = select(*(_keys.c[name] for name in _COLUMNS)).order_by(_keys.c.created_at)
    return [KeyRow(*row) for row in await conn.execute(statement)]


async def revoke_key(conn: AsyncConnection, key_id: str) -> KeyRow | None:
    """Revoke `key_id` (a second revocation keeps the first time); None if there is no such key."""
    statement = (
        update(_keys)
        .where(_keys.c.id == key_id)
        .values(revoked_at=text("coalesce(revoked_at, now())"))
        .returning(*(_keys.c[name] for name in _COLUMNS))
    )
    row = (await conn.execute(statement)).one_or_none()
    return KeyRow(*row) if row is not None else None


async def set_caps(
    conn: AsyncConnection, key_id: str, *, max_exports: int | None, max_streams: int | None
) -> KeyRow | None:
    """Give `key_id` its own caps (None: the instance's settings); None if there is no such key."""
    statement = (
        update(_keys)
        .where(_keys.c.id == key_id)
        .values(max_exports=max_exports, max_streams=max_streams)
        .returning(*(_keys.c[name] for name in _COLUMNS))
    )
    row = (await conn.execute(statement)).one_or_none()
    return KeyRow(*row) if row is not None else None


_version = text("SELECT version FROM api_key_changes WHERE id = 1")
# The version and the keys in one statement, so in one snapshot: the keys are exactly those
# of that version. LEFT JOIN keeps the version when there is no key at all.
_load = text(
    f"""
    SELECT v.version, {", ".join(f"k.{name}" for name in _COLUMNS)}
    FROM (SELECT (SELECT version FROM api_key_changes WHERE id = 1) AS version) AS v
    LEFT JOIN api_keys AS k ON true
    ORDER BY k.created_at
    """
)


async def key_version(conn: AsyncConnection) -> int | None:
    """The change counter: differs from the last one read whenever a key changed since."""
    version = (await conn.execute(_version)).scalar_one_or_none()
    return int(version) if version is not None else None


async def load_keys(conn: AsyncConnection) -> tuple[int | None, list[KeyRow]]:
    rows = (await conn.execute(_load)).all()
    version = rows[0][0] if rows else None
    return version, [KeyRow(*row[1:]) for row in rows if row[1] is not None]


_touch = text(
    """
    UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at, u.used_at)
    FROM unnest(CAST(:ids AS text[]), CAST(:times AS timestamptz[])) AS u(id, used_at)
    WHERE k.id = u.id
    """
)


async def record_last_used(conn: AsyncConnection, used: Mapping[str, datetime]) -> None:
    """One statement for every key used since the last call (never one write per request)."""
    if used:
        await conn.execute(_touch, {"ids": list(used), "times": list(used.values())})
