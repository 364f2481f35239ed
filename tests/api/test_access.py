"""Access control through the real app: API keys in either header, scopes per operation, rate
limits, refusals that never echo a key, and the audit trail (captured from the log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import URL
from starlette.testclient import TestClient

from access.apikeys import RateLimit, create_key, key_id_of, revoke
from mdp.logs import JsonFormatter
from mdp.spec import load_contract
from tests.api.support import app_settings, assert_problem, running_app
from tests.support import open_test_engine, wait_until

SECURED = {
    (path, method.upper()): operation["x-required-scopes"]
    for path, item in load_contract().document["paths"].items()
    for method, operation in item.items()
    if "x-required-scopes" in operation
}
PUBLIC = ["/", "/health", "/openapi.json", "/openapi.yaml", "/redoc", "/chart", "/docs/"]
PARAMS = {"/price/latest": {"symbol": "AAPL"}, "/trades": {"symbol": "AAPL"}}
PARAMS["/candles"] = PARAMS["/trades"]
CHALLENGE = 'Bearer realm="mdp"'


async def _create(url: URL, name: str, scopes: list[str], limit: RateLimit) -> str:
    engine = open_test_engine(url)
    try:
        return (await create_key(engine, name=name, scopes=scopes, rate_limit=limit))[1]
    finally:
        await engine.dispose()


async def _revoke(url: URL, key: str) -> None:
    engine = open_test_engine(url)
    try:
        await revoke(engine, str(key_id_of(key)))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def keys(client: TestClient, api_database_url: URL) -> dict[str, str]:
    """Keys made while the shared app runs: they reach it by its refresh, as in production."""
    made = {
        "read": asyncio.run(_create(api_database_url, "reader", ["read"], RateLimit(1000, 1))),
        "ops": asyncio.run(_create(api_database_url, "operator", ["ops"], RateLimit(1000, 1))),
        # One token back every 30 minutes: no pause of a loaded machine refills it mid-test.
        "slow": asyncio.run(_create(api_database_url, "slow", ["read"], RateLimit(2, 3600))),
    }
    # Created last, so once it works the app has loaded all of them.
    wait_until(
        lambda: client.get("/metrics", headers={"X-API-Key": made["ops"]}),
        lambda response: response.status_code == 200,
        what="the new keys loaded",
    )
    return made


@contextlib.contextmanager
def without_key(client: TestClient) -> Iterator[TestClient]:
    key = client.headers.pop("X-API-Key")
    try:
        yield client
    finally:
        client.headers["X-API-Key"] = key


@contextlib.contextmanager
def captured_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Every log line the app writes meanwhile, formatted as production writes them (not the
    test client's own: httpx logs the URLs it requests)."""
    lines: list[str] = []
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        yield lines
        formatter = JsonFormatter(None)
        lines.extend(
            formatter.format(record)
            for record in caplog.records
            if not record.name.startswith(("httpx", "httpcore"))
        )


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if r.name == "mdp.audit"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "method"), sorted(SECURED))
def test_secured_operation_without_a_key_answers_401_with_a_challenge(
    client: TestClient, path: str, method: str
) -> None:
    with without_key(client):
        response = client.request(method, path, params=PARAMS.get(path))
    body = assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == CHALLENGE
    assert "X-API-Key" in body["detail"]


@pytest.mark.parametrize("path", PUBLIC)
def test_public_paths_answer_without_a_key(client: TestClient, path: str) -> None:
    with without_key(client):
        assert client.get(path).status_code == 200


def test_the_same_key_works_as_a_bearer_token(client: TestClient, keys: dict[str, str]) -> None:
    with without_key(client):
        response = client.get("/symbols", headers={"Authorization": f"Bearer {keys['read']}"})
    assert response.status_code == 200
    assert response.json()["count"] == 5


def test_a_key_without_the_scope_gets_403_naming_the_scope(
    client: TestClient, keys: dict[str, str]
) -> None:
    body = assert_problem(
        client.get("/metrics", headers={"X-API-Key": keys["read"]}), 403, "forbidden"
    )
    assert "ops" in body["detail"]
    body = assert_problem(
        client.get("/symbols", headers={"X-API-Key": keys["ops"]}), 403, "forbidden"
    )
    assert "read" in body["detail"]
    assert client.get("/status/ingestion", headers={"X-API-Key": keys["ops"]}).status_code == 200


