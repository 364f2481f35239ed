"""Queries on `trades`: the newest trade, keyset pages, and live batches."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast

import asyncpg
from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    Numeric,
    String,
    Table,
    bindparam,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from persistence.connections import driver_connection
from persistence.models import Trade
from persistence.partitions import ensure_partitions, oldest_month_end
from persistence.statements import TIMESTAMP, Connection, Row, Statement, statement

__all__ = [
    "COLUMNS",
    "LEADER_HELD",
    "LIVE_CHANNEL",
    "LIVE_RETENTION",
    "RECENT",
    "LATEST",
    "NewTrade",
    "TradeRow",
    "VenueTrade",
    "insert_live_batch",
    "StoredTrades",
    "insert_trades",
    "oldest_trade",
    "latest_trade",
    "list_trades",
    "page_sql",
]

# Every instance LISTENs here; a live batch announces itself in its own transaction, so only
# committed batches are ever heard.
LIVE_CHANNEL = "mdp_live_batches"
# How long live batches stay replayable by streams; the leader prunes older ones as it writes.
LIVE_RETENTION = timedelta(hours=1)

_trades = cast(Table, Trade.__table__)
_c = _trades.c


class TradeRow(NamedTuple):
    id: int
    symbol: str
    # Exact, without trailing zeros (trim_scale): 100.1 stays 100.1, whatever its digits.
    price: Decimal
    volume: Decimal
    timestamp: datetime
    venue_trade_id: str | None
    side: str | None
    # Live reads only: the stamp of the batch that stored it (streams follow commit order,
    # and a venue batch holds many venue timestamps). None elsewhere.
    stamped: datetime | None = None


class NewTrade(NamedTuple):
    symbol: str
    price: Decimal
    volume: Decimal
    timestamp: datetime


class VenueTrade(NamedTuple):
    """A trade as a venue printed it: its own id (None when it has none) and the aggressor's
    side (`buy` | `sell` | None)."""

    symbol: str
    price: Decimal
    volume: Decimal
    timestamp: datetime
    venue_trade_id: str | None
    side: str | None


# The columns of a TradeRow, for the asyncpg reads.
COLUMNS = (
    "id, symbol, trim_scale(price) AS price, trim_scale(volume) AS volume, timestamp, "
    "venue_trade_id, side"
)

# Hot reads, sent on the read pool's asyncpg connections (see persistence.pool).
LATEST = statement(
    f"""
    SELECT {COLUMNS} FROM trades
    WHERE symbol = :symbol
    ORDER BY timestamp DESC, id DESC
    LIMIT 1
    """,
    symbol=String,
)


@functools.cache
def page_sql(*, start: bool, end: bool, after: bool, descending: bool) -> Statement:
    """One of the 16 shapes of a keyset page. Its values: symbol and limit, then start, end,
    and after's (after_timestamp, after_id) where the shape has them."""
    conditions = ["symbol = :symbol"]
    types: dict[str, TypeEngine[Any]] = {"symbol": String(), "limit": Integer()}
    if start:
        conditions.append("timestamp >= :start")
        types["start"] = TIMESTAMP
    if end:
        conditions.append("timestamp < :end")
        types["end"] = TIMESTAMP
    if after:
        operator = "<" if descending else ">"
        conditions.append(f"(timestamp, id) {operator} (:after_timestamp, :after_id)")
        # Implied by the row comparison, but only a plain bound lets the planner prune the
        # partitions on the far side of the cursor.
        conditions.append(f"timestamp {operator}= :after_timestamp")
        types |= {"after_timestamp": TIMESTAMP, "after_id": BigInteger()}
    direction = "DESC" if descending else "ASC"
    return statement(
        f"""
        SELECT {COLUMNS} FROM trades
        WHERE {" AND ".join(conditions)}
        ORDER BY timestamp {direction}, id {direction}
        LIMIT :limit
        """,
        **types,
    )


# Reads without a window get a time bound first: with one the planner prunes to the few
# partitions it touches (planning every monthly partition costs milliseconds), and it holds
# the answer whenever the symbol traded within it. Only when it does not is the unbounded
# query run.
RECENT = timedelta(days=7)
_LATEST_SINCE = statement(
    f"""
    SELECT {COLUMNS} FROM trades
    WHERE symbol = :symbol AND timestamp >= :since
    ORDER BY timestamp DESC, id DESC
    LIMIT 1
    """,
    symbol=String,
    since=TIMESTAMP,
)


