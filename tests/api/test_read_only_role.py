"""Reads only read: the app answers every operation with its reads logged in as a role that
may only SELECT, while ingestion writes and materialises candles through DATABASE_URL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import URL

from mdp.spec import load_contract
from tests.api.support import SyncDatabase, app_settings, iso, running_app
from tests.support import migrate, wait_until

START = iso(datetime.now(UTC) - timedelta(hours=4))
MINUTE = timedelta(minutes=1)
# One request per operation of the contract (a new operation has to be added here).
REQUESTS = {
    "getRoot": ("/", {}),
    "getHealth": ("/health", {}),
    "getIngestionStatus": ("/status/ingestion", {}),
    "getMetrics": ("/metrics", {}),
    "listSymbols": ("/symbols", {}),
    "getLatestPrice": ("/price/latest", {"symbol": "AAPL"}),
    "getLatestPrices": ("/prices/latest", {"symbols": "AAPL,MSFT"}),
    "getTicker": ("/ticker", {"symbols": "AAPL,MSFT"}),
    "listTrades": ("/trades", {"symbol": "AAPL", "start": START}),
    "listCandles": (
        "/candles",
        {"symbol": "AAPL", "interval": "1h", "start": START, "limit": 100},
    ),
    # Bounded streams: one event (or a second of stream) and they end.
    "streamTrades": ("/stream/trades", {"symbols": "AAPL", "limit": 1}),
    "streamCandles": (
        "/stream/candles",
        {"symbol": "AAPL", "limit": 1, "duration": 1},
    ),
    "exportTrades": (
        "/export/trades",
        {"symbols": "AAPL", "start": START, "end": iso(datetime.now(UTC)), "format": "csv"},
    ),
    "exportCandles": (
        "/export/candles",
        {
            "symbols": "AAPL",
            "start": START,
            "end": iso(datetime.now(UTC)),
            "timezone": "Asia/Tokyo",
        },
    ),
    "getOpenapiJson": ("/openapi.json", {}),
    "getOpenapiYaml": ("/openapi.yaml", {}),
    "getRedoc": ("/redoc", {}),
    "getChart": ("/chart", {}),
}


def _operations() -> set[str]:
    return {
        operation["operationId"]
        for item in load_contract().document["paths"].values()
        for method, operation in item.items()
        if method == "get"
    }


@pytest.fixture
def reader_url(fresh_database_url: URL) -> Iterator[URL]:
    """The database at head, and a login role granted CONNECT and SELECT, nothing else."""
    asyncio.run(migrate(fresh_database_url))
    role = f"mdp_reader_{uuid.uuid4().hex[:8]}"
    admin = SyncDatabase(fresh_database_url)
    try:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f'GRANT CONNECT ON DATABASE "{fresh_database_url.database}" TO {role}')
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        yield fresh_database_url.set(username=role, password=None)
    finally:
        # Its grants here and on the database itself, then the (cluster-wide) role.
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")
        admin.close()


def test_every_operation_answers_through_a_select_only_role(
    fresh_database_url: URL, reader_url: URL
):
    assert set(REQUESTS) == _operations(), "request every GET operation of the contract here"
    primary = SyncDatabase(fresh_database_url)
    settings = app_settings(
        fresh_database_url,
        database_read_url=reader_url,
        ingestion_enabled=True,
        ingestion_interval_seconds=0.2,
    )
    # History the leader has not materialised yet when it starts (a few of its first steps
    # catch it up): one hour, two trades, restored as from a dump. Written before the app
    # starts, because the first writer sets the candle watermark at the oldest trade it sees,
    # and history written below the watermark later is only ever materialised by `mdp backfill`.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    try:
        primary.restore_trades("AAPL", [(hour, "100.00", 1), (hour + MINUTE, "101.00", 1)])
        with running_app(settings) as client:
            wait_until(
                lambda: client.get("/status/ingestion").json(),
                lambda body: body["role"] == "leader" and body["batches_total"] >= 2,
                what="ingestion as leader",
            )
            answers = {
                operation: client.get(path, params=params)
                for operation, (path, params) in REQUESTS.items()
            }
            wait_until(
                lambda: primary.fetchval(
                    "SELECT min(candles_until) > now() - INTERVAL '70 seconds'"
                    " FROM candle_watermarks"
                ),
                bool,
                what="the leader catching up the candles",
            )
            path, params = REQUESTS["listCandles"]
            later = client.get(path, params=params).json()["candles"]
            readers = primary.fetchval(
                "SELECT array_agg(DISTINCT usename::text) FROM pg_stat_activity "
                "WHERE application_name = 'mdp-api' AND datname = current_database()"
            )
    finally:
        primary.close()

    assert {op: answer.status_code for op, answer in answers.items()} == dict.fromkeys(
        REQUESTS, 200
    )
    assert readers == [reader_url.username]
    first = [c for c in answers["listCandles"].json()["candles"] if c["closed"]]
    assert (first[0]["timestamp"], first[0]["trade_count"]) == (iso(hour), 2)
    # Closed candles never change, whether read from trades or, later, from `candles`.
    assert [c for c in later if c["closed"]][: len(first)] == first
