"""CORS for the origins in CORS_ALLOW_ORIGINS: preflights without a key, the headers on every
answer (problems included), and nothing at all when no origin is listed."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from mdp.cors import ALLOW_HEADERS, EXPOSE_HEADERS
from tests.api.support import app_settings, assert_problem, running_app

DASHBOARD = "https://dash.example.com"


@pytest.fixture(scope="module")
def cors_client(client: TestClient, api_database_url: URL) -> Iterator[TestClient]:
    """A second app on the shared database (started by `client`), listing one origin."""
    settings = app_settings(api_database_url, cors_allow_origins=(DASHBOARD,))
    with running_app(settings) as test_client:
        yield test_client


def _listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def _preflight(client: TestClient, origin: str, headers: str) -> httpx.Response:
    return client.options(
        "/candles",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": headers,
            # A preflight never carries credentials: the shared client's key must not help.
            "X-API-Key": "",
        },
    )


def test_a_preflight_is_answered_without_a_key(cors_client: TestClient) -> None:
    response = _preflight(cors_client, DASHBOARD, "x-api-key, last-event-id, if-none-match")
    assert response.status_code == 200
    headers = response.headers
    assert headers["access-control-allow-origin"] == DASHBOARD
    assert {name.lower() for name in ALLOW_HEADERS} <= _listed(
        headers["access-control-allow-headers"]
    )
    assert "GET" in headers["access-control-allow-methods"]
    assert "origin" in _listed(headers["vary"])


def test_a_preflight_from_an_unlisted_origin_is_refused(cors_client: TestClient) -> None:
    response = _preflight(cors_client, "https://evil.example.com", "x-api-key")
    body = assert_problem(response, 400, "cors_refused")
    assert "'https://evil.example.com'" in body["detail"]
    assert "access-control-allow-origin" not in response.headers
    unknown_header = _preflight(cors_client, DASHBOARD, "x-api-key, x-debug")
    assert "headers" in assert_problem(unknown_header, 400, "cors_refused")["detail"]


def test_answers_expose_the_caching_and_limit_headers(cors_client: TestClient) -> None:
    response = cors_client.get("/symbols", headers={"Origin": DASHBOARD})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == DASHBOARD
    exposed = _listed(response.headers["access-control-expose-headers"])
    assert {name.lower() for name in EXPOSE_HEADERS} <= exposed
    assert {"etag", "ratelimit-policy", "ratelimit", "retry-after", "x-row-count"} <= exposed
    assert "origin" in _listed(response.headers["vary"])


def test_problems_carry_the_cors_headers_too(cors_client: TestClient) -> None:
    missing = cors_client.get("/price/latest?symbol=NOPE", headers={"Origin": DASHBOARD})
    assert_problem(missing, 404, "symbol_not_found")
    assert missing.headers["access-control-allow-origin"] == DASHBOARD
    anonymous = cors_client.get("/symbols", headers={"Origin": DASHBOARD, "X-API-Key": ""})
    assert_problem(anonymous, 401, "unauthenticated")
    assert anonymous.headers["access-control-allow-origin"] == DASHBOARD


def test_an_answer_without_an_origin_still_varies_on_it(cors_client: TestClient) -> None:
    # A shared cache must not hand this answer to a page on a listed origin.
    response = cors_client.get("/symbols")
    assert "access-control-allow-origin" not in response.headers
    assert "origin" in _listed(response.headers["vary"])


def test_without_listed_origins_there_is_no_cors(client: TestClient) -> None:
    response = client.get("/symbols", headers={"Origin": DASHBOARD})
    assert "access-control-allow-origin" not in response.headers
    assert "origin" not in _listed(response.headers.get("vary", ""))
    preflight = client.options(
        "/symbols", headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "GET"}
    )
    assert_problem(preflight, 405, "method_not_allowed")
