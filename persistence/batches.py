"""Live batches: their NOTIFY payloads, the trades they carried, each symbol's newest trade.

A live batch is exactly the trades whose id lies in the batch's [first_id, last_id] and that
its writer marked `live`. History (backfill, `mdp import`) takes ids from the same sequence
while a batch is written, so its rows can fall in a batch's range (venue ids and all), but
it is never marked; and the ranges of two batches never overlap (each claims the ingestion
row before it takes ids, so one waits for the other to commit). Streams send and resume
from `live_batches`, so history can never reach a live client.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine

from persistence.statements import TIMESTAMP, Connection, Row, statement
from persistence.trades import RECENT, TradeRow

__all__ = [
    "START",
    "BatchNotice",
    "latest_trades",
    "newest_after",
    "newest_position",
    "notice",
    "oldest_live_batch",
    "parse_notice",
    "position",
    "trades_after",
]

# The position before every live batch (when none has been written yet).
START = datetime(1, 1, 1, tzinfo=UTC)

_COLUMNS = (
    "t.id, t.symbol, trim_scale(t.price), trim_scale(t.volume), t.timestamp, t.venue_trade_id, "
    "t.side"
)

# The live trades of the batches after a position (stamp, id), and up to one where `{upto}`
# bounds them. The position's own batch is included from the trade after `id`, so a resume
# is exact mid-batch. A batch a revision before migration 0013 wrote (during a deploy) is not
# marked: its trades are found as that revision found them.
_LIVE_AFTER = """
    FROM live_batches b
    JOIN trades t ON t.id BETWEEN b.first_id AND b.last_id
        AND CASE WHEN b.rows_marked THEN t.live
                 ELSE t.timestamp = b.stamped OR t.venue_trade_id IS NOT NULL END
    WHERE b.stamped >= :stamped AND (b.stamped, t.id) > (:stamped, :id){upto}
"""
_UPTO = " AND b.stamped <= :upto_stamped AND (b.stamped, t.id) <= (:upto_stamped, :upto_id)"
# Those trades in stream order: commit order, batch by batch, by id within one. A synthetic
# batch's trades carry its stamp; a venue batch's keep their venue timestamps (recovered ones
# older than live ones committed before).
_AFTER = f"""
    SELECT {_COLUMNS}, b.stamped {_LIVE_AFTER}
      AND (:symbols IS NULL OR t.symbol = ANY(:symbols))
    ORDER BY b.stamped, t.id
    LIMIT :limit
"""
_POSITION_TYPES: dict[str, TypeEngine[Any]] = {"stamped": TIMESTAMP, "id": BigInteger()}
_BOUND_TYPES: dict[str, TypeEngine[Any]] = {"upto_stamped": TIMESTAMP, "upto_id": BigInteger()}
_PAGE_TYPES: dict[str, TypeEngine[Any]] = {"symbols": ARRAY(String), "limit": Integer()}
_AFTER_OPEN = statement(_AFTER.format(upto=""), **_POSITION_TYPES, **_PAGE_TYPES)
_AFTER_BOUNDED = statement(
    _AFTER.format(upto=_UPTO), **_POSITION_TYPES, **_PAGE_TYPES, **_BOUND_TYPES
)
# The newest trade (by timestamp, id) of each symbol among them: a row a symbol, however many
# trades the batches hold.
_NEWEST_AFTER = statement(
    f"""
    SELECT DISTINCT ON (t.symbol) {_COLUMNS}, b.stamped {_LIVE_AFTER.format(upto=_UPTO)}
    ORDER BY t.symbol, t.timestamp DESC, t.id DESC
""",
    **_POSITION_TYPES,
    **_BOUND_TYPES,
)

# Each known symbol with its newest trade (NULLs without trades): one index probe per symbol.
_LATEST = """
    SELECT s.symbol, {columns}
    FROM symbols s
    LEFT JOIN LATERAL (
        SELECT * FROM trades WHERE trades.symbol = s.symbol {bound}
        ORDER BY trades.timestamp DESC, trades.id DESC LIMIT 1
    ) t ON true
    WHERE :symbols IS NULL OR s.symbol = ANY(:symbols)
