"""Where the service goes past Connexion 3.3's documented extension points: the only module.

Connexion routes every request, runs the security handlers of `access.security` and validates
parameters with `mdp.validation.ParameterValidator`, all plugged in through `add_api`'s
documented options, and calls the handler `mdp.resolver` found. What it redoes per request
that depends only on the operation is done once here instead, by small overrides shaped like
patches we could offer upstream. Each with the CPU µs it saves per request to `/metrics`
(secured) / `/health` (public), measured by `bench/connexion.py` against the stock class:

- `install` (`_Operation`), 67 / 65: `AsyncOperation` decorates the handler once, and binds
  the values validation parsed instead of a `ConnexionRequest`, a second query parse and
  `inspect.signature` per request.
- `RequestValidationMiddleware`, 23 / 20: `RequestValidationOperation` builds its URI parser
  and parameter validator once.
- `SwaggerUIMiddleware`, 10 / 10: its router runs only under the paths it serves.
- `RoutingMiddleware`, 9 / 7: a path without parameters is looked up in a dict before the
  routes are tried in turn.
- `SecurityMiddleware`, 5 / –: verification functions get a request that builds a
  `ConnexionRequest` only on demand.

All together, `/metrics` costs 33 µs instead of 154 and `/health` 22 instead of 129, with
Connexion 3.3.0: re-measure after an upgrade. Connexion ships no type information: each class
overridden here is declared for mypy (`_Stock…`, under TYPE_CHECKING) with what the override
relies on of it, and is Connexion's own at run time, so mypy checks the overrides.
`tests/unit/mdp/test_connexion_adaptations.py` fails when an upgrade renames or stops calling
what is overridden here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

from connexion.decorators.parameter import CONTEXT_NAME, sanitized, unwrap_decorators
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.abstract import ROUTING_CONTEXT
from connexion.middleware.routing import RoutingOperation
from connexion.validators import VALIDATOR_MAP as CONNEXION_VALIDATORS
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mdp.validation import PARSED

if TYPE_CHECKING:
    # For mypy, what the overrides rely on of Connexion's classes; at run time, Connexion's.

    class _StockOperation(Protocol):
        """Connexion's `AbstractOperation`, as the overrides read it."""

        operation_id: str
        parameters: list[dict[str, Any]]
        request_body: dict[str, Any]
        function: Callable[..., Any]
        uri_parser_class: Callable[[list[dict[str, Any]], dict[str, Any]], Any]

        def body_definition(self) -> dict[str, Any]: ...

    class _StockValidationOperation:
        next_app: ASGIApp
        security_query_params: list[str]

        def __init__(
            self,
            next_app: ASGIApp,
            *,
            operation: _StockOperation,
            strict_validation: bool = False,
            validator_map: Mapping[str, Any] | None = None,
        ) -> None: ...

    class _StockRoutedApi:
        next_app: ASGIApp
        strict_validation: bool
        validator_map: Mapping[str, Any] | None
        pythonic_params: bool
        jsonifier: Any

    class _StockValidationMiddleware:
        api_cls: type[Any]

    class _StockAsyncOperation:
        def __init__(
            self, fn: Callable[..., Any], jsonifier: Any, operation_id: str, pythonic_params: bool
        ) -> None: ...

    class _StockSecurityOperation:
        next_app: ASGIApp
        security: list[dict[str, list[str]]]
        verification_fn: Callable[[Any], Awaitable[None]]

        @classmethod
        def from_operation(
            cls, operation: _StockOperation, *, next_app: ASGIApp, security_handler_factory: Any
        ) -> Self: ...

    class _StockSecurityApi:
        next_app: ASGIApp
        security_handler_factory: Any

    class _StockSecurityMiddleware:
        api_cls: type[Any]

    class _StockRouter(Protocol):
        routes: list[Any]

    class _StockSpecMiddleware:
        app: ASGIApp
        router: _StockRouter

        def add_api(self, *args: Any, **kwargs: Any) -> None: ...
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

    class _StockAsyncApp(Protocol):
        api_cls: type[Any]

    _StockValidationApi = _StockRoutedApi
    _StockRouting = _StockSpecMiddleware
    _StockSwaggerUI = _StockSpecMiddleware
