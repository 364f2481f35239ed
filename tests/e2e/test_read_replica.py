"""DATABASE_READ_URL on a real physical streaming replica: reads, lag, and finality."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.api.support import SyncDatabase, app_settings, iso, running_app
from tests.support import migrate, wait_until
from tests.support.servers import ReplicatedPair, replicated_pair

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicatedPair]:
    """A primary at head and its standby, once the standby has replayed the schema."""
    with replicated_pair() as servers:
        asyncio.run(migrate(servers.primary))
        standby = SyncDatabase(servers.standby)
        try:
            wait_until(
                lambda: standby.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"),
                bool,
                what="the schema on the standby",
            )
        finally:
            standby.close()
        yield servers


@pytest.fixture
def primary(pair: ReplicatedPair) -> Iterator[SyncDatabase]:
    database = SyncDatabase(pair.primary)
    database.fetchval("SELECT 1")  # connected before add_trades, which cannot connect itself
    yield database
    database.close()


@pytest.fixture
def standby(pair: ReplicatedPair) -> Iterator[SyncDatabase]:
    database = SyncDatabase(pair.standby)
    yield database
    database.close()


def _api_connections(database: SyncDatabase) -> int:
    count: int = database.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mdp-api'"
    )
    return count


def test_reads_served_by_the_replica_see_the_primary_writes(
    pair: ReplicatedPair, primary: SyncDatabase, standby: SyncDatabase
):
    settings = app_settings(pair.primary, database_read_url=pair.standby)
    with running_app(settings) as client:
        moment = datetime.now(UTC) - timedelta(minutes=5)
        written = primary.add_trades("AAPL", [(moment, "123.45", 7)])

        trades = wait_until(
            lambda: client.get("/trades", params={"symbol": "AAPL", "start": iso(moment)}).json(),
            lambda body: body["count"] == 1,
            what="the replicated trade",
        )["trades"]
        health = client.get("/health").json()["checks"]["database"]

        # Every read connection is on the standby, none on the primary.
        assert _api_connections(standby) >= 1
        assert _api_connections(primary) == 0

    assert [(t["id"], t["price"], t["volume"]) for t in trades] == [(written[0].id, 123.45, 7)]
    assert health["status"] == "pass"
    assert health["standby"] is True
    assert health["replay_lag_seconds"] is not None and health["replay_lag_seconds"] >= 0


def test_health_reports_the_lag_of_a_paused_replica(
    pair: ReplicatedPair, primary: SyncDatabase, standby: SyncDatabase
):
    settings = app_settings(pair.primary, database_read_url=pair.standby)
    with running_app(settings) as client:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            primary.add_trades("AAPL", [(datetime.now(UTC), "1", 1)])
            # The primary moved on; the paused standby received it but cannot replay it.
            lagging = wait_until(
                lambda: client.get("/health").json()["checks"]["database"],
                lambda database: (database["replay_lag_seconds"] or 0) > 0,
                what="a replay lag",
            )
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        caught_up = wait_until(
            lambda: client.get("/health").json()["checks"]["database"],
            lambda database: database["replay_lag_seconds"] == 0,
            what="the standby catching up",
        )

    assert lagging["standby"] is True
    assert caught_up["status"] == "pass"
