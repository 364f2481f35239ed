"""Every adaptation of Connexion's internals, in one place: per-operation work done once.

Connexion 3.3 rebuilds per request what depends only on the operation: the URI parser and the
parameter validator (request validation middleware), and `decorate()` with its
`inspect.signature` plus a `ConnexionRequest` whose query it parses again (the operation). Its
security layer builds a `ConnexionRequest` and tries every scheme's function per request, and
its Swagger UI middleware runs a router on every request. Connexion still routes every
request, applies security and validates parameters against the contract; these classes only
build the per-operation parts once. `tests/unit/mdp/test_connexion_adaptations.py` fails when an
upgrade renames or stops calling what is overridden here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from connexion import AsyncApp
from connexion.apps.asynchronous import AsyncApi, AsyncOperation
from connexion.datastructures import MediaTypeDict
from connexion.decorators.parameter import CONTEXT_NAME, sanitized, unwrap_decorators
from connexion.middleware.abstract import ROUTING_CONTEXT
from connexion.middleware.request_validation import (
    RequestValidationAPI,
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware, RoutingOperation
from connexion.middleware.security import SecurityAPI, SecurityMiddleware, SecurityOperation
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.operations import AbstractOperation
from connexion.validators import VALIDATOR_MAP
from connexion.validators.abstract import AbstractResponseBodyValidator
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from access import security
from mdp.validation import OperationParameters
from persistence.admission import client_gone
from web.request import disconnected

__all__ = ["RESPONSE_VALIDATORS", "adapt"]

# Where validation leaves the parsed (query, path) values for the operation to bind.
ARGUMENTS = "mdp_arguments"
# Where Connexion's security middleware leaves what its handlers found (user, token_info).
_SECURITY_CONTEXT = "connexion_context"


def _success_media_types(operation: AbstractOperation) -> list[str]:
    types: list[str] = []
    for status, response in operation.responses.items():
        if str(status).startswith("2"):
            types.extend(response.get("content", {}))
    return types


class _ValidationOperation(RequestValidationOperation):  # type: ignore[misc]
    """Validates with an `OperationParameters` built once, not a validator and URI parser per
    request, and hands the parsed values on so the operation does not parse them again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        operation = self._operation
        if operation.is_request_body_defined:
            # Nothing in the contract has a body; validating one is Connexion's stock path.
            raise NotImplementedError(f"{operation.operation_id}: request bodies")
        self.parameters = OperationParameters(
            operation.parameters,
            uri_parser=operation.uri_parser_class(
                operation.parameters, operation.body_definition()
            ),
            produces=_success_media_types(operation),
            strict=self.strict_validation,
            allowed_extra_query=self.security_query_params,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"][ARGUMENTS] = self.parameters.check(scope)
        await self.next_app(scope, receive, send)


class _ValidationAPI(RequestValidationAPI):  # type: ignore[misc]
    def make_operation(self, operation: AbstractOperation) -> _ValidationOperation:
        return _ValidationOperation(
            self.next_app,
            operation=operation,
            strict_validation=self.strict_validation,
            validator_map=self.validator_map,
        )


class _ValidationMiddleware(RequestValidationMiddleware):  # type: ignore[misc]
    api_cls = _ValidationAPI


class _SecurityOperation(SecurityOperation):  # type: ignore[misc]
    """Calls `access.security.judge` with the scope instead of building a `ConnexionRequest` and
    trying each scheme's function in turn. With only our schemes that is the same decision:
    exactly one of their functions judges any request, by calling `judge` (see access.security).
    An operation secured any other way keeps Connexion's own check."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.judged_by_mdp = bool(self.security) and all(
            len(requirement) == 1 and self._ours(self.security_schemes[name])
            for requirement in self.security
            for name in requirement
        )

    def _ours(self, scheme: dict[str, Any]) -> bool:
        # The handler Connexion's factory would pick for the scheme (parse_security_scheme).
        if scheme["type"] == "http":
            kind = scheme["scheme"].lower()
        elif scheme["type"] == "apiKey" and not scheme.get("x-authentication-scheme"):
            kind = "apiKey"
        else:
            return False
        handler = self.security_handler_factory.security_handlers.get(kind)
        return handler is not None and handler is security.security_map.get(kind)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.judged_by_mdp:
            await super().__call__(scope, receive, send)
            return
        token_info = security.judge(scope)
        # What Connexion's verify_fn records, where the operation binds it from.
        scope["extensions"].setdefault(_SECURITY_CONTEXT, {}).update(
            {"user": token_info.get("sub"), "token_info": token_info}
        )
        await self.next_app(scope, receive, send)


class _SecurityAPI(SecurityAPI):  # type: ignore[misc]
    def make_operation(self, operation: Any) -> _SecurityOperation:
        built: _SecurityOperation = _SecurityOperation.from_operation(
            operation,
            next_app=self.next_app,
            security_handler_factory=self.security_handler_factory,
        )
        return built


class _SecurityMiddleware(SecurityMiddleware):  # type: ignore[misc]
    api_cls = _SecurityAPI


class _Operation(AsyncOperation):  # type: ignore[misc]
    """Calls the handler with the arguments validation parsed. Its signature is inspected
    once; the handler returns a Starlette response (see mdp.responses) that is sent as it is,
    streaming or not, headers included."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(fn, *args, **kwargs)
        handler = unwrap_decorators(fn)
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"{self.operation_id}: handlers must be coroutine functions")
        signature = inspect.signature(handler).parameters.values()
        self.accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature)
        self.arguments = {
            p.name for p in signature if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def bind(self, scope: Scope) -> dict[str, Any]:
        query, path = scope["extensions"][ARGUMENTS]
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
        # While the handler waits for a database connection, its client may go away.
        gone = client_gone.set(functools.partial(disconnected, receive))
        try:
            response = await self._fn(**self.bind(scope))
        finally:
            client_gone.reset(gone)
        await response(scope, receive, send)


# Parameter names as Connexion turns them into argument names; there are few distinct ones.
_sanitize = functools.lru_cache(maxsize=512)(sanitized)


def _sanitized_items(*mappings: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for mapping in mappings:
        for name, value in mapping.items():
            yield _sanitize(name), value


class _Api(AsyncApi):  # type: ignore[misc]
    def make_operation(self, operation: AbstractOperation) -> _Operation:
        built: _Operation = _Operation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )
        return built


class _SwaggerUIMiddleware(SwaggerUIMiddleware):  # type: ignore[misc]
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


class _RoutingMiddleware(RoutingMiddleware):  # type: ignore[misc]
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


class _StreamedFileValidator(AbstractResponseBodyValidator):  # type: ignore[misc]
    """Export files pass response validation unchecked: Connexion would buffer the whole
    (maybe compressed) file and parse NDJSON as one JSON document. Tests read them back."""

    def wrap_send(self, send: Send) -> Send:
        return send


# Connexion picks a response body validator by media type, and `*/*json` matches NDJSON too.
RESPONSE_VALIDATORS = MediaTypeDict(
    {**VALIDATOR_MAP["response"], "application/x-ndjson": _StreamedFileValidator}
)


_REPLACEMENTS = {
    RoutingMiddleware: _RoutingMiddleware,
    RequestValidationMiddleware: _ValidationMiddleware,
    SecurityMiddleware: _SecurityMiddleware,
    SwaggerUIMiddleware: _SwaggerUIMiddleware,
}


def adapt(app: AsyncApp, *, validate_responses: bool) -> None:
    """Install the adaptations on an app before its first request. Without response
    validation its middleware only passes requests on: it leaves the stack."""
    middlewares = app.middleware.middlewares
    for index, middleware in enumerate(middlewares):
        if middleware in _REPLACEMENTS:
            middlewares[index] = _REPLACEMENTS[middleware]
    missing = set(_REPLACEMENTS.values()) - set(middlewares)
    if missing:
        raise RuntimeError(f"Connexion's middleware stack changed: {missing} not installed")
    if not validate_responses:
        middlewares.remove(ResponseValidationMiddleware)
    app._middleware_app.api_cls = _Api