else:
    from connexion.apps.asynchronous import AsyncApi as _StockRoutedApi
    from connexion.apps.asynchronous import AsyncOperation as _StockAsyncOperation
    from connexion.middleware.request_validation import (
        RequestValidationAPI as _StockValidationApi,
    )
    from connexion.middleware.request_validation import (
        RequestValidationMiddleware as _StockValidationMiddleware,
    )
    from connexion.middleware.request_validation import (
        RequestValidationOperation as _StockValidationOperation,
    )
    from connexion.middleware.routing import RoutingMiddleware as _StockRouting
    from connexion.middleware.security import SecurityAPI as _StockSecurityApi
    from connexion.middleware.security import SecurityMiddleware as _StockSecurityMiddleware
    from connexion.middleware.security import SecurityOperation as _StockSecurityOperation
    from connexion.middleware.swagger_ui import SwaggerUIMiddleware as _StockSwaggerUI

# Where Connexion's security middleware records what the scheme handlers found.
_SECURITY_CONTEXT = "connexion_context"

__all__ = [
    "RequestValidationMiddleware",
    "RoutingMiddleware",
    "SecurityMiddleware",
    "SwaggerUIMiddleware",
    "install",
]


class _SecurityRequest:
    """The request Connexion's verification functions are given: the scope and the dict they
    record the caller in at hand, the rest of a `ConnexionRequest` built only when a function
    asks for it (access.security's read only the scope)."""

    __slots__ = ("scope", "context")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        # Where ConnexionRequest.context keeps it, and _Operation reads it.
        self.context = scope.setdefault("extensions", {}).setdefault(_SECURITY_CONTEXT, {})

    def __getattr__(self, name: str) -> Any:
        return getattr(ConnexionRequest(self.scope), name)


class _SecurityOperation(_StockSecurityOperation):
    """Calls Connexion's verification function (each scheme's, from `security_map`, in turn)
    with a `_SecurityRequest` instead of a `ConnexionRequest`, whose Starlette request and
    proxied attributes (each tests the truth of a Mapping, i.e. the scope's length) cost more
    than the verification."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.security:
            await self.verification_fn(_SecurityRequest(scope))
        await self.next_app(scope, receive, send)


class _SecurityApi(_StockSecurityApi):
    def make_operation(self, operation: _StockOperation) -> _SecurityOperation:
        return _SecurityOperation.from_operation(
            operation,
            next_app=self.next_app,
            security_handler_factory=self.security_handler_factory,
        )


class SecurityMiddleware(_StockSecurityMiddleware):
    """Connexion's security, with `_SecurityOperation`s."""

    api_cls = _SecurityApi


