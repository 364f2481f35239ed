"""Connexion runs the service's routing, security and validation through its documented options,
and each adaptation of mdp.connexion_adaptations still applies: a Connexion upgrade that
renames or stops calling what is overridden there must fail here, not slow the service."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from connexion import AsyncApp
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import RequestValidationOperation
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.security import SecurityMiddleware, SecurityOperation
from starlette.types import Receive, Scope, Send

from access import security
from access.apikeys import RateLimit, hash_key
from access.keyring import Key
from access.security import AuthError, Forbidden, Guard, Unauthenticated, required_scopes
from errors import RequestValidationFailed
from mdp import connexion_adaptations as adaptations
from mdp.app import create_app
from mdp.settings import Settings
from mdp.spec import load_contract
from mdp.validation import PARSED, ParameterValidator

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


def _operations(middleware: Any) -> dict[str, Any]:
    [api] = [api for apis in middleware.apis.values() for api in apis]
    return dict(api.operations)


def test_the_stack_is_connexions_default_with_four_of_its_middlewares_adapted() -> None:
    app = create_app(Settings(), validate_responses=True)
    listed = [getattr(m, "func", m) for m in app.middleware.middlewares]
    adapted = [m for m in listed if m.__module__ == adaptations.__name__]
    frameworks = [m for m in listed if m.__module__.startswith("connexion.") or m in adapted]

    # Each adapted middleware stands where the stock one it subclasses stands by default.
    assert [
        m.__mro__[1] if m in adapted else m for m in frameworks
    ] == ConnexionMiddleware.default_middlewares
    assert {m.__name__ for m in adapted} == {
        "SwaggerUIMiddleware",
        "RoutingMiddleware",
        "SecurityMiddleware",
        "RequestValidationMiddleware",
    }


def test_response_validation_is_in_the_stack_only_when_asked_for(stack: list[Any]) -> None:
    _, validating = create_app(
        Settings(), validate_responses=True
    ).middleware._build_middleware_stack()

    assert not [m for m in stack if isinstance(m, ResponseValidationMiddleware)]
    assert [m for m in validating if isinstance(m, ResponseValidationMiddleware)]


async def test_every_operation_is_routed_without_starlettes_router(stack: list[Any]) -> None:
    routing = _one(stack, adaptations.RoutingMiddleware)
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


async def test_every_operation_is_validated_by_our_validator_built_once(
    stack: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    operations = _operations(_one(stack, adaptations.RequestValidationMiddleware))

    assert set(operations) == OPERATION_IDS
    for operation in operations.values():
        assert isinstance(operation, RequestValidationOperation)
        assert isinstance(operation.parameter_validator, ParameterValidator)
        assert operation.parameter_validator.strict

    built: list[Any] = []
    monkeypatch.setattr(ParameterValidator, "__init__", lambda *args, **kw: built.append(args))
    operation = operations["getLatestPrices"]
    reached: list[Any] = []

    async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["extensions"][PARSED])

    monkeypatch.setattr(operation, "next_app", downstream)
    scope = {"type": "http", "headers": [], "query_string": b"symbols=AAPL", "extensions": {}}
    for _ in range(2):
        await operation(scope, None, None)

    # Connexion's own call would build a URI parser and a validator for each request.
    assert built == []
    assert reached == [({"symbols": ["AAPL"]}, {})] * 2


def test_every_operation_is_served_by_an_operation_bound_once(stack: list[Any]) -> None:
    asgi_app = stack[-1]
    assert asgi_app.api_cls is adaptations._Api
    # Connexion's RoutedMiddleware calls `api.operations[operation_id]` for each request.
    operations = _operations(asgi_app)

    assert set(operations) == OPERATION_IDS
    for operation in operations.values():
        assert isinstance(operation, adaptations._Operation)
        assert callable(operation.handler)


async def test_swagger_ui_runs_its_router_only_for_its_own_paths(stack: list[Any]) -> None:
    swagger = _one(stack, adaptations.SwaggerUIMiddleware)
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
    scope["extensions"][PARSED] = ({"limit": 3, "order": "asc"}, {})

    assert operation.bind(scope) == {"user": "alice", "token_info": {"scope": "read"}, "limit": 3}


def test_a_repeated_valid_request_is_parsed_once_and_each_gets_its_own_values(
    stack: list[Any],
) -> None:
    operations = _operations(_one(stack, adaptations.RequestValidationMiddleware))
    parameters = operations["getLatestPrices"].parameter_validator
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


def test_every_secured_operation_is_verified_by_our_scheme_handlers(stack: list[Any]) -> None:
    secured = required_scopes(load_contract().document)
    middleware = _one(stack, SecurityMiddleware)
    [api] = [api for apis in middleware.apis.values() for api in apis]
    operations = _operations(middleware)

    assert set(operations) == OPERATION_IDS
    for scheme, handler in security.security_map.items():
        assert api.security_handler_factory.security_handlers[scheme] is handler
    for operation_id, operation in operations.items():
        assert isinstance(operation, adaptations._SecurityOperation)
        # Connexion's verification function, over the schemes the contract names.
        assert operation.verification_fn.__module__ == "connexion.security"
        assert bool(operation.security) == (operation_id in secured), operation_id


def test_a_verification_function_may_read_all_of_a_connexion_request() -> None:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/symbols",
        "headers": [(b"x-api-key", b"mdp_key")],
        "query_string": b"limit=2",
    }
    request = adaptations._SecurityRequest(scope)

    assert request.scope is scope
    assert request.context is ConnexionRequest(scope).context
    assert request.headers["x-api-key"] == "mdp_key"
    assert request.query_params["limit"] == "2"


def _key(key_id: str, scopes: set[str], *, revoked: bool = False) -> tuple[str, Key]:
    text = f"mdp_{key_id}_{'s' * 43}"
    key = Key(
        key_id, f"key {key_id}", hash_key(text), frozenset(scopes), RateLimit(10**6, 1), revoked
    )
    return text, key


async def test_each_request_is_judged_once_by_the_scheme_its_credentials_belong_to(
    stack: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    document = load_contract().document
    guard = Guard(mode="required", scopes=required_scopes(document))
    reader, read_key = _key("a" * 12, {"read"})
    streamer, stream_key = _key("b" * 12, {"stream"})
    revoked, revoked_key = _key("c" * 12, {"read"}, revoked=True)
    # The ring as a reload from the database leaves it (tests/integration/test_keyring.py).
    guard.ring._keys = {key.id: key for key in (read_key, stream_key, revoked_key)}
    guard.ring.loaded = True
    judged: list[tuple[bytes, ...]] = []
    judge = Guard.judge

    def counting(self: Guard, scope: Any, api_keys: list[bytes], bearer: list[bytes]) -> Any:
        judged.append((*api_keys, *bearer))
        return judge(self, scope, api_keys, bearer)

    monkeypatch.setattr(Guard, "judge", counting)
    operation = _operations(_one(stack, SecurityMiddleware))["listSymbols"]

    async def decide(call: Any, headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...]:
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/symbols",
            "headers": headers,
            "query_string": b"",
            "state": {"app": SimpleNamespace(guard=guard)},
            "extensions": {
                "connexion_routing": {"api_base_path": "", "operation_id": "listSymbols"}
            },
        }
        reached: list[dict[str, Any]] = []

        async def downstream(scope: Scope, receive: Receive, send: Send) -> None:
            reached.append(dict(scope["extensions"]["connexion_context"]))

        monkeypatch.setattr(operation, "next_app", downstream)
        judged.clear()
        try:
            await call(scope, None, None)
        except AuthError as exc:
            outcome: tuple[Any, ...] = (type(exc), exc.reason, exc.key)
        else:
            outcome = ("served", reached)
        assert len(judged) == 1, headers
        return outcome

    def api_key(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"x-api-key", value)]

    def authorization(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"authorization", value)]

    served = ("served", [{"user": read_key.id, "token_info": {"sub": read_key.id, **_CAPS}}])
    cases: list[tuple[list[tuple[bytes, bytes]], tuple[Any, ...]]] = [
        ([], (Unauthenticated, "missing_credentials", None)),
        (api_key(reader.encode()), served),
        (authorization(b"Bearer " + reader.encode()), served),
        (authorization(b"bearer  " + reader.encode() + b" "), served),
        (
            api_key(reader.encode()) + authorization(b"Bearer " + reader.encode()),
            (Unauthenticated, "several_credentials", None),
        ),
        (api_key(reader.encode()) * 2, (Unauthenticated, "several_credentials", None)),
        (
            authorization(b"Basic " + reader.encode()),
            (Unauthenticated, "malformed_authorization", None),
        ),
        (api_key(b"mdp_nope"), (Unauthenticated, "malformed_key", None)),
        (api_key(reader[:-1].encode() + b"t"), (Unauthenticated, "invalid_key", None)),
        (api_key(revoked.encode()), (Unauthenticated, "revoked", revoked_key)),
        (authorization(b"Bearer " + streamer.encode()), (Forbidden, "forbidden", stream_key)),
        (api_key(b"x" * 500), (Unauthenticated, "malformed_key", None)),
    ]
    stock = SecurityOperation.__call__.__get__(operation)
    for headers, expected in cases:
        assert await decide(operation, headers) == expected, headers
        # The same decision as Connexion's own call, with its ConnexionRequest.
        assert await decide(stock, headers) == expected, headers


_CAPS = {"max_exports": None, "max_streams": None}