"""
# First within RECENT of now: the planner prunes to the partitions of that stretch, and it
# holds every symbol that traded lately; only the others are looked for in all of history.
_LATEST_SINCE = statement(
    _LATEST.format(columns=_COLUMNS, bound="AND trades.timestamp >= :since"),
    symbols=ARRAY(String),
    since=TIMESTAMP,
)
_LATEST_EVER = statement(_LATEST.format(columns=_COLUMNS, bound=""), symbols=ARRAY(String))


_OLDEST_BATCH = statement("SELECT min(stamped) FROM live_batches")
_NEWEST_BATCH = statement("SELECT stamped, last_id FROM live_batches ORDER BY stamped DESC LIMIT 1")


class BatchNotice(NamedTuple):
    """What a NOTIFY says: the batch's stamp and its id range (None, None: it stored no
    trade), and the symbols whose candles it closed by moving their watermark into a later
    minute (None: too many to name, any symbol's may have). A few dozen bytes, or a few
    hundred with symbols named; never past NOTIFY's 8,000."""

    stamped: datetime
    first_id: int | None
    last_id: int | None
    closed: frozenset[str] | None = frozenset()


# Symbols named in a notice take at most this many bytes (NOTIFY allows 8,000 in all).
_NAMED_BYTES = 7_000


def notice(stamped: datetime, ids: tuple[int, int] | None, closed: Collection[str] = ()) -> str:
    """The payload announcing a venue batch: `stamp first last [symbols]`, with `- -` for a
    batch that stored no trade and `*` for symbols too many to name."""
    first, last = (str(ids[0]), str(ids[1])) if ids is not None else ("-", "-")
    parts = [stamped.isoformat(), first, last]
    if closed:
        named = ",".join(sorted(closed))
        parts.append(named if len(named) <= _NAMED_BYTES else "*")
    return " ".join(parts)


def parse_notice(payload: str) -> BatchNotice | None:
    """The notice in a payload written by `insert_live_batch` or `notice`; None when it is
    not one."""
    stamp, first_id, last_id, *named = [*payload.split(" "), "", "", ""][:4]
    try:
        stamped = datetime.fromisoformat(stamp)
        ids = (int(first_id), int(last_id)) if (first_id, last_id) != ("-", "-") else None
    except ValueError:
        return None
    names = frozenset(named[0].split(",")) if named[0] else frozenset()
    closed = None if names == {"*"} else names
    first, last = ids if ids is not None else (None, None)
    return BatchNotice(stamped, first, last, closed)


def _trade(row: Row, offset: int = 0) -> TradeRow:
    # Every field but `stamped`, which only live reads add (after them).
    return TradeRow(*(row[offset + i] for i in range(len(TradeRow._fields) - 1)))


def position(trade: TradeRow) -> tuple[datetime, int]:
    """Where a live trade stands in stream (commit) order: its batch's stamp and its id."""
    return (trade.stamped or trade.timestamp), trade.id


async def trades_after(
    conn: Connection,
    after: tuple[datetime, int],
    *,
    symbols: Collection[str] | None = None,
    upto: tuple[datetime, int] | None = None,
    limit: int,
) -> list[TradeRow]:
    """Live trades after the position `after` = (stamp, id) in stream order, of `symbols`
    (every symbol when None), up to the position `upto` (inclusive; no bound when None), at
    most `limit`, each with its batch's stamp."""
    values = {
        "stamped": after[0],
        "id": after[1],
        "symbols": sorted(symbols) if symbols is not None else None,
        "limit": limit,
    }
    if upto is None:
        rows = await _AFTER_OPEN.fetch(conn, **values)
    else:
        rows = await _AFTER_BOUNDED.fetch(conn, **values, upto_stamped=upto[0], upto_id=upto[1])
    return [TradeRow(*row) for row in rows]


async def newest_after(
    conn: Connection, after: tuple[datetime, int], upto: tuple[datetime, int]
) -> list[TradeRow]:
    """The newest trade of each symbol among the live trades after the position `after` up to
    `upto` (inclusive), each with its batch's stamp."""
    rows = await _NEWEST_AFTER.fetch(
        conn, stamped=after[0], id=after[1], upto_stamped=upto[0], upto_id=upto[1]
    )
    return [TradeRow(*row) for row in rows]


async def oldest_live_batch(conn: Connection) -> datetime | None:
    """The stamp of the oldest batch still replayable (None when there is none)."""
    stamp: datetime | None = await _OLDEST_BATCH.fetchval(conn)
    return stamp


async def newest_position(conn: Connection) -> tuple[datetime, int]:
    """The position after the newest live batch: (its stamp, its last id), or START."""
    row = await _NEWEST_BATCH.fetchrow(conn)
    return (row[0], row[1]) if row is not None else (START, 0)


async def latest_trades(
    conn: Connection, symbols: Sequence[str] | None = None
) -> dict[str, TradeRow | None]:
    """Every known symbol among `symbols` (all when None) with its newest trade, or None when
    it has none yet; unknown symbols are absent."""
    rows = await _LATEST_SINCE.fetch(conn, symbols=symbols, since=datetime.now(UTC) - RECENT)
    latest = {row[0]: (_trade(row, 1) if row[1] is not None else None) for row in rows}
    quiet = [symbol for symbol, trade in latest.items() if trade is None]
    if quiet:
        rows = await _LATEST_EVER.fetch(conn, symbols=quiet)
        latest.update((row[0], _trade(row, 1) if row[1] is not None else None) for row in rows)
    return latest
