"""DATABASE_READ_URL through a real PgBouncer in transaction mode, leadership staying direct."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import URL

from tests.api.support import app_settings, iso, running_app
from tests.support import wait_until
from tests.support.servers import pgbouncer

pytestmark = pytest.mark.slow


def test_reads_through_a_transaction_pooler_while_leadership_stays_direct(
    fresh_database_url: URL,
):
    with pgbouncer(fresh_database_url, pool_size=2) as pooled:
        settings = app_settings(
            fresh_database_url,
            database_read_url=pooled,
            database_read_pooler="transaction",
            ingestion_enabled=True,
            ingestion_interval_seconds=0.2,
        )
        with running_app(settings) as client:
            status = wait_until(
                lambda: client.get("/status/ingestion").json(),
                lambda body: body["role"] == "leader" and body["batches_total"] >= 2,
                what="leadership and ingestion",
            )
            # Every read operation, several times over the pooler's two server connections.
            for _ in range(3):
                assert client.get("/symbols").json()["count"] == 5
                latest = client.get("/price/latest", params={"symbol": "AAPL"})
                trades = client.get("/trades", params={"symbol": "AAPL", "limit": 5})
                candles = client.get("/candles", params={"symbol": "AAPL", "limit": 5})
                prices = client.get("/prices/latest", params={"symbols": "AAPL,MSFT"})
                export = client.get(
                    "/export/trades",
                    params={
                        "symbols": "AAPL",
                        "start": iso(datetime.now(UTC) - timedelta(hours=1)),
                        "end": iso(datetime.now(UTC)),
                        "format": "ndjson",
                    },
                )
                answers = [latest, trades, candles, prices, export]
                assert [a.status_code for a in answers] == [200] * len(answers)
            health = client.get("/health").json()

    assert status["trades_total"] > 0
    assert trades.json()["count"] >= 1
    assert health["checks"]["database"]["standby"] is False