def test_over_the_limit_answers_429_with_retry_after_and_ratelimit_fields(
    client: TestClient, keys: dict[str, str]
) -> None:
    headers = {"X-API-Key": keys["slow"]}
    first = client.get("/symbols", headers=headers)
    second = client.get("/symbols", headers=headers)
    third = client.get("/symbols", headers=headers)

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers["ratelimit-policy"] == '"key";q=2;w=3600'
    assert first.headers["ratelimit"] == '"key";r=1;t=1800'
    assert second.headers["ratelimit"].startswith('"key";r=0;t=')
    body = assert_problem(third, 429, "rate_limited")
    assert 1 <= int(third.headers["retry-after"]) <= 1800
    assert third.headers["ratelimit-policy"] == '"key";q=2;w=3600'
    assert third.headers["ratelimit"].startswith('"key";r=0;t=')
    assert "2/h" in body["detail"]


def _malformed(key: str) -> list[tuple[str, list[tuple[str, str]]]]:
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    return [
        ("bearer without a token", [("Authorization", "Bearer")]),
        ("bearer with blanks", [("Authorization", "Bearer    ")]),
        ("basic scheme", [("Authorization", f"Basic {key}")]),
        ("token without scheme", [("Authorization", key)]),
        ("one character short", [("X-API-Key", key[:-1])]),
        ("one character long", [("X-API-Key", key + "x")]),
        ("wrong alphabet", [("X-API-Key", key[:-1] + "!")]),
        ("NUL byte", [("X-API-Key", key[:-1] + "\x00")]),
        ("huge", [("X-API-Key", key * 100)]),
        ("two X-API-Key headers", [("X-API-Key", key), ("X-API-Key", key)]),
        ("both headers", [("X-API-Key", key), ("Authorization", f"Bearer {key}")]),
        ("wrong secret", [("X-API-Key", wrong_secret)]),
        ("unknown id", [("X-API-Key", "mdp_0123456789ab_" + key[-43:])]),
    ]


