"""Database reads that streams wanting the same answer share: one read per batch, not per stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

__all__ = ["SharedReads"]

T = TypeVar("T")
Position = tuple[datetime, int]

# A read nobody asked for again in this long is forgotten (its key moved on, e.g. to the next
# open bucket); checked whenever a read starts.
_FORGET_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class _Read:
    position: Position | None
    started: float
    task: asyncio.Future[Any]


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Every waiter may have gone (their clients disconnected): the failure is theirs to see,
    # not the event loop's "exception never retrieved".
    if not task.cancelled():
        task.exception()


class SharedReads:
    """Reads by key. A caller names the newest live batch the answer must include (`heard`,
    by the broadcaster's position) and the moment from which the answer must be read
    (`since`, event-loop time, for what time alone changes); a read under way or done that
    started late enough with at least that position is shared instead of read again."""

    def __init__(self, position: Callable[[], Position | None]) -> None:
        self._position = position
        self._reads: dict[Hashable, _Read] = {}

    async def read(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[T]],
        *,
        heard: Position | None,
        since: float,
    ) -> T:
        read = self._reads.get(key)
        if read is None or not self._serves(read, heard, since):
            read = self._start(key, fetch)
        # Shielded: a stream that goes away (cancelling its wait) must not cancel the read
        # the other streams wait for.
        result: T = await asyncio.shield(read.task)
        return result

    def _serves(self, read: _Read, heard: Position | None, since: float) -> bool:
        if read.started < since:
            return False
        if read.task.done() and (read.task.cancelled() or read.task.exception() is not None):
            return False
        return heard is None or (read.position is not None and read.position >= heard)

    def _start(self, key: Hashable, fetch: Callable[[], Awaitable[Any]]) -> _Read:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._reads = {k: r for k, r in self._reads.items() if r.started >= now - _FORGET_SECONDS}
        # The position before the read starts: every batch up to it is in the database read.
        position = self._position()
        task = asyncio.ensure_future(fetch())
        task.add_done_callback(_retrieve)
        read = self._reads[key] = _Read(position, now, task)
        return read
