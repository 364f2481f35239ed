"""Reading Server-Sent Events the way a client does, and what the database says they should
carry, for the stream tests."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import URL

from tests.support import dsn

__all__ = [
    "TRADES_AFTER",
    "Event",
    "consuming",
    "fetch",
    "parse_events",
    "read_events",
    "stream_data",
]

# The trades a stream of `symbols` carries after the event (timestamp, id): $1..$3, limit $4.
TRADES_AFTER = """
    SELECT * FROM trades WHERE symbol = ANY($1) AND (timestamp, id) > ($2, $3)
    ORDER BY timestamp, id LIMIT $4
"""


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    id: str | None
    data: dict[str, Any]


def read_events(response: httpx.Response, *, comments: list[str] | None = None) -> Iterator[Event]:
    """The events of an SSE body as they arrive (comments collected on the side)."""
    return parse_events(response.iter_lines(), comments=comments)


def parse_events(lines: Iterable[str], *, comments: list[str] | None = None) -> Iterator[Event]:
    """The events of the lines of an SSE body (comments collected on the side)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:
            yield Event(fields["event"], fields.get("id"), json.loads(fields["data"]))
            fields = {}
        else:
            fields = {}  # a block without data (e.g. `retry:`) dispatches nothing


@contextlib.contextmanager
def consuming(
    url: str,
    params: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> Iterator[list[Event]]:
    """A client reading the stream at `url` on a thread of its own for the length of the block:
    yields the list its events arrive in. It stops at the first event after the block (or at
    the stream's end); its failure fails the block."""
    events: list[Event] = []
    stop = threading.Event()

    def consume() -> None:
        with httpx.stream("GET", url, params=params, headers=headers, timeout=timeout) as response:
            assert response.status_code == 200, response.read()
            for event in read_events(response):
                events.append(event)
                if stop.is_set():
                    return

    with ThreadPoolExecutor(1) as thread:
        consumer = thread.submit(consume)
        try:
            yield events
        finally:
            stop.set()
        consumer.result(timeout=timeout)


async def fetch(url: URL, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn(url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def stream_data(row: asyncpg.Record) -> dict[str, Any]:
    """A stored trade as the `data` of its `trade` event."""
    return {
        "id": row["id"],
        "symbol": row["symbol"],
        "price": float(row["price"]),
        "volume": float(row["volume"]),
        "timestamp": row["timestamp"].isoformat().replace("+00:00", "Z"),
        "venue_trade_id": row["venue_trade_id"],
        "side": row["side"],
    }
