"""Streams under AUTH_MODE=required: revoking a key ends its open streams, and only those."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy.engine import URL

from access.apikeys import key_id_of, revoke
from tests.e2e.sse import consuming
from tests.support import (
    Service,
    metric_value,
    open_test_engine,
    provision_key_now,
    serve_live,
    wait_until,
)


@pytest.fixture(scope="module")
def service(module_database: URL) -> Iterator[Service]:
    with serve_live(module_database) as live:
        yield live


def _open_streams(service: Service) -> float:
    headers = {**service.headers, "Accept": "text/plain"}
    metrics = httpx.get(f"{service.base}/metrics", headers=headers).text
    return metric_value(metrics, "mdp_streams_open")


async def test_revoking_a_key_ends_its_open_streams_and_no_others(
    service: Service, module_database: URL
) -> None:
    doomed = provision_key_now(module_database)
    doomed_id = key_id_of(doomed)
    assert doomed_id is not None
    url = f"{service.base}/stream/trades"
    params = {"symbols": "AAPL"}
    # The instance hears of a new key within its refresh period.
    wait_until(
        lambda: httpx.get(url, params={**params, "limit": 1}, headers={"X-API-Key": doomed}),
        lambda response: response.status_code == 200,
        what="the new key admitted",
    )
    with (
        consuming(url, params, headers=service.headers) as kept,
        consuming(url, params, headers={"X-API-Key": doomed}) as ended,
    ):
        wait_until(lambda: kept and ended, what="both streams' first trades")
        assert _open_streams(service) == 2
        engine = open_test_engine(module_database)
        try:
            await revoke(engine, doomed_id)
        finally:
            await engine.dispose()
        revoked_at = datetime.now(UTC)
        wait_until(lambda: _open_streams(service), lambda n: n == 1, what="one stream left")
        heard = len(ended)
        wait_until(
            lambda: datetime.fromisoformat(kept[-1].data["timestamp"]) > revoked_at,
            what="the other key's stream carrying on",
        )

    # The revoked key's stream ended by itself (its client read to the end of the body) and
    # heard nothing more; the key opens no new one.
    assert len(ended) == heard
    refused = httpx.get(url, params=params, headers={"X-API-Key": doomed})
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthenticated"
