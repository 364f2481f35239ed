"""Forwarded headers steer redirects only when they come from a trusted front end."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import URL

from tests.support import Service, serve

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


@pytest.fixture(scope="module")
def untrusting(module_database: URL) -> Iterator[Service]:
    # The front end is elsewhere: this test's loopback connections are anybody's.
    env = {"INGESTION_ENABLED": "false", "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    with serve(module_database, env) as running:
        yield running


def test_forwarded_headers_from_an_untrusted_peer_do_not_steer_the_redirect(
    untrusting: Service,
) -> None:
    response = httpx.get(f"{untrusting.base}/health/", headers=FORWARDED)

    assert response.status_code == 307
    assert response.headers["location"].startswith("http://127.0.0.1:")


def test_the_default_trusts_loopback_where_a_local_proxy_runs(module_database: URL) -> None:
    with serve(module_database, {"INGESTION_ENABLED": "false"}) as trusting:
        response = httpx.get(f"{trusting.base}/health/", headers=FORWARDED)

    assert response.status_code == 307
    assert response.headers["location"].startswith("https://")
