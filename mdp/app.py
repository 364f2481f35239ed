"""The application factory: the contract plus handlers, validation, errors and telemetry."""

from __future__ import annotations

import functools

from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from connexion.options import SwaggerUIOptions

from access.security import required_scopes, security_map
from mdp.connexion_adaptations import RESPONSE_VALIDATORS, adapt
from mdp.cors import install_cors
from mdp.lifespan import lifespan
from mdp.metrics import PrometheusMetrics
from mdp.problems import install_error_handlers
from mdp.responses import JsonResolver, jsonifier
from mdp.settings import Settings
from mdp.spec import load_contract
from mdp.telemetry import RequestMetrics, TelemetryMiddleware

__all__ = ["create_app"]


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
    app.add_api(
        load_contract().path,
        resolver=JsonResolver(),
        strict_validation=True,
        validate_responses=validate_responses,
        validator_map={"response": RESPONSE_VALIDATORS},
        # Names the handlers of the spec's schemes; for a request, mdp.connexion_adaptations
        # calls access.security.judge in place of Connexion's per-scheme loop over them.
        security_map=security_map,
        # The contract is served verbatim by handlers.docs; Swagger UI points at it.
        swagger_ui_options=SwaggerUIOptions(serve_spec=False, swagger_ui_path="/docs"),
    )
    app.add_middleware(
        TelemetryMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        metrics=metrics,
        prometheus=prometheus,
        secured=frozenset(required_scopes(load_contract().document)),
    )
    # Inside the telemetry middleware: preflights are logged and counted too.
    install_cors(app, settings.cors_allow_origins)
    install_error_handlers(app)
    # Last: it swaps middlewares that `add_middleware` positions are expressed against.
    adapt(app, validate_responses=validate_responses)
    return app
