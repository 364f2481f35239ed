"""Admission to the read pool through the real app: an overloaded instance refuses early."""

from __future__ import annotations

import threading
import time

import httpx2 as httpx
import pytest
from sqlalchemy.engine import URL

from tests.api.support import SyncDatabase, app_settings, assert_problem, running_app
from tests.support import wait_until

WAITING_ON_THE_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = 'mdp-api' AND wait_event_type = 'Lock'"
)


@pytest.mark.timing
def test_a_request_that_would_queue_past_the_limit_is_refused_at_once_with_retry_after(
    api_database_url: URL, market: SyncDatabase
) -> None:
    settings = app_settings(api_database_url, db_pool_size=1, db_max_waiting=0)
    with running_app(settings) as client:
        answered: list[httpx.Response] = []
        market.execute("BEGIN")
        market.execute("LOCK TABLE trades IN ACCESS EXCLUSIVE MODE")
        try:
            # Holds the instance's only read connection, waiting for the lock.
            holder = threading.Thread(
                target=lambda: answered.append(client.get("/trades", params={"symbol": "AAPL"}))
            )
            holder.start()
            wait_until(lambda: market.fetchval(WAITING_ON_THE_LOCK), bool, what="query blocked")

            started = time.monotonic()
            refused = client.get("/price/latest", params={"symbol": "AAPL"})
            elapsed = time.monotonic() - started
        finally:
            market.execute("ROLLBACK")
        holder.join(timeout=10)

    assert_problem(refused, 503, "overloaded")
    assert elapsed < 0.5, f"refused after {elapsed:.2f}s, not at once"
    # The request admitted before it was served once the lock went.
    assert [response.status_code for response in answered] == [200]
