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
- A venue feed's symbol is final only as far as its own watermark says too: `feed_watermarks`
  holds, per symbol, the time up to which every venue trade is stored (`complete_through`),
  committed in the same transaction as those trades, and read by the same statement that
  judges `closed` (`symbol_horizon_sql`), so no database, primary or replica, ever sees a
  watermark ahead of its own data. It stands still while the feed is down or recovering.
  Symbols without a row (the synthetic walk) keep the clock rule alone.
- A print that still arrives for a final bucket (a venue's late print, beyond the lateness
  allowance) is stored and counted, and its bucket's candles are recomputed in the same
  transaction: a final candle may still be revised, which is why a venue symbol's answers are
  cached as immutable only once they ended a settlement horizon before its watermark
  (`settled`, `FEED_SETTLEMENT_SECONDS`).
- `candle_watermarks.candles_until` is each symbol's materialisation watermark: every 1m
  bucket of the symbol starting before it, and every longer bucket ending at or before it, is
  in `candles` (no row: nothing yet). A final bucket below it without a row had no trades.
  Each symbol's follows its own horizon (`symbol_horizon_sql`): a quiet, down or recovering
  feed holds back its own candles only, and reads aggregate its final-but-not-materialised
  buckets from trades meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Interval, String

from persistence.statements import Connection, statement

__all__ = [
    "BASE",
    "EPOCH",
    "HORIZON_SQL",
    "INTERVALS",
    "VISIBILITY_DEADLINE",
    "bin_sql",
    "bucket_ceil",
    "bucket_floor",
    "feed_watermark_sql",
    "horizon",
    "materialised_sql",
    "materialised_through_sql",
    "open_bucket",
    "settled",
    "symbol_horizon_sql",
    "symbols_horizon_sql",
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

_EPOCH_SQL = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"


def feed_watermark_sql(symbol: str) -> str:
    """SQL for the venue feed's watermark of `symbol` (an SQL expression): NULL without a
    feed row (the synthetic walk), the epoch before the feed has one."""
    return (
        f"(SELECT coalesce(w.complete_through, {_EPOCH_SQL}) FROM feed_watermarks AS w"
        f" WHERE w.symbol = {symbol})"
    )


def symbol_horizon_sql(symbol: str) -> str:
    """SQL for the horizon of `symbol`: the clock's, held back by its feed's watermark
    (`least` ignores the NULL of a symbol without one)."""
    return f"least({HORIZON_SQL}, {feed_watermark_sql(symbol)})"


def symbols_horizon_sql(symbols: str) -> str:
    """SQL for the horizon of every symbol of the array `symbols` at once: the clock's, held
    back by the slowest of their feeds' watermarks."""
    return (
        f"least({HORIZON_SQL}, (SELECT min(coalesce(w.complete_through, {_EPOCH_SQL}))"
        f" FROM feed_watermarks AS w WHERE w.symbol = ANY({symbols})))"
    )


# "Nothing materialised": a time before any trade a request can name.
_NOTHING_SQL = "TIMESTAMPTZ '0001-01-01 00:00:00+00'"


def materialised_sql(symbol: str) -> str:
    """SQL for how far the candles of `symbol` (an SQL expression) are materialised."""
    return (
        f"coalesce((SELECT w.candles_until FROM candle_watermarks AS w"
        f" WHERE w.symbol = {symbol}), {_NOTHING_SQL})"
    )


def materialised_through_sql(symbols: str) -> str:
    """SQL for how far the candles of every one of `symbols` (an SQL varchar[] expression)
    are materialised: the least of their watermarks."""
    return (
        f"(SELECT coalesce(min(coalesce(w.candles_until, {_NOTHING_SQL})), {_NOTHING_SQL})"
        f" FROM unnest({symbols}) AS s(symbol)"
        f" LEFT JOIN candle_watermarks AS w ON w.symbol = s.symbol)"
    )


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


_HORIZON = statement(f"SELECT {HORIZON_SQL}")


async def horizon(conn: Connection) -> datetime:
    """The finality horizon as the database behind `conn` sees it (buckets ending at or
    before it are final)."""
    value = await _HORIZON.fetchval(conn)
    assert isinstance(value, datetime)
    return value


_OPEN_BUCKET = statement(
    f"SELECT {bin_sql(':step', symbol_horizon_sql(':symbol'))}", symbol=String, step=Interval
)


async def open_bucket(conn: Connection, symbol: str, step: timedelta) -> datetime:
    """The first bucket of width `step` of `symbol` that is not final, as the database behind
    `conn` judges it: the clock's, or an earlier one while a venue feed is behind."""
    value = await _OPEN_BUCKET.fetchval(conn, symbol=symbol, step=step)
    assert isinstance(value, datetime)
    return value


_SETTLED = statement(
    f"""SELECT least(
        {HORIZON_SQL},
        (SELECT coalesce(w.complete_through, {_EPOCH_SQL}) - :settlement
         FROM feed_watermarks AS w WHERE w.symbol = :symbol)
    )""",
    symbol=String,
    settlement=Interval,
)


async def settled(conn: Connection, symbol: str, settlement: timedelta) -> datetime:
    """Answers about `symbol` ending at or before this never change again: may be cached as
    immutable. The horizon for the synthetic walk (nothing arrives late); for a venue symbol,
    `settlement` before its watermark (a late print may still revise a final candle)."""
    value = await _SETTLED.fetchval(conn, symbol=symbol, settlement=settlement)
    assert isinstance(value, datetime)
    return value
