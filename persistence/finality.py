"""Candle buckets and when they are final: one rule for ingestion, backfill and reads.

- Buckets are aligned to UTC epoch multiples of their interval (`1d` starts at 00:00 UTC).
- A trade becomes visible at most `VISIBILITY_DEADLINE` after its timestamp: the ingester rolls
  back a batch it could not commit within half of it. So a bucket is final once it ended at or
  before the *horizon*, "now" minus the deadline: no trade can arrive in it any more.
- The horizon is computed by the database that serves the statement, never by the app's clock:
  on a primary it is `now()`; on a standby it is `pg_last_xact_replay_timestamp()`, the primary's
  commit time of the last transaction replayed. Every trade stamped before that minus the
  deadline was committed before that transaction, hence replayed: a lagging replica only ever
  reports fewer buckets final, never one it has not received all trades of. A standby that has
  replayed nothing since it started reports nothing final.
- `ingestion_state.candles_until` is the materialisation watermark: every 1m bucket starting
  before it, and every longer bucket ending at or before it, is in `candles` for every symbol
  (NULL: nothing yet). A final bucket below the watermark without a row had no trades.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "BASE",
    "EPOCH",
    "HORIZON_SQL",
    "INTERVALS",
    "VISIBILITY_DEADLINE",
    "WATERMARK_SQL",
    "bin_sql",
    "bucket_ceil",
    "bucket_floor",
    "driver_horizon",
    "horizon",
]

VISIBILITY_DEADLINE = timedelta(seconds=2)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INTERVALS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "1d": timedelta(days=1),
}
# Every interval is a whole number of base buckets: longer candles roll up from 1m ones.
BASE = "1m"

_DEADLINE_SQL = f"INTERVAL '{VISIBILITY_DEADLINE.total_seconds():g} seconds'"

# Final buckets end at or before this; see the module docstring for why each branch is safe.
HORIZON_SQL = f"""(
    CASE WHEN pg_is_in_recovery()
         THEN coalesce(pg_last_xact_replay_timestamp(), TIMESTAMPTZ '1970-01-01 00:00:00+00')
         ELSE now()
    END - {_DEADLINE_SQL}
)"""

# The watermark, with "nothing materialised" as a time before any trade a request can name.
WATERMARK_SQL = """coalesce(
    (SELECT candles_until FROM ingestion_state WHERE id = 1),
    TIMESTAMPTZ '0001-01-01 00:00:00+00'
)"""


def bin_sql(step: str, moment: str) -> str:
    """SQL for the start of the bucket of width `step` holding `moment` (epoch-aligned)."""
    return f"date_bin({step}, {moment}, TIMESTAMPTZ '1970-01-01 00:00:00+00')"


def bucket_floor(moment: datetime, step: timedelta) -> datetime:
    """Start of the bucket holding `moment`; buckets are aligned to UTC epoch multiples."""
    # In UTC: wall-clock arithmetic in a zone with DST would leave the bucket grid.
    moment = moment.astimezone(UTC)
    return moment - (moment - EPOCH) % step


def bucket_ceil(moment: datetime, step: timedelta) -> datetime:
    """Start of the first bucket that starts at or after `moment`."""
    floor = bucket_floor(moment, step)
    return floor if floor == moment else floor + step


_HORIZON = f"SELECT {HORIZON_SQL}"
_horizon = text(_HORIZON)


async def horizon(conn: AsyncConnection) -> datetime:
    """The finality horizon as the database behind `conn` sees it (buckets ending at or
    before it are final)."""
    value = (await conn.execute(_horizon)).scalar_one()
    assert isinstance(value, datetime)
    return value


async def driver_horizon(conn: asyncpg.Connection) -> datetime:
    """`horizon` through a bare asyncpg connection (the hot reads' path)."""
    value = await conn.fetchval(_HORIZON)
    assert isinstance(value, datetime)
    return value
