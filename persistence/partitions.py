"""Monthly partitions of `trades`: created before the rows that need them (migration 0009)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.candles import typed

__all__ = ["ensure_partitions", "include_name"]

# How mdp_ensure_trade_partitions names the partition of a month.
_PARTITION = re.compile(r"^trades_y[0-9]{4}m[0-9]{2}$")

# There is no default partition (DETACH ... CONCURRENTLY cannot run beside one), so a row
# whose month has no partition is refused: every writer ensures its months first.
_ensure = typed("SELECT mdp_ensure_trade_partitions(:lo, :hi)")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter for comparing the database with the models: partitions are created
    by the database's own function, not declared in the models."""
    return not (type_ == "table" and name is not None and _PARTITION.match(name))


async def ensure_partitions(conn: AsyncConnection, lo: datetime, hi: datetime) -> int:
    """Create the missing partitions of every month from `lo`'s to `hi`'s, in the caller's
    transaction (it holds the attach lock until it ends); returns how many were created."""
    created: int = (await conn.execute(_ensure, {"lo": lo, "hi": hi})).scalar_one()
    return created
