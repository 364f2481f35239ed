"""Candles without holes (`fill`): every bucket of a window, the empty ones marked, and never
filled across a time the symbol was not being ingested (such a bucket is a gap).

When a symbol was being ingested comes from `ingestion_intervals`, the stretches during which
its feed stored everything (written with the feed watermarks). A symbol without such a record
(history from `mdp backfill`, trades stored by hand) has no proof of ingestion: its empty buckets
are gaps, never a quiet market.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import String

from persistence.statements import TIMESTAMP, Connection, statement
from persistence.trades import RECENT

__all__ = ["FILLS", "Span", "fill_buckets", "ingested_spans", "last_trade_before"]

FILLS = ("none", "null", "previous")
Span = tuple[datetime, datetime]


_SPANS = statement(
    "SELECT started_at, complete_through FROM ingestion_intervals "
    "WHERE symbol = :symbol AND started_at <= :hi AND complete_through >= :lo "
    "ORDER BY started_at",
    symbol=String,
    lo=TIMESTAMP,
    hi=TIMESTAMP,
)
_BEFORE = (
    "SELECT timestamp, trim_scale(price) FROM trades "
    "WHERE symbol = :symbol AND timestamp < :moment {bound} "
    "ORDER BY timestamp DESC, id DESC LIMIT 1"
)
# Within RECENT first: planned on the partitions of that stretch only (see persistence.trades).
_BEFORE_SINCE = statement(
    _BEFORE.format(bound="AND timestamp >= :since"),
    symbol=String,
    moment=TIMESTAMP,
    since=TIMESTAMP,
)
_BEFORE_EVER = statement(_BEFORE.format(bound=""), symbol=String, moment=TIMESTAMP)


async def ingested_spans(conn: Connection, symbol: str, lo: datetime, hi: datetime) -> list[Span]:
    """The stretches [started_at, complete_through] of `symbol`'s ingestion meeting [lo, hi]."""
    rows = await _SPANS.fetch(conn, symbol=symbol, lo=lo, hi=hi)
    return [(row[0], row[1]) for row in rows]


async def last_trade_before(
    conn: Connection, symbol: str, moment: datetime
) -> tuple[datetime, Decimal] | None:
    """When the last trade before `moment` happened, and its price (`previous` starts from it)."""
    row = await _BEFORE_SINCE.fetchrow(conn, symbol=symbol, moment=moment, since=moment - RECENT)
    if row is None:
        row = await _BEFORE_EVER.fetchrow(conn, symbol=symbol, moment=moment)
    return None if row is None else (row[0], row[1])


def _covered(spans: Sequence[Span], lo: datetime, hi: datetime) -> bool:
    return any(start <= lo and hi <= through for start, through in spans)


def fill_buckets(
    rows: Sequence[Sequence[Any]],
    starts: Sequence[datetime],
    mode: str,
    *,
    horizon: datetime,
    spans: Sequence[Span],
    before: tuple[datetime, Decimal] | None,
) -> list[tuple[Any, ...]]:
    """Every bucket of `starts` (the last element ends the last bucket) as (timestamp, open,
    high, low, close, volume, vwap, trade_count, closed, revision, gap): `rows` (the same fields
    without `gap`) where trades happened; elsewhere null prices (`null`), or the last close
    carried forward (`previous`) as long as no gap lies between; a bucket the symbol was not
    being ingested through is a gap, with null prices (and an empty bucket was never revised)."""
    traded = {row[0]: tuple(row) for row in rows}
    carried: Decimal | None = None
    if before is not None and _covered(spans, before[0], starts[0]):
        carried = before[1]
    filled: list[tuple[Any, ...]] = []
    for start, end in zip(starts, starts[1:], strict=False):
        row = traded.get(start)
        if row is not None:
            filled.append((*row, False))
            carried = row[4]
            continue
        gap = not _covered(spans, start, end)
        if gap:
            carried = None
        price = carried if mode == "previous" else None
        filled.append((start, price, price, price, price, 0, None, 0, end <= horizon, 0, gap))
    return filled
