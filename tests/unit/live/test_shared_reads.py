"""Reads shared by streams: once per batch heard, again for what only time changes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from live.shared_reads import SharedReads

T0 = datetime(2026, 1, 2, tzinfo=UTC)


class Database:
    """Counts reads; each answers with its number, after `gate` opens."""

    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def fetch(self) -> int:
        self.reads += 1
        number = self.reads
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("gone")
        return number


async def test_streams_waking_for_one_batch_share_one_read() -> None:
    db, position = Database(), (T0, 5)
    shared = SharedReads(lambda: position)
    db.gate.clear()
    waiting = [
        asyncio.create_task(shared.read("k", db.fetch, heard=(T0, 5), since=0)) for _ in range(5)
    ]
    await asyncio.sleep(0)
    db.gate.set()

    assert await asyncio.gather(*waiting) == [1] * 5
    assert await shared.read("k", db.fetch, heard=(T0, 4), since=0) == 1
    assert db.reads == 1


async def test_a_newer_batch_a_later_moment_or_another_key_read_again() -> None:
    db, position = Database(), (T0, 5)
    shared = SharedReads(lambda: position)
    assert await shared.read("k", db.fetch, heard=(T0, 5), since=0) == 1

    # A batch heard after the read started: the read may not hold it.
    assert await shared.read("k", db.fetch, heard=(T0, 6), since=0) == 2
    position = (T0, 6)
    assert await shared.read("k", db.fetch, heard=(T0, 6), since=0) == 3
    # Time alone made the answer change: only a read started from then on will do.
    later = asyncio.get_running_loop().time() + 1
    assert await shared.read("k", db.fetch, heard=(T0, 6), since=later) == 4
    assert await shared.read("other", db.fetch, heard=None, since=0) == 5


async def test_a_stream_going_away_does_not_cancel_the_read_others_wait_for() -> None:
    db = Database()
    shared = SharedReads(lambda: None)
    db.gate.clear()
    leaving = asyncio.create_task(shared.read("k", db.fetch, heard=None, since=0))
    staying = asyncio.create_task(shared.read("k", db.fetch, heard=None, since=0))
    await asyncio.sleep(0)
    leaving.cancel()
    db.gate.set()

    assert await staying == 1
    assert leaving.cancelled()


async def test_a_failed_read_fails_its_waiters_and_is_not_shared_afterwards() -> None:
    db = Database()
    shared = SharedReads(lambda: None)
    db.fail = True
    with pytest.raises(ConnectionError):
        await shared.read("k", db.fetch, heard=None, since=0)
    db.fail = False

    assert await shared.read("k", db.fetch, heard=None, since=0) == 2
