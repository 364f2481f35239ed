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
        written = primary.seed_trades("AAPL", [(moment, "123.45", 7)])

        trades = wait_until(
            lambda: client.get("/trades", params={"symbol": "AAPL", "start": iso(moment)}).json(),
            lambda body: body.get("count") == 1,
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
            primary.insert_live_batch("AAPL", [(datetime.now(UTC), "1", 1)])
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


def _floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def test_nothing_reported_final_by_a_paused_replica_changes_after_it_resumes(
    pair: ReplicatedPair, primary: SyncDatabase, standby: SyncDatabase
):
    """The replica stops replaying while ingestion goes on writing to the primary, for as long
    as it takes the wall clock to finish a minute: a horizon from the app's clock would call
    that minute closed without the trades the replica has not replayed."""
    # History from before the service started: two minutes that are final already.
    start = _floor_minute(datetime.now(UTC)) - timedelta(minutes=2)
    primary.seed_trades("AAPL", [(start + timedelta(seconds=s), "100", 1) for s in (10, 30, 70)])
    settings = app_settings(
        pair.primary,
        database_read_url=pair.standby,
        ingestion_enabled=True,
        ingestion_interval_seconds=0.2,
    )
    with running_app(settings) as client:
        wait_until(
            lambda: client.get("/status/ingestion").json()["batches_total"],
            lambda batches: batches >= 3,
            what="ingestion",
        )
        paused_at = datetime.now(UTC)
        # Wall-clock final during the pause: it ends before the pause does.
        boundary = _floor_minute(paused_at) + timedelta(minutes=1)
        candles_query = {"symbol": "AAPL", "interval": "1m", "start": iso(start)}
        trades_query = {
            "symbol": "AAPL",
            "start": iso(start),
            "end": iso(boundary),
            "order": "asc",
            "limit": 1000,
        }
        closed: dict[str, dict[str, object]] = {}
        immutable_trades: list[dict[str, object]] = []

        def sample() -> datetime:
            """What the replica answers now; returns the time of asking."""
            for candle in client.get("/candles", params=candles_query).json()["candles"]:
                if candle["closed"]:
                    assert closed.setdefault(candle["timestamp"], candle) == candle
            trades = client.get("/trades", params=trades_query)
            if trades.headers["cache-control"] == "public, max-age=31536000, immutable":
                immutable_trades.append(trades.json())
            return datetime.now(UTC)

        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            # Sampled every half second while the wall clock moves past the boundary.
            wait_until(
                sample,
                lambda asked: asked >= boundary + timedelta(seconds=4),
                what="the pause outlasting the minute",
                timeout=90,
                every=0.5,
            )
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
        written_upto = primary.fetchval("SELECT pg_current_wal_lsn()::text")
        wait_until(
            lambda: standby.fetchval(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", written_upto
            ),
            bool,
            what="the replica replaying the pause",
        )
        after = {
            c["timestamp"]: c
            for c in client.get("/candles", params=candles_query).json()["candles"]
        }
        trades_after = client.get("/trades", params=trades_query)

    assert closed, "no closed candle seen during the pause"
    for timestamp, candle in closed.items():
        assert after[timestamp] == candle
        bucket = datetime.fromisoformat(timestamp)
        stored = primary.fetchval(
            "SELECT count(*) FROM trades WHERE symbol = 'AAPL' "
            "AND timestamp >= $1 AND timestamp < $1 + interval '1 minute'",
            bucket,
        )
        assert candle["trade_count"] == stored, f"closed candle {timestamp} misses trades"
    # Replayed past the window's end, the replica vouches for it: immutable from now on.
    assert trades_after.headers["cache-control"] == "public, max-age=31536000, immutable"
    for page in immutable_trades:
        assert page == trades_after.json()
