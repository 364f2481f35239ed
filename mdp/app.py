"""The application factory: the contract plus handlers, validation, errors and telemetry."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from connexion import AsyncApp
from connexion.apps.asynchronous import AsyncApi, AsyncOperation
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions

from mdp.lifespan import lifespan
from mdp.metrics import PrometheusMetrics
from mdp.problems import install_error_handlers
from mdp.responses import JsonResolver, jsonifier
from mdp.settings import Settings
from mdp.spec import load_contract
from mdp.telemetry import RequestMetrics, TelemetryMiddleware
from mdp.validation import CollectingParameterValidator

__all__ = ["create_app"]


class _Operation(AsyncOperation):  # type: ignore[misc]
    """Connexion's AsyncOperation wraps the handler in its parameter and response decorators
    on every request (signature inspection included); they depend only on the operation, so
    build them once, as Connexion's Flask app does."""

    @functools.cached_property
    def fn(self) -> Callable[..., Any]:
        wrapped: Callable[..., Any] = AsyncOperation.fn.fget(self)
        return wrapped


class _Api(AsyncApi):  # type: ignore[misc]
    def make_operation(self, operation: Any) -> _Operation:
        built: _Operation = _Operation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )
        return built


def create_app(settings: Settings | None = None, *, validate_responses: bool = False) -> AsyncApp:
    """Build the ASGI app. `validate_responses` checks every response against the contract:
    for tests, since it costs tens of microseconds per list item."""
    settings = settings or Settings.from_env()
    metrics = RequestMetrics()
    prometheus = PrometheusMetrics()
    app = AsyncApp(
        __name__,
        lifespan=functools.partial(
            lifespan, settings=settings, metrics=metrics, prometheus=prometheus
        ),
        jsonifier=jsonifier,
    )
    # The ASGI app that serves the operations builds them with our cached-decorator class.
    app._middleware_app.api_cls = _Api
    app.add_api(
        load_contract().path,
        resolver=JsonResolver(),
        strict_validation=True,
        validate_responses=validate_responses,
        validator_map={"parameter": CollectingParameterValidator},
        # The contract is served verbatim by handlers.docs; Swagger UI points at it.
        swagger_ui_options=SwaggerUIOptions(serve_spec=False, swagger_ui_path="/docs"),
    )
    app.add_middleware(
        TelemetryMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        metrics=metrics,
        prometheus=prometheus,
    )
    install_error_handlers(app)
    return app
