"""Several service processes on one database, as Cloud Run runs them: one ingester at a time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from tests.conftest import create_database, drop_database
from tests.e2e.sse import read_events

INTERVAL = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Instance:
    """One `mdp serve` process."""

    def __init__(self, database: URL) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": database.render_as_string(hide_password=False),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "INGESTION_INTERVAL_SECONDS": str(INTERVAL),
            "LOG_LEVEL": "WARNING",
        }
        # A file, not a pipe: nobody reads while it runs, and a full pipe would block it.
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mdp.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )

    def status(self) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{self.base}/status/ingestion", timeout=2)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self.stderr.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s")
        time.sleep(0.1)


def leaders(instances: list[Instance]) -> list[Instance]:
    return [i for i in instances if (i.status() or {}).get("role") == "leader"]


async def batch_times(database: URL) -> list[datetime]:
    """The distinct batch timestamps written so far, in order (a batch has one timestamp)."""
    conn = await asyncpg.connect(database.set(drivername="postgresql").render_as_string(False))
    try:
        rows = await conn.fetch("SELECT DISTINCT timestamp FROM trades ORDER BY 1")
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM (SELECT symbol, timestamp, price, volume FROM trades "
            "GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) AS d"
        )
    finally:
        await conn.close()
    assert duplicates == 0
    return [row[0] for row in rows]


@pytest.fixture
async def database(server_url: URL) -> AsyncIterator[URL]:
    url = await create_database(server_url)
    yield url
    await drop_database(server_url, url)


@pytest.fixture
def start(database: URL) -> Iterator[Callable[[int], list[Instance]]]:
    started: list[Instance] = []

    def launch(count: int) -> list[Instance]:
        batch = [Instance(database) for _ in range(count)]
        started.extend(batch)
        for instance in batch:
            wait_for("an instance answering", instance.status)
        return batch

    yield launch
    for instance in started:
        instance.stop()


@pytest.mark.parametrize("count", [2, 3])
async def test_only_one_of_several_instances_ingests(
    database: URL, start: Callable[[int], list[Instance]], count: int
) -> None:
    instances = start(count)
    wait_for("one leader", lambda: len(leaders(instances)) == 1)
    before = len(await batch_times(database))
    time.sleep(12 * INTERVAL)

    times = await batch_times(database)
    (leader,) = leaders(instances)
    standbys = [i.status() for i in instances if i is not leader]
    assert all(s is not None and s["role"] == "standby" for s in standbys)
    assert all(s is not None and s["state"] == "standby" for s in standbys)
    # One ingester's cadence: about one batch per interval, not `count` of them.
    new = times[before:]
    assert 6 <= len(new) <= 14
    spacing = [b - a for a, b in zip(new, new[1:], strict=False)]
    assert min(spacing) >= timedelta(seconds=INTERVAL / 2)


async def test_a_standby_takes_over_within_two_intervals_when_the_leader_is_killed(
    database: URL, start: Callable[[int], list[Instance]]
) -> None:
    instances = start(3)
    (leader,) = wait_for("one leader", lambda: leaders(instances) or None)
    time.sleep(3 * INTERVAL)
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(timeout=10)
    killed_at = time.monotonic()
    survivors = [i for i in instances if i is not leader]

    (successor,) = wait_for("a new leader", lambda: leaders(survivors) or None, timeout=10)
    took_over = time.monotonic() - killed_at
    time.sleep(4 * INTERVAL)

    times = await batch_times(database)
    assert took_over <= 2 * INTERVAL + 1.0  # one retry interval, plus process scheduling
    assert (successor.status() or {})["batches_total"] >= 2
    # No gap in the data longer than the hand-over itself.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= timedelta(seconds=2 * INTERVAL + 1.5)


async def test_sigterm_exits_within_grace_and_hands_leadership_over(
    database: URL, start: Callable[[int], list[Instance]]
) -> None:
    instances = start(2)
    (leader,) = wait_for("one leader", lambda: leaders(instances) or None)
    (standby,) = [i for i in instances if i is not leader]
    time.sleep(3 * INTERVAL)

    leader.process.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    leader.process.wait(timeout=10)
    exited_after = time.monotonic() - stopped_at
    wait_for("the standby leading", lambda: leaders([standby]) or None, timeout=5)

    stderr = leader.stderr_text()
    assert exited_after < 8
    assert "Traceback" not in stderr
    # Every batch is whole: each timestamp has one trade count per symbol range (1..3).
    conn = await asyncpg.connect(database.set(drivername="postgresql").render_as_string(False))
    try:
        per_batch = await conn.fetch(
            "SELECT timestamp, count(DISTINCT symbol) FROM trades GROUP BY 1 ORDER BY 1"
        )
    finally:
        await conn.close()
    assert per_batch and all(symbols == 5 for _, symbols in per_batch)


def _stream_trades(instance: Instance, params: dict[str, Any]) -> Any:
    return httpx.stream("GET", f"{instance.base}/stream/trades", params=params, timeout=30)


async def test_a_stream_on_a_standby_carries_every_trade_across_a_failover(
    database: URL, start: Callable[[int], list[Instance]]
) -> None:
    instances = start(2)
    (leader,) = wait_for("one leader", lambda: leaders(instances) or None)
    (watcher,) = [i for i in instances if i is not leader]
    received: list[dict[str, Any]] = []
    killed_at: datetime | None = None
    wait_for("a first batch", lambda: (leader.status() or {}).get("batches_total"))
    with _stream_trades(watcher, {"symbols": "AAPL,MSFT", "duration": 6 * INTERVAL + 3}) as r:
        assert r.status_code == 200
        for event in read_events(r):
            received.append(event.data)
            if killed_at is None and len(received) >= 4:
                leader.process.send_signal(signal.SIGKILL)
                killed_at = datetime.fromisoformat(event.data["timestamp"])
    assert killed_at is not None
    # Trades from the successor arrived on the same stream (timestamps well after the kill).
    assert datetime.fromisoformat(received[-1]["timestamp"]) > killed_at + timedelta(
        seconds=2 * INTERVAL
    )
    conn = await asyncpg.connect(database.set(drivername="postgresql").render_as_string(False))
    try:
        stored = await conn.fetch(
            "SELECT id FROM trades WHERE symbol IN ('AAPL', 'MSFT') AND id BETWEEN $1 AND $2 "
            "ORDER BY timestamp, id",
            received[0]["id"],
            received[-1]["id"],
        )
    finally:
        await conn.close()
    # Every trade once, in order: no gap at the hand-over, no duplicate.
    assert [t["id"] for t in received] == [row["id"] for row in stored]


def test_sigterm_ends_open_streams_within_the_grace(
    start: Callable[[int], list[Instance]],
) -> None:
    (instance,) = start(1)
    wait_for("a first batch", lambda: (instance.status() or {}).get("batches_total"))
    with _stream_trades(instance, {"symbols": "AAPL"}) as r:
        assert r.status_code == 200
        events = read_events(r)
        next(events)
        instance.process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        remaining = list(events)
        ended_after = time.monotonic() - stopped_at
    assert all(e.kind == "trade" for e in remaining)
    assert ended_after < 3
    instance.process.wait(timeout=10)
    assert "Traceback" not in instance.stderr_text()
