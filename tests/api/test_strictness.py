"""Requests the contract refuses although each value alone is fine: repeats, unmet Accept."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.api.support import SyncDatabase, assert_problem, error_names


@pytest.mark.parametrize(
    ("path", "query", "repeated"),
    [
        ("/price/latest", "symbol=AAPL&symbol=MSFT", ["symbol"]),
        ("/trades", "symbol=AAPL&limit=5&limit=5", ["limit"]),
        ("/candles", "symbol=AAPL&interval=1m&interval=5m&limit=1&limit=2", ["interval", "limit"]),
        ("/symbols", "cursor=QQ&cursor=QQ", ["cursor"]),
    ],
)
def test_a_repeated_query_parameter_is_rejected_naming_it(
    client: TestClient, market: SyncDatabase, path: str, query: str, repeated: list[str]
) -> None:
    response = client.get(f"{path}?{query}")

    assert error_names(response) == repeated
    assert all("2 times" in entry["message"] for entry in response.json()["errors"])


def test_a_repeat_is_reported_with_every_other_offending_parameter(
    client: TestClient, market: SyncDatabase
) -> None:
    response = client.get("/trades?symbol=AAPL&symbol=AAPL&limit=0&bogus=1")

    assert sorted(error_names(response)) == ["bogus", "limit", "symbol"]


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/symbols", "application/xml"),
        ("/price/latest?symbol=AAPL", "text/html"),
        ("/metrics", "image/png"),
        ("/openapi.yaml", "application/json"),
        ("/symbols", "application/json;q=0"),
    ],
)
def test_an_accept_the_operation_cannot_satisfy_is_a_not_acceptable_problem(
    client: TestClient, market: SyncDatabase, path: str, accept: str
) -> None:
    response = client.get(path, headers={"Accept": accept})

    body = assert_problem(response, 406, "not_acceptable")
    assert accept in body["detail"]


@pytest.mark.parametrize(
    ("path", "accept", "media_type"),
    [
        ("/symbols", "*/*", "application/json"),
        ("/symbols", "application/*", "application/json"),
        ("/symbols", "text/html, application/json;q=0.1", "application/json"),
        ("/metrics", "text/plain", "text/plain"),
        ("/openapi.yaml", "application/yaml", "application/yaml"),
        ("/redoc", "text/html,application/xhtml+xml,*/*;q=0.8", "text/html"),
    ],
)
def test_an_accept_that_admits_a_media_type_of_the_operation_is_served(
    client: TestClient, market: SyncDatabase, path: str, accept: str, media_type: str
) -> None:
    response = client.get(path, headers={"Accept": accept})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)


@pytest.mark.parametrize("value", ["NaN", "nan", "-NaN"])
@pytest.mark.parametrize("path", ["/stream/trades?symbols=AAPL", "/stream/candles?symbol=AAPL"])
def test_a_duration_that_is_not_a_finite_number_is_refused(
    client: TestClient, market: SyncDatabase, path: str, value: str
) -> None:
    response = client.get(f"{path}&duration={value}")

    assert_problem(response, 400, "validation_failed")
    assert error_names(response) == ["duration"]


def test_thousands_of_unknown_parameters_give_a_bounded_answer(
    client: TestClient, market: SyncDatabase
) -> None:
    query = "&".join(f"p{n}=1" for n in range(7000))

    response = client.get(f"/symbols?{query}")

    body = assert_problem(response, 400, "validation_failed")
    assert len(body["errors"]) == 20
    assert body["errors_omitted"] == 6980
    assert "and 6980 more" in body["detail"]
    assert len(response.content) < 4096