def test_bad_credentials_each_get_a_clear_401_and_nothing_logged_contains_them(
    client: TestClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    secret = keys["read"].split("_", 2)[2]
    answers = {}
    with without_key(client), captured_logs(caplog) as lines:
        for name, headers in _malformed(keys["read"]):
            answers[name] = client.get("/symbols", headers=headers)

    for name, response in answers.items():
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == f'{CHALLENGE}, error="invalid_token"', name
        assert secret[:20] not in response.text, name
    assert "Bearer <API key>" in answers["basic scheme"].json()["detail"]
    assert "exactly one" in answers["both headers"].json()["detail"]
    assert "malformed" in answers["NUL byte"].json()["detail"]
    refused = [r for r in audit_records(caplog) if r["event"] == "request_refused"]
    assert len(refused) == len(answers)
    assert {r["reason"] for r in refused} == {
        "malformed_authorization",
        "malformed_key",
        "several_credentials",
        "invalid_key",
    }
    assert lines
    for line in lines:
        assert secret[:20] not in line and secret[-20:] not in line


def test_every_authenticated_request_is_audited_once_with_its_key_and_what_it_served(
    client: TestClient, market: Any, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with captured_logs(caplog) as lines:
        first = client.get(
            "/symbols",
            params={"limit": 2},
            headers={"X-API-Key": keys["read"], "X-Request-ID": "audit-1"},
        )
        client.get("/health")
        client.get("/metrics", headers={"X-API-Key": keys["read"]})

    [served, refused] = audit_records(caplog)
    read_id = key_id_of(keys["read"])
    assert served["event"] == "request"
    assert served["key_id"] == read_id and served["key_name"] == "reader"
    assert served["operation"] == "listSymbols"
    assert served["parameters"] == {"limit": "2"}
    assert served["status"] == 200
    assert served["rows"] == 2
    assert served["bytes"] > 0
    assert served["duration_ms"] > 0
    assert refused == {
        "event": "request_refused",
        "key_id": read_id,
        "key_name": "reader",
        "operation": "getMetrics",
        "method": "GET",
        "path": "/metrics",
        "status": 403,
        "duration_ms": refused["duration_ms"],
        "request_id": refused["request_id"],
        "reason": "forbidden",
    }
    assert served["request_id"] == "audit-1"
    assert served["bytes"] == len(first.content)
    assert any('"logger":"mdp.audit"' in line and '"audit":{' in line for line in lines)
    assert keys["read"] not in "".join(lines)


def test_a_streams_audit_record_counts_the_events_it_sent(
    client: TestClient, market: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # An id this service never issued: the stream sends a `reset` event at least.
    headers = {"Last-Event-ID": "never-issued"}
    with captured_logs(caplog):
        response = client.get(
            "/stream/trades", params={"symbols": "AAPL", "duration": "0.3"}, headers=headers
        )

    [served] = audit_records(caplog)
    events = response.text.count("\nevent: ")
    assert response.status_code == 200
    assert "event: reset" in response.text
    assert served["operation"] == "streamTrades"
    assert served["rows"] == events


def test_a_revoked_key_is_refused_within_seconds_without_a_restart(
    client: TestClient, api_database_url: URL
) -> None:
    key = asyncio.run(_create(api_database_url, "short-lived", ["read"], RateLimit(100, 1)))
    headers = {"X-API-Key": key}
    wait_until(
        lambda: client.get("/symbols", headers=headers).status_code,
        lambda s: s == 200,
        what="the new key accepted",
    )

    asyncio.run(_revoke(api_database_url, key))

    response = wait_until(
        lambda: client.get("/symbols", headers=headers),
        lambda r: r.status_code == 401,
        timeout=5,
        what="the revocation",
    )
    assert "revoked" in assert_problem(response, 401, "unauthenticated")["detail"]


def test_auth_off_serves_without_a_key_and_says_so(
    fresh_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO),
        running_app(app_settings(fresh_database_url, auth_mode="off")) as client,
    ):
        assert "X-API-Key" not in client.headers
        assert client.get("/symbols").status_code == 200
        assert client.get("/metrics").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("AUTH_MODE=off" in message for message in warnings)
    assert not [r for r in caplog.records if r.name == "mdp.audit"]


def test_required_with_no_key_yet_starts_answers_401_and_says_how_to_make_one(
    fresh_database_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO),
        running_app(app_settings(fresh_database_url), with_key=False) as client,
    ):
        assert_problem(client.get("/symbols"), 401, "unauthenticated")
        assert client.get("/health").json()["status"] == "pass"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no API key exists yet" in m and "mdp keys create" in m for m in warnings)


def test_a_key_sent_in_the_query_string_by_mistake_is_not_logged(
    client: TestClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with captured_logs(caplog) as lines:
        response = client.get("/symbols", params={"api_key": keys["read"]})
    assert_problem(response, 400, "validation_failed")
    secret = keys["read"].split("_", 2)[2]
    assert lines and not [line for line in lines if secret in line]
    [record] = audit_records(caplog)
    assert record["parameters"] == {"api_key": f"{keys['read'][:17]}[redacted]"}


@pytest.mark.parametrize(
    "where",
    ["path", "request_id", "both"],
)
def test_a_key_sent_in_the_path_or_the_request_id_is_not_logged(
    client: TestClient, keys: dict[str, str], caplog: pytest.LogCaptureFixture, where: str
) -> None:
    key = keys["read"]
    path = f"/symbols/{key}" if where != "request_id" else "/symbols"
    headers = {"X-Request-ID": f"req-{key}"} if where != "path" else {}
    with captured_logs(caplog) as lines:
        response = client.get(path, headers=headers)
    assert response.status_code in (200, 404)
    secret = key.split("_", 2)[2]
    assert lines and not [line for line in lines if secret in line]
    # What is left says where the key was, by its public id.
    assert [line for line in lines if f"{key[:17]}[redacted]" in line]
