"""Several service processes on one database, as Cloud Run runs them: one ingester at a time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from tests.e2e.sse import read_events
from tests.support import MakeDatabase, Service, dsn, serve, wait_until

# Leadership, hand-over and shutdown are promised within intervals and seconds.
pytestmark = pytest.mark.timing

INTERVAL = 0.5


def status(instance: Service) -> dict[str, Any] | None:
    response = instance.get("/status/ingestion")
    return response.json() if response is not None and response.status_code == 200 else None


def leaders(instances: list[Service]) -> list[Service]:
    return [i for i in instances if (status(i) or {}).get("role") == "leader"]


def wait_for_batches(instance: Service, count: int) -> None:
    """Until `instance` has written `count` batches since it started."""
    wait_until(
        lambda: (status(instance) or {}).get("batches_total", 0) >= count,
        what=f"{count} batches",
        every=0.1,
    )


async def batch_times(database: URL) -> list[datetime]:
    """The distinct batch timestamps written so far, in order (a batch has one timestamp)."""
    conn = await asyncpg.connect(dsn(database))
    try:
        rows = await conn.fetch("SELECT DISTINCT timestamp FROM trades ORDER BY 1")
        # A stored batch is its stamp, committed by one transaction. Equal trades are no sign
        # of a duplicate (one batch may hold two alike: same stamp, a zero step); a stamp
        # written by two transactions is a batch stored twice.
        duplicates = await conn.fetchval(
            "SELECT count(*) FROM (SELECT timestamp FROM trades "
            "GROUP BY 1 HAVING count(DISTINCT xmin::text) > 1) AS d"
        )
    finally:
        await conn.close()
    assert duplicates == 0
    return [row[0] for row in rows]


@pytest.fixture
async def database(make_database: MakeDatabase) -> URL:
    """Empty until `serve()` makes each instance's API key in it (migrating it first)."""
    return await make_database(migrated=False)


@pytest.fixture
def start(database: URL) -> Iterator[Callable[[int], list[Service]]]:
    started: list[Service] = []
    with contextlib.ExitStack() as stack:

        def launch(count: int) -> list[Service]:
            env = {"INGESTION_INTERVAL_SECONDS": str(INTERVAL)}
            # All launched before any is awaited: they start (and migrate) side by side.
            batch = [stack.enter_context(serve(database, env, ready=None)) for _ in range(count)]
            started.extend(batch)
            for instance in batch:
                instance.wait_ready("/status/ingestion")
            return batch

        yield launch
        # Killed, not stopped: what is left of a test needs no graceful shutdown.
        for instance in started:
            if instance.process.poll() is None:
                instance.process.kill()


@pytest.mark.parametrize("count", [2, 3])
async def test_only_one_of_several_instances_ingests(
    database: URL, start: Callable[[int], list[Service]], count: int
) -> None:
    instances = start(count)
    (leader,) = wait_until(lambda: leaders(instances), what="one leader", every=0.1)
    before = len(await batch_times(database))
    started = time.monotonic()
    written = (status(leader) or {})["batches_total"]
    wait_for_batches(leader, written + 8)
    elapsed = time.monotonic() - started

    times = await batch_times(database)
    assert leaders(instances) == [leader]
    standbys = [status(i) for i in instances if i is not leader]
    assert all(s is not None and s["role"] == "standby" for s in standbys)
    assert all(s is not None and s["state"] == "standby" for s in standbys)
    # One ingester's cadence: about one batch per interval, not `count` of them.
    new = times[before:]
    assert 8 <= len(new) <= elapsed / INTERVAL + 2
    spacing = [b - a for a, b in zip(new, new[1:], strict=False)]
    assert min(spacing) >= timedelta(seconds=INTERVAL / 2)


async def test_a_standby_takes_over_within_two_intervals_when_the_leader_is_killed(
    database: URL, start: Callable[[int], list[Service]]
) -> None:
    instances = start(3)
    (leader,) = wait_until(lambda: leaders(instances), what="one leader", every=0.1)
    wait_for_batches(leader, 3)
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(timeout=10)
    killed_at = time.monotonic()
    survivors = [i for i in instances if i is not leader]

    (successor,) = wait_until(
        lambda: leaders(survivors), what="a new leader", timeout=10, every=0.1
    )
    took_over = time.monotonic() - killed_at
    wait_for_batches(successor, 3)

    times = await batch_times(database)
    assert took_over <= 2 * INTERVAL + 1.0  # one retry interval, plus process scheduling
    # No gap in the data longer than the hand-over itself.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) <= timedelta(seconds=2 * INTERVAL + 1.5)


async def test_sigterm_exits_within_grace_and_hands_leadership_over(
    database: URL, start: Callable[[int], list[Service]]
) -> None:
    instances = start(2)
    (leader,) = wait_until(lambda: leaders(instances), what="one leader", every=0.1)
    (standby,) = [i for i in instances if i is not leader]
    wait_for_batches(leader, 3)

    leader.process.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    leader.process.wait(timeout=10)
    exited_after = time.monotonic() - stopped_at
    wait_until(lambda: leaders([standby]), what="the standby leading", timeout=5, every=0.1)

    stderr = leader.output()
    assert exited_after < 8
    assert "Traceback" not in stderr
    # Every batch is whole: each stored stamp carries trades of all five symbols.
    conn = await asyncpg.connect(dsn(database))
    try:
        per_batch = await conn.fetch(
            "SELECT timestamp, count(DISTINCT symbol) FROM trades GROUP BY 1 ORDER BY 1"
        )
    finally:
        await conn.close()
    assert per_batch and all(symbols == 5 for _, symbols in per_batch)


def _stream_trades(instance: Service, params: dict[str, Any]) -> Any:
    return httpx.stream(
        "GET",
        f"{instance.base}/stream/trades",
        params=params,
        headers=instance.headers,
        timeout=30,
    )


async def test_a_stream_on_a_standby_carries_every_trade_across_a_failover(
    database: URL, start: Callable[[int], list[Service]]
) -> None:
    instances = start(2)
    (leader,) = wait_until(lambda: leaders(instances), what="one leader", every=0.1)
    (watcher,) = [i for i in instances if i is not leader]
    received: list[dict[str, Any]] = []
    killed_at: datetime | None = None
    wait_for_batches(leader, 1)
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
    conn = await asyncpg.connect(dsn(database))
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
    start: Callable[[int], list[Service]],
) -> None:
    (instance,) = start(1)
    wait_for_batches(instance, 1)
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
    assert "Traceback" not in instance.output()


def _mdp_keys(database: URL, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": database.render_as_string(hide_password=False)}
    done = subprocess.run(
        [sys.executable, "-m", "mdp.cli", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def _status_with(key: str, instance: Service) -> int:
    try:
        response = httpx.get(f"{instance.base}/symbols", headers={"X-API-Key": key}, timeout=2)
    except httpx.TransportError:
        return 0
    return response.status_code


def test_new_and_revoked_keys_reach_every_instance_within_5_seconds(
    database: URL, start: Callable[[int], list[Service]]
) -> None:
    instances = start(2)
    key = _mdp_keys(database, "create", "--name", "late", "--scopes", "read")
    # From the moment the command returns (its transaction committed): 5 s for every instance.
    wait_until(
        lambda: all(_status_with(key, instance) == 200 for instance in instances),
        what="the new key accepted everywhere",
        timeout=5,
    )

    _mdp_keys(database, "revoke", key.split("_")[1])
    wait_until(
        lambda: all(_status_with(key, instance) == 401 for instance in instances),
        what="the revoked key refused everywhere",
        timeout=5,
    )
    assert all(instance.process.poll() is None for instance in instances)