class _ValidationOperation(_StockValidationOperation):
    """Builds the operation's URI parser and parameter validator (`validator_map["parameter"]`,
    mdp.validation.ParameterValidator) once; Connexion builds both for every request, and ours
    compiles the parameters' JSON schemas when built."""

    def __init__(
        self,
        next_app: ASGIApp,
        *,
        operation: _StockOperation,
        strict_validation: bool = False,
        validator_map: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            next_app,
            operation=operation,
            strict_validation=strict_validation,
            validator_map=validator_map,
        )
        if operation.request_body:
            # Nothing in the contract has a body; validating one is Connexion's stock path.
            raise NotImplementedError(f"{operation.operation_id}: request bodies")
        validators = {**CONNEXION_VALIDATORS, **(validator_map or {})}
        self.parameter_validator = validators["parameter"](
            operation.parameters,
            uri_parser=operation.uri_parser_class(
                operation.parameters, operation.body_definition()
            ),
            strict_validation=strict_validation,
            security_query_params=self.security_query_params,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # What the stock call does for an operation without a request body.
        self.parameter_validator.validate(scope)
        await self.next_app(scope, receive, send)


class _ValidationApi(_StockValidationApi):
    def make_operation(self, operation: _StockOperation) -> _ValidationOperation:
        return _ValidationOperation(
            self.next_app,
            operation=operation,
            strict_validation=self.strict_validation,
            validator_map=self.validator_map,
        )


class RequestValidationMiddleware(_StockValidationMiddleware):
    """Connexion's request validation, with `_ValidationOperation`s."""

    api_cls = _ValidationApi


# Parameter names as Connexion turns them into argument names; there are few distinct ones.
_sanitize = functools.lru_cache(maxsize=512)(sanitized)


def _sanitized_items(*mappings: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for mapping in mappings:
        for name, value in mapping.items():
            yield _sanitize(name), value


class _Operation(_StockAsyncOperation):
    """Calls the handler with the values validation parsed (mdp.validation.PARSED) and what the
    security handlers recorded, by the handler's signature, inspected once. Connexion instead
    decorates the handler per request (`inspect.signature`, a `ConnexionRequest`, the query
    parsed again). The handler returns a Starlette response (see mdp.responses), sent as it
    is."""

    def __init__(
        self,
        fn: Callable[..., Any],
        jsonifier: Any,
        operation_id: str,
        pythonic_params: bool,
    ) -> None:
        super().__init__(fn, jsonifier, operation_id, pythonic_params)
        self.operation_id = operation_id
        self.handler = fn
        unwrapped = unwrap_decorators(fn)
        if not inspect.iscoroutinefunction(unwrapped):
            raise TypeError(f"{operation_id}: handlers must be coroutine functions")
        signature = inspect.signature(unwrapped).parameters.values()
        self.accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature)
        self.arguments = {
            p.name for p in signature if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def bind(self, scope: Scope) -> dict[str, Any]:
        query, path = scope["extensions"][PARSED]
        kwargs = {
            name: value
            for name, value in _sanitized_items(query, path)
            if self.accepts_any or name in self.arguments
        }
        context = scope["extensions"].get(_SECURITY_CONTEXT)
        if context:
            kwargs.update(
                (key, value)
                for key, value in context.items()
                if self.accepts_any or key in self.arguments
            )
            if CONTEXT_NAME in self.arguments:
                kwargs[CONTEXT_NAME] = context
        return kwargs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(**self.bind(scope))
        await response(scope, receive, send)


class _Api(_StockRoutedApi):
    def make_operation(self, operation: _StockOperation) -> _Operation:
        return _Operation(
            operation.function,
            jsonifier=self.jsonifier,
            operation_id=operation.operation_id,
            pythonic_params=self.pythonic_params,
        )


class RoutingMiddleware(_StockRouting):
    """Finds the operation of a path without parameters (every path of our contract) in a dict
    built from Connexion's own routes, instead of matching the routes one by one; anything
    else (unknown paths, wrong methods, a path with parameters) goes through its router."""

    static: dict[tuple[str, str], tuple[str, str | None]]

    def add_api(self, *args: Any, **kwargs: Any) -> None:
        super().add_api(*args, **kwargs)
        self.static = {}
        # Reversed: for a base path mounted twice, the first API registered wins, as routing.
        for mount in reversed(self.router.routes):
            if not isinstance(mount, Mount) or "{" in mount.path:
                continue
            for route in mount.routes:
                if (
                    isinstance(route, Route)
                    and not route.param_convertors
                    and isinstance(route.app, RoutingOperation)
                    and route.methods
                ):
                    for method in route.methods:
                        target = (mount.path, route.app.operation_id)
                        self.static[(method, mount.path + route.path)] = target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.static.get((scope.get("method", ""), scope.get("path", "")))
        if target is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        # What RoutingOperation does once Starlette's router matched: the operation on a copy
        # of the scope whose `extensions` dict is shared with the caller's.
        base_path, operation_id = target
        routed = dict(scope)
        routed.setdefault("path_params", {})
        extensions = routed.setdefault("extensions", {})
        extensions.setdefault(ROUTING_CONTEXT, {}).update(
            {"api_base_path": base_path, "operation_id": operation_id}
        )
        await self.app(routed, receive, send)


class SwaggerUIMiddleware(_StockSwaggerUI):
    """Runs its router only for the paths it serves (`/docs…`), not for every request."""

    prefixes: tuple[str, ...] = ()

    def add_api(self, *args: Any, **kwargs: Any) -> None:
        super().add_api(*args, **kwargs)
        self.prefixes = tuple(
            mount.path + route.path
            for mount in self.router.routes
            if isinstance(mount, Mount)
            for route in mount.routes
            if isinstance(route, Route | Mount)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def install(app: Any) -> None:
    """Makes the AsyncApp `app` call handlers through `_Operation`, before its first request."""
    cast("_StockAsyncApp", app.middleware.app).api_cls = _Api
