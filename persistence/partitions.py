"""Monthly partitions of `trades`: created before the rows that need them (migration 0009)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.candles import typed

__all__ = ["ensure_partitions"]

# There is no default partition (DETACH ... CONCURRENTLY cannot run beside one), so a row
# whose month has no partition is refused: every writer ensures its months first.
_ensure = typed("SELECT mdp_ensure_trade_partitions(:lo, :hi)")


async def ensure_partitions(conn: AsyncConnection, lo: datetime, hi: datetime) -> int:
    """Create the missing partitions of every month from `lo`'s to `hi`'s, in the caller's
    transaction (it holds the attach lock until it ends); returns how many were created."""
    created: int = (await conn.execute(_ensure, {"lo": lo, "hi": hi})).scalar_one()
    return created