async def latest_trade(conn: asyncpg.Connection, symbol: str) -> TradeRow | None:
    row = await _LATEST_SINCE.fetchrow(conn, symbol=symbol, since=datetime.now(UTC) - RECENT)
    if row is None:
        row = await LATEST.fetchrow(conn, symbol=symbol)
    return TradeRow(*row) if row is not None else None


async def list_trades(
    conn: asyncpg.Connection,
    *,
    symbol: str,
    start: datetime | None,
    end: datetime | None,
    descending: bool,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[Row]:
    """A page of (id, symbol, price, volume, timestamp, venue_trade_id, side) records ordered
    by (timestamp, id), continuing strictly after `after`."""
    # An open side toward which the page reads gets a bound RECENT past its anchor first: a
    # page it fills is exactly the unbounded one (the order reads the bounded part first).
    if descending and start is None:
        anchor = after[0] if after is not None else end or datetime.now(UTC)
        rows = await _page(conn, symbol, anchor - RECENT, end, descending, after, limit)
    elif not descending and end is None and (start is not None or after is not None):
        anchor = after[0] if after is not None else cast(datetime, start)
        rows = await _page(conn, symbol, start, anchor + RECENT, descending, after, limit)
    else:
        return await _page(conn, symbol, start, end, descending, after, limit)
    if len(rows) == limit:
        return rows
    return await _page(conn, symbol, start, end, descending, after, limit)


async def _page(
    conn: asyncpg.Connection,
    symbol: str,
    start: datetime | None,
    end: datetime | None,
    descending: bool,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[Row]:
    page = page_sql(
        start=start is not None, end=end is not None, after=after is not None, descending=descending
    )
    values: dict[str, object] = {"symbol": symbol, "limit": limit}
    if start is not None:
        values["start"] = start
    if end is not None:
        values["end"] = end
    if after is not None:
        values["after_timestamp"], values["after_id"] = after
    return await page.fetch(conn, **values)


# The writing session still holds the leader's advisory lock `:lock_key` (NULL `:leader_pid`:
# no election, the only writer). Every batch write checks it in its own statement, so a leader
# that lost the lock can never commit after its successor started.
LEADER_HELD = """(CAST(:leader_pid AS integer) IS NULL OR EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = :leader_pid
      AND classid = (:lock_key >> 32)::oid
      AND objid = (:lock_key & 4294967295)::oid
      AND objsubid = 1
))"""

# A live batch: written only if the writer still holds the leader lock (fencing a leader that
# lost it) and the batch is newer than the last one written (a retried or raced batch can never
# be stored twice). One statement: the claim, the rows, the batch's record in `live_batches`
# (what streams replay from; its rows are marked `live`) and its NOTIFY commit together or not
# at all. The payload is the
# stamp and id range, a few dozen bytes whatever the number of symbols (NOTIFY allows 8,000).
_insert_live_batch = Statement(
    text(
        f"""
    WITH claim AS (
        UPDATE ingestion_state SET last_batch_at = :stamped
        WHERE id = 1 AND last_batch_at < :stamped AND {LEADER_HELD}
        RETURNING 1
    ),
    inserted AS (
        INSERT INTO trades (symbol, price, volume, timestamp, live)
        SELECT *, true FROM unnest(
            CAST(:symbols AS varchar[]), CAST(:prices AS numeric[]),
            CAST(:volumes AS numeric[]), CAST(:timestamps AS timestamptz[])
        )
        WHERE EXISTS (SELECT 1 FROM claim)
        RETURNING id
    ),
    span AS (SELECT count(*) AS size, min(id) AS first_id, max(id) AS last_id FROM inserted),
    pruned AS (
        DELETE FROM live_batches
        WHERE stamped < :horizon AND EXISTS (SELECT 1 FROM claim)
    ),
    recorded AS (
        INSERT INTO live_batches (stamped, first_id, last_id, rows_marked)
        SELECT :stamped, first_id, last_id, true FROM span WHERE size > 0
    )
    SELECT size, CASE WHEN size > 0 THEN pg_notify(
        :channel, concat_ws(' ', :stamp_text, first_id, last_id)
    ) END
    FROM span
    """
    ).bindparams(
        bindparam("symbols", type_=ARRAY(String)),
        bindparam("prices", type_=ARRAY(Numeric)),
        bindparam("volumes", type_=ARRAY(Numeric)),
        bindparam("timestamps", type_=ARRAY(DateTime(timezone=True))),
        bindparam("stamped", type_=DateTime(timezone=True)),
        bindparam("horizon", type_=DateTime(timezone=True)),
        bindparam("leader_pid", type_=Integer),
        bindparam("lock_key", type_=BigInteger),
        bindparam("channel", type_=String),
        bindparam("stamp_text", type_=String),
    )
)


async def insert_live_batch(
    conn: AsyncConnection,
    trades: Sequence[NewTrade],
    *,
    stamped: datetime,
    leader_pid: int | None,
    lock_key: int,
) -> int:
    """Insert and publish a live batch stamped `stamped` (every trade carries that timestamp)
    if the writer may; returns the rows stored (0 when the batch was refused: not the leader
    any more, or not newer than the last batch). `leader_pid` None skips the lock check (a
    single writer without election). Listeners hear of it when the caller commits."""
    if not trades:
        return 0
    symbols, prices, volumes, timestamps = zip(*trades, strict=True)
    if any(moment != stamped for moment in timestamps):
        # One timestamp per batch, always: a revision before migration 0013 (still leading
        # during a deploy, or rolled back to) finds a batch's trades by it.
        raise ValueError("every trade of a live batch must carry the batch's stamp")
    # The leader keeps partitions months ahead; this only checks (a catalog lookup), except
    # for a writer whose clock is where no partition is yet.
    await ensure_partitions(conn, stamped, stamped)
    result = await _insert_live_batch.execute(
        conn,
        symbols=list(symbols),
        prices=list(prices),
        volumes=list(volumes),
        timestamps=list(timestamps),
        stamped=stamped,
        horizon=stamped - LIVE_RETENTION,
        leader_pid=leader_pid,
        lock_key=lock_key,
        channel=LIVE_CHANNEL,
        stamp_text=stamped.isoformat(),
    )
    size: int = result.scalar_one()
    return size


# Venue trades, each stored at most once: a re-delivered message or an overlapping recovery
# conflicts on uq_trades_symbol_venue_trade_id_timestamp. What the writer needs to know of
# the rows stored comes back summed per symbol: a batch of thousands returns a row a symbol,
# not a row a trade. Marked `live`: streams send them (`persistence.batches`).
_SUMMARY = """
    SELECT s.symbol, count(*), min(s.id), max(s.id),
           min(s.timestamp) FILTER (WHERE s.timestamp < w.materialised),
           max(s.timestamp) FILTER (WHERE s.timestamp < w.materialised),
           count(*) FILTER (WHERE s.timestamp <= w.complete)
    FROM {stored} s
    LEFT JOIN unnest(
        CAST(:marked AS varchar[]), CAST(:materialised AS timestamptz[]),
        CAST(:complete AS timestamptz[])
    ) AS w(symbol, materialised, complete) ON w.symbol = s.symbol
    GROUP BY s.symbol
"""
_MARK_TYPES: dict[str, TypeEngine[Any]] = {
    "marked": ARRAY(String),
    "materialised": ARRAY(DateTime(timezone=True)),
    "complete": ARRAY(DateTime(timezone=True)),
}
# Tried first: the feed already drops what it handed over before, so a batch rarely holds a
# stored trade. COPY stores the rows for half the wall time of `INSERT … SELECT FROM unnest`
# (100,000 rows: 0.7-0.8 s against 1.25-1.4 s, bench/README.md), and then they are read back
# by their ids: drawn after `:after`, up to this session's last, marked `live` (an import
# drawing ids meanwhile marks none), within the batch's times (the partitions it touched).
_COPIED = _SUMMARY.format(
    stored="""(
        SELECT id, symbol, timestamp FROM trades
        WHERE id > :after AND id <= currval('trades_id_seq') AND live
          AND timestamp >= :oldest AND timestamp <= :newest
    )"""
)
_summarise_copied = statement(
    _COPIED, after=BigInteger(), oldest=TIMESTAMP, newest=TIMESTAMP, **_MARK_TYPES
)
_ids_after = text("SELECT nextval('trades_id_seq')")
_COPY_COLUMNS = ("symbol", "price", "volume", "timestamp", "venue_trade_id", "side", "live")
# A conflict rolls the COPY back and the batch goes again, skipping what is stored.
_insert_new_trades = statement(
    """
    WITH stored AS (
        INSERT INTO trades (symbol, price, volume, timestamp, venue_trade_id, side, live)
        SELECT *, true FROM unnest(
            CAST(:symbols AS varchar[]), CAST(:prices AS numeric[]),
            CAST(:volumes AS numeric[]), CAST(:timestamps AS timestamptz[]),
            CAST(:ids AS text[]), CAST(:sides AS text[])
        )
        ON CONFLICT DO NOTHING
        RETURNING id, symbol, timestamp
    )
    """
    + _SUMMARY.format(stored="stored"),
    symbols=ARRAY(String),
    prices=ARRAY(Numeric),
    volumes=ARRAY(Numeric),
    timestamps=ARRAY(DateTime(timezone=True)),
    ids=ARRAY(String),
    sides=ARRAY(String),
    **_MARK_TYPES,
)


class StoredTrades(NamedTuple):
    """What one symbol's rows of an insert stored."""

    symbol: str
    stored: int
    first_id: int
    last_id: int
    # The earliest and latest stored before the symbol's `materialised` mark (None: none).
    revised_from: datetime | None
    revised_to: datetime | None
    # Stored at or before the symbol's `complete` mark.
    late: int


async def insert_trades(
    conn: AsyncConnection,
    trades: Sequence[VenueTrade],
    *,
    materialised: Mapping[str, datetime] | None = None,
    complete: Mapping[str, datetime] | None = None,
) -> list[StoredTrades]:
    """Store a live batch's trades not stored yet (by symbol, venue trade id and timestamp;
    trades without a venue id are always stored), marked `live`, in the caller's transaction
    (the batch's), ids in the order given; returns per symbol what was stored, judged against
    the `materialised` and `complete` marks. The partitions of their months are created when
    missing."""
    if not trades:
        return []
    timestamps = [trade.timestamp for trade in trades]
    oldest, newest = min(timestamps), max(timestamps)
    await ensure_partitions(conn, oldest, newest)
    marked = sorted({*(materialised or {}), *(complete or {})})
    marks = {
        "marked": marked,
        "materialised": [(materialised or {}).get(symbol) for symbol in marked],
        "complete": [(complete or {}).get(symbol) for symbol in marked],
    }
    try:
        async with conn.begin_nested():
            after = (await conn.execute(_ids_after)).scalar_one()
            copy = await driver_connection(conn)
            await copy.copy_records_to_table(
                "trades", records=[(*trade, True) for trade in trades], columns=_COPY_COLUMNS
            )
            result = await _summarise_copied.execute(
                conn, after=after, oldest=oldest, newest=newest, **marks
            )
    except asyncpg.UniqueViolationError:
        symbols, prices, volumes, _, ids, sides = zip(*trades, strict=True)
        result = await _insert_new_trades.execute(
            conn,
            symbols=list(symbols),
            prices=list(prices),
            volumes=list(volumes),
            timestamps=timestamps,
            ids=list(ids),
            sides=list(sides),
            **marks,
        )
    return [StoredTrades._make(row) for row in result]


_OLDEST = """
    SELECT timestamp, price FROM trades WHERE symbol = :symbol {bound}
    ORDER BY timestamp, id LIMIT 1
"""
_OLDEST_BEFORE = statement(
    _OLDEST.format(bound="AND timestamp < :before"), symbol=String, before=TIMESTAMP
)
_OLDEST_EVER = statement(_OLDEST.format(bound=""), symbol=String)


async def oldest_trade(conn: Connection, symbol: str) -> tuple[datetime, Decimal] | None:
    """Time and price of the symbol's oldest trade (where a backfill has to stop): in the
    oldest month first (planned alone), in all of history only when it has none there."""
    before = await oldest_month_end(conn)
    row = None
    if before is not None:
        row = await _OLDEST_BEFORE.fetchrow(conn, symbol=symbol, before=before)
    if row is None:
        row = await _OLDEST_EVER.fetchrow(conn, symbol=symbol)
    return (row[0], row[1]) if row is not None else None
