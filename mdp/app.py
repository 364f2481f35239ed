"""The application factory: the contract plus handlers, validation, errors and telemetry.

Connexion routes each request to its operation, runs the security handlers of access.security
(`security_map`) and validates parameters with mdp.validation (`validator_map`); a resolver
(mdp.responses) names each operation's handler. What it does per request that depends only
on the operation is done once by the overrides of mdp.connexion_adaptations, the only module
that reaches past Connexion's documented options.
"""

from __future__ import annotations

import functools
from typing import Any

from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from connexion.options import SwaggerUIOptions

from access.security import required_scopes, security_map
from mdp import connexion_adaptations as adapted
from mdp.cors import install_cors
from mdp.lifespan import lifespan
from mdp.metrics import PrometheusMetrics
from mdp.negotiation import AcceptCheck, success_media_types
from mdp.problems import install_error_handlers
from mdp.request_scope import RequestScope
from mdp.responses import JsonResolver, jsonifier
from mdp.settings import Settings
from mdp.spec import load_contract
from mdp.telemetry import RequestMetrics, TelemetryMiddleware
from mdp.validation import VALIDATOR_MAP

__all__ = ["create_app"]


def _middlewares(*, validate_responses: bool) -> list[Any]:
    """Connexion's default stack, outermost first, four of them adapted."""
    return [
        ServerErrorMiddleware,
        ExceptionMiddleware,
        adapted.SwaggerUIMiddleware,
        adapted.RoutingMiddleware,
        adapted.SecurityMiddleware,
        adapted.RequestValidationMiddleware,
        # It checks every response against the contract, tens of µs per list item: for tests.
        *([ResponseValidationMiddleware] if validate_responses else []),
        LifespanMiddleware,
        ContextMiddleware,
    ]


def create_app(settings: Settings | None = None, *, validate_responses: bool = False) -> AsyncApp:
    """Build the ASGI app. `validate_responses` checks every response against the contract."""
    settings = settings or Settings.from_env()
    contract = load_contract()
    metrics = RequestMetrics()
    prometheus = PrometheusMetrics()
    app = AsyncApp(
        __name__,
        lifespan=functools.partial(
            lifespan, settings=settings, metrics=metrics, prometheus=prometheus
        ),
        middlewares=_middlewares(validate_responses=validate_responses),
        jsonifier=jsonifier,
    )
    app.add_api(
        contract.path,
        resolver=JsonResolver(),
        strict_validation=True,
        validate_responses=validate_responses,
        validator_map=VALIDATOR_MAP,
        security_map=security_map,
        # The contract is served verbatim by handlers.docs; Swagger UI points at it.
        swagger_ui_options=SwaggerUIOptions(serve_spec=False, swagger_ui_path="/docs"),
    )
    app.add_middleware(
        TelemetryMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        metrics=metrics,
        prometheus=prometheus,
        secured=frozenset(required_scopes(contract.document)),
    )
    # Inside the telemetry middleware: preflights are logged and counted too.
    install_cors(app, settings.cors_allow_origins)
    # After validation, so a request with bad parameters is told that first.
    app.add_middleware(AcceptCheck, produces=success_media_types(contract.document))
    app.add_middleware(RequestScope)
    install_error_handlers(app)
    adapted.install(app)
    return app
