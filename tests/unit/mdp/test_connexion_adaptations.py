"""Each adaptation of Connexion's internals still applies: a Connexion upgrade that renames or
stops calling what mdp.connexion_adaptations overrides must fail here, not slow the service."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from connexion import AsyncApp
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityOperation
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from starlette.types import Receive, Scope, Send

from access.apikeys import RateLimit, hash_key
from access.keyring import Key
from access.security import AuthError, Guard, required_scopes
from errors import RequestValidationFailed
from mdp import connexion_adaptations as adaptations
from mdp.app import create_app
from mdp.settings import Settings
from mdp.spec import load_contract

OPERATION_IDS = {
    item[method]["operationId"]
    for item in load_contract().document["paths"].values()
    for method in item
    if method in ("get", "put", "post", "delete", "patch")
}


@pytest.fixture(scope="module")
def stack() -> list[Any]:
    """The middleware stack exactly as the app builds it on its first request."""
    app: AsyncApp = create_app(Settings())
    _, middlewares = app.middleware._build_middleware_stack()
    return list(middlewares)


def _one(stack: list[Any], kind: type) -> Any:
    [found] = [middleware for middleware in stack if isinstance(middleware, kind)]
    return found


def test_the_stock_middlewares_we_replace_are_still_connexions_defaults() -> None:
    assert RequestValidationMiddleware in ConnexionMiddleware.default_middlewares
    assert SwaggerUIMiddleware in ConnexionMiddleware.default_middlewares
    assert RoutingMiddleware in ConnexionMiddleware.default_middlewares
    assert ResponseValidationMiddleware in ConnexionMiddleware.default_middlewares


def test_response_validation_is_in_the_stack_only_when_asked_for(stack: list[Any]) -> None:
    _, validating = create_app(
        Settings(), validate_responses=True
    ).middleware._build_middleware_stack()

    assert not [m for m in stack if isinstance(m, ResponseValidationMiddleware)]
    assert [m for m in validating if isinstance(m, ResponseValidationMiddleware)]


async def test_every_operation_is_routed_without_starlettes_router(stack: list[Any]) -> None:
    routing = _one(stack, adaptations._RoutingMiddleware)
    paths = load_contract().document["paths"]
    expected = {
        (method.upper(), path): ("", item[method]["operationId"])
        for path, item in paths.items()
        for method in item
        if method == "get"
    }
    assert {key: value for key, value in routing.static.items() if key[0] == "GET"} == expected
    assert {path for method, path in routing.static if method == "HEAD"} == set(paths)

    routed: list[Any] = []
    fallback: list[str] = []

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        fallback.append(scope["path"])

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        routed.append((scope["path"], scope["extensions"]["connexion_routing"]))

    original = routing.router, routing.app
    routing.router, routing.app = router, downstream
    try:
        for method, path in (("GET", "/symbols"), ("HEAD", "/health"), ("POST", "/symbols")):
            scope = {"type": "http", "method": method, "path": path, "extensions": {}}
            await routing(scope, None, None)
        await routing({"type": "http", "method": "GET", "path": "/nope"}, None, None)
    finally:
        routing.router, routing.app = original

    assert routed == [
        ("/symbols", {"api_base_path": "", "operation_id": "listSymbols"}),
        ("/health", {"api_base_path": "", "operation_id": "getHealth"}),
    ]
    # A method or a path the contract does not have: Connexion's router answers (405, 404).
    assert fallback == ["/symbols", "/nope"]


def test_every_operation_is_validated_by_a_validator_built_once(stack: list[Any]) -> None:
    validation = _one(stack, adaptations._ValidationMiddleware)
    [api] = [api for apis in validation.apis.values() for api in apis]

    assert set(api.operations) == OPERATION_IDS
    for operation in api.operations.values():
        assert isinstance(operation, adaptations._ValidationOperation)
        assert operation.parameters.strict
        # What the stock operation reads per request, and the override builds from once.
        assert operation._operation.uri_parser_class is not None
        assert isinstance(operation.security_query_params, list)


def test_every_operation_is_served_by_an_operation_bound_once(stack: list[Any]) -> None:
    asgi_app = stack[-1]
    assert asgi_app.api_cls is adaptations._Api
    # Connexion's RoutedMiddleware calls `api.operations[operation_id]` for each request.
    [api] = [api for apis in asgi_app.apis.values() for api in apis]

    assert set(api.operations) == OPERATION_IDS
    for operation in api.operations.values():
        assert isinstance(operation, adaptations._Operation)
        # The stock operation wraps this attribute per request; the override calls it directly.
        assert callable(operation._fn)


async def test_swagger_ui_runs_its_router_only_for_its_own_paths(stack: list[Any]) -> None:
    swagger = _one(stack, adaptations._SwaggerUIMiddleware)
    assert swagger.prefixes and all(prefix.startswith("/docs") for prefix in swagger.prefixes)
    routed: list[str] = []
    passed: list[str] = []

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        routed.append(scope["path"])

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        passed.append(scope["path"])

    original = swagger.router, swagger.app
    swagger.router, swagger.app = router, downstream
    try:
        for path in ("/symbols", "/docs/", "/docs/swagger-ui.css", "/health"):
            await swagger({"type": "http", "path": path}, None, None)
    finally:
        swagger.router, swagger.app = original

    assert routed == ["/docs/", "/docs/swagger-ui.css"]
    assert passed == ["/symbols", "/health"]


def test_what_connexions_security_layer_records_reaches_the_handler() -> None:
    async def handler(user: str, token_info: dict[str, Any], limit: int = 1) -> None:
        raise AssertionError("not called")

    operation = adaptations._Operation(
        handler, jsonifier=None, operation_id="example", pythonic_params=False
    )
    scope: dict[str, Any] = {"type": "http", "headers": [], "query_string": b""}
    # Where Connexion's security handlers put what they found about the caller.
    context = ConnexionRequest(scope).context
    context.update(user="alice", token_info={"scope": "read"}, unrelated=1)
    scope["extensions"][adaptations.ARGUMENTS] = ({"limit": 3, "order": "asc"}, {})

    assert operation.bind(scope) == {"user": "alice", "token_info": {"scope": "read"}, "limit": 3}


def test_a_repeated_valid_request_is_parsed_once_and_each_gets_its_own_values(
    stack: list[Any],
) -> None:
    validation = _one(stack, adaptations._ValidationMiddleware)
    [api] = [api for apis in validation.apis.values() for api in apis]
    parameters = api.operations["getLatestPrices"].parameters
    scope = {"type": "http", "headers": [], "query_string": b"symbols=AAPL,MSFT"}
    parsed: list[bytes] = []
    parse = parameters._parse

    def counting(query_string: bytes, *args: Any) -> Any:
        parsed.append(query_string)
        return parse(query_string, *args)

    parameters._parse = counting
    try:
        first, _ = parameters.check(scope)
        first["symbols"].append("CHANGED")
        second, _ = parameters.check(scope)
        with pytest.raises(RequestValidationFailed):
            parameters.check({**scope, "query_string": b"symbols=AAPL&symbols=MSFT&x=1"})
        with pytest.raises(RequestValidationFailed):
            parameters.check({**scope, "query_string": b"symbols=AAPL&symbols=MSFT&x=1"})
    finally:
        del parameters._parse

    assert second == {"symbols": ["AAPL", "MSFT"]}
    # Refusals are not remembered: a fuzzer's endless variety must not fill the memo.
    assert parsed == [b"symbols=AAPL,MSFT", *[b"symbols=AAPL&symbols=MSFT&x=1"] * 2]


def _security_operations(stack: list[Any]) -> dict[str, Any]:
    security = _one(stack, adaptations._SecurityMiddleware)
    [api] = [api for apis in security.apis.values() for api in apis]
    return dict(api.operations)


def test_every_secured_operation_is_judged_by_one_call_of_mdp_security(stack: list[Any]) -> None:
    secured = required_scopes(load_contract().document)
    operations = _security_operations(stack)

    assert set(operations) == OPERATION_IDS
    for operation_id, operation in operations.items():
        assert isinstance(operation, adaptations._SecurityOperation)
        # What the override reads of Connexion's operation, per the contract.
        assert operation.judged_by_mdp == (operation_id in secured), operation_id


def _key(key_id: str, scopes: set[str], *, revoked: bool = False) -> tuple[str, Key]:
    text = f"mdp_{key_id}_{'s' * 43}"
    key = Key(
        key_id, f"key {key_id}", hash_key(text), frozenset(scopes), RateLimit(10**6, 1), revoked
    )
    return text, key


async def test_the_one_call_decides_as_connexions_own_security_check(stack: list[Any]) -> None:
    document = load_contract().document
    guard = Guard(mode="required", scopes=required_scopes(document))
    reader, read_key = _key("a" * 12, {"read"})
    streamer, stream_key = _key("b" * 12, {"stream"})
    revoked, revoked_key = _key("c" * 12, {"read"}, revoked=True)
    # The ring as a reload from the database leaves it (tests/integration/test_keyring.py).
    guard.ring._keys = {key.id: key for key in (read_key, stream_key, revoked_key)}
    guard.ring.loaded = True
    operation = _security_operations(stack)["listSymbols"]
    credentials: list[list[tuple[bytes, bytes]]] = [
        [],
        [(b"x-api-key", reader.encode())],
        [(b"authorization", b"Bearer " + reader.encode())],
        [(b"authorization", b"bearer  " + reader.encode() + b" ")],
        [(b"x-api-key", reader.encode()), (b"authorization", b"Bearer " + reader.encode())],
        [(b"x-api-key", reader.encode()), (b"x-api-key", reader.encode())],
        [(b"authorization", b"Basic " + reader.encode())],
        [(b"x-api-key", b"mdp_nope")],
        [(b"x-api-key", reader[:-1].encode() + b"t")],
        [(b"x-api-key", revoked.encode())],
        [(b"authorization", b"Bearer " + streamer.encode())],
        [(b"x-api-key", b"x" * 500)],
    ]

    async def decide(call: Any, headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...]:
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/symbols",
            "headers": headers,
            "query_string": b"",
            "state": {"app": SimpleNamespace(guard=guard)},
            "extensions": {
                "connexion_routing": {
                    "api_base_path": "",
                    "operation_id": "listSymbols",
                }
            },
        }
        reached: list[dict[str, Any]] = []

        async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
            reached.append(dict(scope["extensions"]["connexion_context"]))

        original = operation.next_app
        operation.next_app = downstream
        try:
            await call(scope, None, None)
        except AuthError as exc:
            return type(exc), exc.reason, exc.key
        finally:
            operation.next_app = original
        return ("served", reached)

    for headers in credentials:
        ours = await decide(operation, headers)
        connexions = await decide(SecurityOperation.__call__.__get__(operation), headers)
        assert ours == connexions, headers
    assert await decide(operation, credentials[1]) == (
        "served",
        [
            {
                "user": read_key.id,
                "token_info": {"sub": read_key.id, "max_exports": None, "max_streams": None},
            }
        ],
    )
