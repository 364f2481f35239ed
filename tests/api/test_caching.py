"""Cacheable answers: ETag and Cache-Control by finality, If-None-Match and 304 on GET and HEAD."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from mdp.spec import load_contract
from tests.api.support import SyncDatabase, iso, past_midnight

IMMUTABLE = "public, max-age=31536000, immutable"
STRONG_TAG = re.compile(r'^"[\x21\x23-\x7e]+"$')
BASE = past_midnight()
PAST = {"start": iso(BASE), "end": iso(BASE + timedelta(hours=1))}


def _past_trades(market: SyncDatabase) -> None:
    market.seed_trades(
        "AAPL",
        [(BASE + timedelta(minutes=minute, seconds=5), "100.5", 3) for minute in range(5)],
    )


def _assert_cacheable(response: httpx.Response, cache_control: str) -> str:
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == cache_control
    etag = response.headers["etag"]
    assert STRONG_TAG.match(etag), etag
    # A shared cache keeps one answer per credential, never serving it to a request without.
    assert response.headers["vary"] == "Authorization, X-API-Key"
    return etag


def test_closed_candle_page_is_immutable_with_a_stable_strong_etag(
    client: TestClient, market: SyncDatabase
):
    _past_trades(market)

    first = client.get("/candles", params={"symbol": "AAPL", **PAST})
    again = client.get("/candles", params={"symbol": "AAPL", **PAST})

    assert first.json()["count"] == 5
    assert _assert_cacheable(first, IMMUTABLE) == _assert_cacheable(again, IMMUTABLE)


def test_candles_with_the_open_bucket_must_be_revalidated(client: TestClient, market: SyncDatabase):
    now = datetime.now(UTC)
    market.seed_trades("AAPL", [(now - timedelta(minutes=10), "100", 1)])

    # The default window ends with the bucket still open, here still without a candle.
    response = client.get("/candles", params={"symbol": "AAPL"})

    assert all(candle["closed"] for candle in response.json()["candles"])
    _assert_cacheable(response, "no-cache")


def test_every_page_of_a_final_trades_walk_is_immutable(client: TestClient, market: SyncDatabase):
    _past_trades(market)
    params = {"symbol": "AAPL", **PAST, "limit": 2, "order": "asc"}
    pages = []
    while True:
        response = client.get("/trades", params=params)
        _assert_cacheable(response, IMMUTABLE)
        pages.append(response.json())
        if response.json()["next_cursor"] is None:
            break
        params["cursor"] = response.json()["next_cursor"]

    assert [len(page["trades"]) for page in pages] == [2, 2, 1]


@pytest.mark.parametrize(
    "window",
    [
        {},
        {"start": iso(BASE)},
        {"end": iso(datetime.now(UTC) + timedelta(days=1))},
    ],
    ids=["unbounded", "no-end", "end-in-the-future"],
)
def test_trades_window_not_final_must_be_revalidated(
    client: TestClient, market: SyncDatabase, window: dict[str, str]
):
    _past_trades(market)

    response = client.get("/trades", params={"symbol": "AAPL", **window})

    _assert_cacheable(response, "no-cache")


@pytest.mark.parametrize("path", ["/symbols", "/price/latest?symbol=AAPL"])
def test_live_answers_carry_an_etag_and_no_cache(
    client: TestClient, market: SyncDatabase, path: str
):
    _past_trades(market)

    _assert_cacheable(client.get(path), "no-cache")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_matching_if_none_match_answers_304_without_a_body(
    client: TestClient, market: SyncDatabase, method: str
):
    _past_trades(market)
    etag = client.get("/candles", params={"symbol": "AAPL", **PAST}).headers["etag"]

    response = client.request(
        method, "/candles", params={"symbol": "AAPL", **PAST}, headers={"If-None-Match": etag}
    )

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert response.headers["cache-control"] == IMMUTABLE
    assert response.headers["vary"] == "Authorization, X-API-Key"
    assert "content-type" not in response.headers


def test_head_without_a_condition_carries_the_get_headers_without_a_body(
    client: TestClient, market: SyncDatabase
):
    _past_trades(market)
    get = client.get("/trades", params={"symbol": "AAPL", **PAST})

    head = client.head("/trades", params={"symbol": "AAPL", **PAST})

    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["cache-control"] == IMMUTABLE


@pytest.mark.parametrize(
    "condition",
    [
        "{tag}",
        "W/{tag}",
        '"other", {tag}',
        'W/"a,b", W/{tag}',
        "*",
    ],
    ids=["strong", "weak", "list", "list-with-comma-inside-a-tag", "star"],
)
def test_if_none_match_uses_weak_comparison_over_a_list(
    client: TestClient, market: SyncDatabase, condition: str
):
    _past_trades(market)
    etag = client.get("/symbols").headers["etag"]

    response = client.get("/symbols", headers={"If-None-Match": condition.format(tag=etag)})

    assert response.status_code == 304
    assert response.headers["etag"] == etag


def test_if_none_match_over_several_header_fields_is_one_list(
    client: TestClient, market: SyncDatabase
):
    etag = client.get("/symbols").headers["etag"]

    response = client.get(
        "/symbols", headers=[("If-None-Match", '"other"'), ("If-None-Match", etag)]
    )

    assert response.status_code == 304


@pytest.mark.parametrize("condition", ['"other"', 'W/"other", "another"', "garbage"])
def test_if_none_match_without_the_current_tag_answers_200_with_the_body(
    client: TestClient, market: SyncDatabase, condition: str
):
    response = client.get("/symbols", headers={"If-None-Match": condition})

    assert response.status_code == 200
    assert response.json()["count"] == 5


def test_a_changed_answer_gets_a_new_etag_and_the_old_one_no_longer_matches(
    client: TestClient, market: SyncDatabase
):
    _past_trades(market)
    before = client.get("/price/latest", params={"symbol": "AAPL"}).headers["etag"]
    market.seed_trades("AAPL", [(datetime.now(UTC), "101", 1)])

    response = client.get(
        "/price/latest", params={"symbol": "AAPL"}, headers={"If-None-Match": before}
    )

    assert response.status_code == 200
    assert response.headers["etag"] != before
    assert response.json()["price"] == 101


def test_problems_carry_no_etag(client: TestClient, market: SyncDatabase):
    response = client.get("/candles", params={"symbol": "NOPE"}, headers={"If-None-Match": "*"})

    assert response.status_code == 404
    assert "etag" not in response.headers
    # A problem to a credentialed request is not stored anywhere.
    assert response.headers["cache-control"] == "no-store"


# A request each secured operation answers 200 with the shared app's data; the walk below
# fails when the contract gains an operation this table does not name.
_WINDOW = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
_STREAM = {"limit": "1", "duration": "0.2"}
SAMPLE_QUERIES: dict[str, dict[str, str]] = {
    "/status/ingestion": {},
    "/metrics": {},
    "/symbols": {},
    "/price/latest": {"symbol": "AAPL"},
    "/prices/latest": {"symbols": "AAPL"},
    "/ticker": {"symbols": "AAPL"},
    "/trades": {"symbol": "AAPL"},
    "/candles": {"symbol": "AAPL"},
    "/stream/trades": {"symbols": "AAPL", **_STREAM},
    "/stream/candles": {"symbol": "AAPL", **_STREAM},
    "/export/trades": {"symbols": "AAPL", **_WINDOW},
    "/export/candles": {"symbols": "AAPL", **_WINDOW},
}
_CREDENTIALS = {"authorization", "x-api-key"}


def _secured_operations() -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in load_contract().document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "x-required-scopes" in operation
    ]


def _says_how_to_cache(response: httpx.Response) -> None:
    directives = {d.strip() for d in response.headers.get("cache-control", "").split(",")}
    vary = {v.strip().lower() for v in response.headers.get("vary", "").split(",")}
    # Not stored, or kept only per credential (the same answer for every key that may read it).
    assert directives & {"no-store", "private"} or _CREDENTIALS <= vary, (
        response.request.url,
        response.status_code,
        dict(response.headers),
    )


def test_the_sample_table_names_every_secured_operation() -> None:
    assert {path for _, path in _secured_operations()} == set(SAMPLE_QUERIES)


@pytest.mark.parametrize(("method", "path"), _secured_operations())
def test_every_credentialed_answer_says_how_it_may_be_cached(
    client: TestClient, market: SyncDatabase, method: str, path: str
) -> None:
    market.seed_trades("AAPL", [(BASE + timedelta(minutes=1), "100.5", 3)])
    served = client.request(method, path, params=SAMPLE_QUERIES[path])
    refused = client.request(
        method, path, params=SAMPLE_QUERIES[path], headers={"X-API-Key": "mdp_x"}
    )
    invalid = client.request(method, path, params={**SAMPLE_QUERIES[path], "bogus": "1"})

    assert served.status_code == 200, served.text
    assert (refused.status_code, invalid.status_code) == (401, 400)
    for response in (served, refused, invalid):
        _says_how_to_cache(response)
