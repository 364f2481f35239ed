"""camelCase operationIds resolve to the one handler of that name in the handlers package."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from connexion.exceptions import ResolverError
from connexion.resolver import Resolver

import handlers.market
from mdp.resolver import HandlerResolver, handler_name


def _operation(operation_id: str) -> SimpleNamespace:
    return SimpleNamespace(operation_id=operation_id, router_controller=None)


def test_handler_name_turns_camel_case_into_snake_case() -> None:
    assert handler_name("listCandles") == "list_candles"
    assert handler_name("getOpenapiJson") == "get_openapi_json"
    assert handler_name("getRoot") == "get_root"


@pytest.mark.parametrize(
    "operation_id", ["handlers.market.list_candles", "list_candles", "ListCandles", "getHTTP"]
)
def test_handler_name_refuses_what_is_not_short_camel_case(operation_id: str) -> None:
    with pytest.raises(ResolverError, match="not camelCase"):
        handler_name(operation_id)


def test_resolution_keeps_the_contracts_id_and_finds_the_handler() -> None:
    resolution = Resolver(HandlerResolver()).resolve(_operation("listCandles"))
    assert resolution.operation_id == "listCandles"
    assert resolution.function is handlers.market.list_candles


@pytest.mark.parametrize(
    ("operation_id", "found"),
    [("listCandels", "none"), ("symbolCode", "none")],  # a typo; a helper, not `async def`
)
def test_resolution_refuses_an_id_without_exactly_one_handler(
    operation_id: str, found: str
) -> None:
    with pytest.raises(ResolverError, match=f"in the handlers package, found {found}"):
        Resolver(HandlerResolver()).resolve(_operation(operation_id))


def test_a_handler_defined_in_two_modules_is_ambiguous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "twice_handlers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module in ("one", "two"):
        (package / f"{module}.py").write_text("async def get_thing():\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ResolverError, match="found twice_handlers.one.get_thing, twice_handlers.two"
    ):
        Resolver(HandlerResolver("twice_handlers")).resolve(_operation("getThing"))
