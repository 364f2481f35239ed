"""Venue feed batches: their trades, the watermarks they make true and the ingesting intervals,
committed together; and the marks a new leader resumes from.

A venue batch is fenced and ordered like a live batch (`persistence.trades`): written only
while the writer holds the leader lock, stamped later than every batch before it, recorded in
`live_batches` and announced on `LIVE_CHANNEL` by its own transaction. Its trades keep their
venue timestamps; streams find them by the batch's id range and their `live` mark
(`persistence.batches`).

A batch never waits for history being written beside it (`mdp import`, `mdp backfill`):
those hold the symbol's candle lock from before their first row until they commit, minutes
for a big file, while the batch holds the ingestion row every symbol's feed needs. Only a
trade at or below what a history writer may write (the symbol's committed watermark, see
`persistence.imports`), or before its materialised candles, can meet such a writer's rows or
need its candle lock; for those the lock is only tried. When it is taken, they wait for a
later batch (the caller puts them back) with the symbol's watermark where it was, and the
rest of the batch commits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import BigInteger, DateTime, Integer, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.batches import notice
from persistence.finality import BASE, INTERVALS, bucket_floor
from persistence.materialise import materialise_final, rematerialise, try_lock_candles
from persistence.trades import (
    LEADER_HELD,
    LIVE_CHANNEL,
    LIVE_RETENTION,
    VenueTrade,
    insert_trades,
)

__all__ = [
    "StoredMark",
    "VenueBatch",
    "insert_venue_batch",
    "record_intervals",
    "stored_marks",
]


# Before every trade: "nothing is materialised / complete yet"; after every trade.
_NEVER = datetime.min.replace(tzinfo=UTC)
_ALWAYS = datetime.max.replace(tzinfo=UTC)


def _minute(moment: datetime) -> datetime:
    return bucket_floor(moment, INTERVALS[BASE]) if moment > _NEVER else moment


class StoredMark(NamedTuple):
    """Every trade id of the symbol up to `last_trade_id` is stored, and every trade stamped
    up to `complete_through`; `since` began the current unbroken stretch."""

    last_trade_id: int
    complete_through: datetime | None
    since: datetime


class VenueBatch(NamedTuple):
    stored: int
    # Positions in the batch of the trades not stored because history being written holds
    # their symbol's candles: the caller offers them again in a later batch.
    deferred: list[int]
    # Per symbol, late prints stored: stamped at or before the watermark already committed
    # (their candles are revised where already materialised).
    late: dict[str, int]
    # Per symbol, trades not stored because they already were (re-delivered, recovered twice).
    duplicates: dict[str, int]


_claim = text(
    f"""
    UPDATE ingestion_state SET last_batch_at = :stamped
    WHERE id = 1 AND last_batch_at < :stamped AND {LEADER_HELD}
    RETURNING 1
    """
).bindparams(
    bindparam("stamped", type_=DateTime(timezone=True)),
    bindparam("leader_pid", type_=Integer),
    bindparam("lock_key", type_=BigInteger),
)

# Per symbol, before this batch: how far its candles are materialised (a trade before that
# revises them), how far its feed was complete (a trade at or before that is late) and how
# far an import may write (`persistence.imports`; NULL: no feed row, up to the clock).
_committed = text(
    """
    SELECT s.symbol, cw.candles_until, fw.complete_through,
           coalesce(fw.complete_through, fw.since)
    FROM unnest(CAST(:symbols AS varchar[])) AS s(symbol)
    LEFT JOIN candle_watermarks AS cw ON cw.symbol = s.symbol
    LEFT JOIN feed_watermarks AS fw ON fw.symbol = s.symbol
    """
).bindparams(bindparam("symbols", type_=ARRAY(String)))

_publish = text(
    """
    WITH pruned AS (DELETE FROM live_batches WHERE stamped < :horizon),
    recorded AS (
        INSERT INTO live_batches (stamped, first_id, last_id, rows_marked)
        VALUES (:stamped, :first, :last, true)
    )
    SELECT pg_notify(:channel, :payload)
    """
).bindparams(
    bindparam("stamped", type_=DateTime(timezone=True)),
    bindparam("horizon", type_=DateTime(timezone=True)),
    bindparam("first", type_=BigInteger),
    bindparam("last", type_=BigInteger),
    bindparam("channel", type_=String),
    bindparam("payload", type_=String),
)
# A batch that stored no trade but closed candles (a quiet symbol's watermark moved on).
_notify = text("SELECT pg_notify(:channel, :payload)").bindparams(
    bindparam("channel", type_=String), bindparam("payload", type_=String)
)

# A mark only moves forward within a stretch; a later stretch (a venue that restarted its
# ids) replaces it.
_marks = text(
    """
    INSERT INTO feed_watermarks AS w (symbol, feed, last_trade_id, complete_through, since)
    SELECT symbol, :feed, last_trade_id, complete_through, since FROM unnest(
        CAST(:symbols AS varchar[]), CAST(:ids AS bigint[]),
        CAST(:through AS timestamptz[]), CAST(:since AS timestamptz[])
    ) AS m(symbol, last_trade_id, complete_through, since)
    ON CONFLICT (symbol) DO UPDATE SET
        feed = EXCLUDED.feed,
        last_trade_id = CASE WHEN EXCLUDED.since > w.since THEN EXCLUDED.last_trade_id
                             ELSE greatest(w.last_trade_id, EXCLUDED.last_trade_id) END,
        complete_through = CASE WHEN EXCLUDED.since > w.since THEN EXCLUDED.complete_through
                                ELSE greatest(w.complete_through, EXCLUDED.complete_through)
                           END,
        since = greatest(w.since, EXCLUDED.since),
        updated_at = now()
    """
).bindparams(
    bindparam("symbols", type_=ARRAY(String)),
    bindparam("ids", type_=ARRAY(BigInteger)),
    bindparam("through", type_=ARRAY(DateTime(timezone=True))),
    bindparam("since", type_=ARRAY(DateTime(timezone=True))),
    bindparam("feed", type_=String),
)

# An interval is keyed by where its stretch started: it grows as the stretch goes on.
_intervals = text(
    """
    INSERT INTO ingestion_intervals AS i (symbol, feed, started_at, complete_through)
    SELECT symbol, :feed, since, complete_through FROM unnest(
        CAST(:symbols AS varchar[]), CAST(:since AS timestamptz[]),
        CAST(:through AS timestamptz[])
    ) AS m(symbol, since, complete_through)
    WHERE complete_through >= since
    ON CONFLICT (symbol, started_at) DO UPDATE
        SET complete_through = greatest(i.complete_through, EXCLUDED.complete_through)
    """
).bindparams(
    bindparam("symbols", type_=ARRAY(String)),
    bindparam("since", type_=ARRAY(DateTime(timezone=True))),
    bindparam("through", type_=ARRAY(DateTime(timezone=True))),
    bindparam("feed", type_=String),
)

_stored = text(
    "SELECT symbol, last_trade_id, complete_through, since FROM feed_watermarks WHERE feed = :feed"
)


async def insert_venue_batch(
    conn: AsyncConnection,
    trades: Sequence[VenueTrade],
    marks: Mapping[str, StoredMark],
    *,
    feed: str,
    stamped: datetime,
    leader_pid: int | None,
    lock_key: int,
) -> VenueBatch | None:
    """Store `trades` (each venue trade once) and move `marks`, in the caller's transaction;
    None when refused (not the leader any more, or not newer than the last batch). A trade
    stored in a bucket already final revises that bucket's candles here (materialising the
    symbol's final buckets first if the leader has not yet); one already stored is counted as
    a duplicate, never as a late print. Trades whose symbol's candles history being written
    holds are left out (`deferred`), and so is that symbol's mark: never waited for."""
    claimed = (
        await conn.execute(
            _claim, {"stamped": stamped, "leader_pid": leader_pid, "lock_key": lock_key}
        )
    ).scalar_one_or_none()
    if claimed is None:
        return None
    offered = Counter(trade.symbol for trade in trades)
    committed = await conn.execute(_committed, {"symbols": sorted(offered.keys() | marks)})
    materialised: dict[str, datetime] = {}
    complete: dict[str, datetime] = {}
    # Up to where history may be written beside the feed (no feed row: up to the clock).
    writable: dict[str, datetime] = {}
    for symbol, candles_until, complete_through, importable in committed:
        if candles_until is not None:
            materialised[symbol] = candles_until
        if complete_through is not None:
            complete[symbol] = complete_through
        writable[symbol] = importable if importable is not None else _ALWAYS
    # Trades that need the symbol's candle lock: late prints (their candles are revised or
    # materialised here) and whatever history being written beside the feed may hold too.
    locking = [
        i
        for i, t in enumerate(trades)
        if t.timestamp <= writable[t.symbol] or t.timestamp < materialised.get(t.symbol, _NEVER)
    ]
    deferred: list[int] = []
    if locking:
        busy = await try_lock_candles(conn, sorted({trades[i].symbol for i in locking}))
        # Late prints into buckets final but not materialised yet: clients read those closed,
        # aggregated from trades. Stored as they were read first, so that the print revises
        # them (before the rows go in, as for a backfill: the leader's roll-up cannot miss
        # them).
        unstored = {
            t.symbol
            for t in (trades[i] for i in locking)
            if t.symbol not in busy
            and materialised.get(t.symbol, _NEVER) <= t.timestamp <= complete.get(t.symbol, _NEVER)
        }
        for symbol in sorted(unstored):
            materialised[symbol] = await materialise_final(conn, symbol)
        if busy:
            deferred = [i for i in locking if trades[i].symbol in busy]
            offered -= Counter(trades[i].symbol for i in deferred)
            waiting = set(deferred)
            trades = [t for i, t in enumerate(trades) if i not in waiting]
            # Their marks say every trade up to them is stored: not yet.
            marks = {s: m for s, m in marks.items() if s not in busy}
    stored = await insert_trades(conn, trades, materialised=materialised, complete=complete)
    # One notice a batch at most: its trades, and the symbols whose watermark it moves into a
    # later minute (a quiet symbol's final candle goes out now, not at a stream's heartbeat).
    closed = [
        symbol
        for symbol, mark in marks.items()
        if mark.complete_through is not None
        and _minute(mark.complete_through) > _minute(complete.get(symbol, _NEVER))
    ]
    if stored:
        first, last = min(s.first_id for s in stored), max(s.last_id for s in stored)
        await conn.execute(
            _publish,
            {
                "stamped": stamped,
                "horizon": stamped - LIVE_RETENTION,
                "first": first,
                "last": last,
                "channel": LIVE_CHANNEL,
                "payload": notice(stamped, (first, last), closed),
            },
        )
    elif closed:
        await conn.execute(
            _notify, {"channel": LIVE_CHANNEL, "payload": notice(stamped, None, closed)}
        )
    for summary in stored:
        if summary.revised_from is not None and summary.revised_to is not None:
            await rematerialise(conn, summary.symbol, summary.revised_from, summary.revised_to)
    if marks:
        symbols = sorted(marks)
        await conn.execute(
            _marks,
            {
                "symbols": symbols,
                "ids": [marks[s].last_trade_id for s in symbols],
                "through": [marks[s].complete_through for s in symbols],
                "since": [marks[s].since for s in symbols],
                "feed": feed,
            },
        )
        await record_intervals(
            conn,
            {
                symbol: (mark.since, mark.complete_through)
                for symbol, mark in marks.items()
                if mark.complete_through is not None
            },
            feed=feed,
        )
    duplicates = offered - Counter({s.symbol: s.stored for s in stored})
    late = {s.symbol: s.late for s in stored if s.late}
    return VenueBatch(sum(s.stored for s in stored), deferred, late, dict(duplicates))


async def record_intervals(
    conn: AsyncConnection, stretches: Mapping[str, tuple[datetime, datetime]], *, feed: str
) -> None:
    """Record that `feed` stored every trade of each symbol over its (since, through)
    stretch, in the caller's transaction (the one storing those trades): the interval that
    began at `since` grows to `through`, or starts there. `fill` reads these."""
    if not stretches:
        return
    symbols = sorted(stretches)
    await conn.execute(
        _intervals,
        {
            "symbols": symbols,
            "since": [stretches[s][0] for s in symbols],
            "through": [stretches[s][1] for s in symbols],
            "feed": feed,
        },
    )


async def stored_marks(conn: AsyncConnection, feed: str) -> dict[str, StoredMark]:
    """Where `feed` stands for each symbol it wrote: where a (new) leader resumes."""
    rows = (await conn.execute(_stored, {"feed": feed})).all()
    return {row[0]: StoredMark(row[1], row[2], row[3]) for row in rows}
