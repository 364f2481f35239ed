"""Problem documents for every error, unknown paths and methods, and request ids."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from mdp.spec import load_contract
from tests.api.support import SyncDatabase, assert_problem, error_names

CONTRACT = load_contract().document
KNOWN_PATHS = sorted(CONTRACT["paths"])


def contract_titles() -> dict[str, str]:
    """`code -> title` from the table in the contract's description."""
    rows = re.findall(
        r"^\| `([a-z_]+)` \| (\d{3}) \| ([^|]+?) \|", CONTRACT["info"]["description"], re.M
    )
    titles = {code: title for code, _, title in rows}
    assert set(titles) == set(
        CONTRACT["components"]["schemas"]["Problem"]["properties"]["code"]["enum"]
    )
    return titles


Request = Callable[[TestClient], httpx.Response]

# One request per problem code that a client can cause against a healthy service.
CAUSES: dict[str, tuple[int, Request]] = {
    "validation_failed": (400, lambda c: c.get("/trades", params={"symbol": "AAPL", "limit": 0})),
    "invalid_time_range": (
        400,
        lambda c: c.get(
            "/trades",
            params={
                "symbol": "AAPL",
                "start": "2026-01-02T00:00:00Z",
                "end": "2026-01-01T00:00:00Z",
            },
        ),
    ),
    "invalid_cursor": (400, lambda c: c.get("/candles", params={"symbol": "AAPL", "cursor": "x"})),
    "not_found": (404, lambda c: c.get("/no/such/path")),
    "method_not_allowed": (405, lambda c: c.post("/symbols")),
    "symbol_not_found": (404, lambda c: c.get("/price/latest", params={"symbol": "ZZZZ"})),
    "no_trades": (404, lambda c: c.get("/price/latest", params={"symbol": "AAPL"})),
    "not_acceptable": (406, lambda c: c.get("/symbols", headers={"Accept": "application/xml"})),
}


@pytest.mark.parametrize("code", list(CAUSES))
def test_problem_documents_carry_every_member(client: TestClient, market: SyncDatabase, code: str):
    status, cause = CAUSES[code]

    response = cause(client)

    body = assert_problem(response, status, code)
    assert ("errors" in body) == (code == "validation_failed")


@pytest.mark.parametrize("code", list(CAUSES))
def test_problem_title_is_the_one_the_contract_fixes_for_its_code(
    client: TestClient, market: SyncDatabase, code: str
):
    status, cause = CAUSES[code]

    body = cause(client).json()

    assert (body["code"], body["title"]) == (code, contract_titles()[code])


@pytest.mark.parametrize("path", ["/nope", "/symbols/AAPL", "/price", "/openapi", "/docs.json"])
def test_unknown_path_is_a_not_found_problem(client: TestClient, path: str):
    response = client.get(path)

    assert_problem(response, 404, "not_found")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", KNOWN_PATHS)
def test_wrong_method_is_a_method_not_allowed_problem_with_allow(
    client: TestClient, path: str, method: str
):
    response = client.request(method, path)

    assert_problem(response, 405, "method_not_allowed")
    allowed = {value.strip() for value in response.headers["allow"].split(",")}
    assert "GET" in allowed
    assert method not in allowed


def test_head_is_answered_like_get_without_a_body(client: TestClient, market: SyncDatabase):
    response = client.head("/symbols")

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["x-request-id"]


def test_request_id_is_echoed_on_success(client: TestClient):
    for path in ["/", "/symbols", "/openapi.yaml", "/redoc", "/docs/"]:
        response = client.get(path, headers={"X-Request-ID": f"req-{path}"})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == f"req-{path}"


@pytest.mark.parametrize("code", list(CAUSES))
def test_request_id_is_echoed_on_errors(client: TestClient, market: SyncDatabase, code: str):
    status, cause = CAUSES[code]
    request_id = f"trace-{code}-0123456789~!@#$%^&*()"
    client.headers["X-Request-ID"] = request_id
    try:
        response = cause(client)
    finally:
        del client.headers["X-Request-ID"]

    assert response.headers["x-request-id"] == request_id
    assert_problem(response, status, code, request_id=request_id)


def test_request_id_is_generated_when_absent(client: TestClient):
    first = client.get("/symbols")
    second = client.get("/nope")

    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[\x21-\x7e]{1,200}", value) for value in ids)
    assert ids[0] != ids[1]
    assert second.json()["request_id"] == ids[1]


@pytest.mark.parametrize("request_id", ["has space", "x" * 201, "tab\tinside"])
def test_malformed_request_id_is_rejected_and_not_echoed(client: TestClient, request_id: str):
    response = client.get("/symbols", headers={"X-Request-ID": request_id})

    assert error_names(response) == ["X-Request-ID"]
    assert response.json()["errors"][0]["in"] == "header"
    assert response.headers["x-request-id"] != request_id


def test_request_id_of_200_visible_characters_is_echoed(client: TestClient):
    request_id = "r" * 200

    response = client.get("/symbols", headers={"X-Request-ID": request_id})

    assert response.headers["x-request-id"] == request_id
