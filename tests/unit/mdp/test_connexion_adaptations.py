"""Each adaptation of Connexion's internals still applies: a Connexion upgrade that renames or
stops calling what mdp.connexion_adaptations overrides must fail here, not slow the service."""

from __future__ import annotations

from typing import Any

import pytest
from connexion import AsyncApp
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.main import ConnexionMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from starlette.types import Receive, Scope, Send

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
