"""RFC 9457 problem responses: every error (errors/) rendered in this one module."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from errors import (
    BY_CODE,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    RateLimited,
    RequestValidationFailed,
    ServiceError,
    Unauthenticated,
)
from mdp.telemetry import current_request_id
from persistence.admission import Abandoned

__all__ = ["PROBLEM_TYPES", "install_error_handlers", "problem"]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# What the logs and metrics record for a request whose client left before its answer.
CLIENT_CLOSED_REQUEST = 499
# How long clients should wait before retrying while the database is away.
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    title: str


# Every code the contract documents; `title` is fixed per code, `detail` varies per occurrence.
PROBLEM_TYPES: Mapping[str, ProblemType] = {
    code: ProblemType(error.status, error.title) for code, error in BY_CODE.items()
}
# The framework's own refusals, under the codes the contract gives them.
_CODE_BY_STATUS = {
    error.status: error.code
    for error in (
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        NotAcceptable,
        RateLimited,
        InternalError,
    )
}


def problem(
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ConnexionResponse:
    kind = PROBLEM_TYPES[code]
    status = status or kind.status
    body: dict[str, Any] = {
        "type": f"urn:mdp:problem:{code}",
        "title": kind.title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance is not None:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    response_headers = dict(headers or {})
    if status in (429, 503):
        # A refusal for now, not for good: say when to come back (unless it already does).
        response_headers.setdefault("Retry-After", str(RETRY_AFTER_SECONDS))
    return ConnexionResponse(
        status_code=status,
        mimetype=PROBLEM_MEDIA_TYPE,
        content_type=PROBLEM_MEDIA_TYPE,
        body=orjson.dumps(body),
        headers=response_headers,
    )


def _service_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.warning("%s: %s", exc.code, exc.detail)
    # Refusals carry WWW-Authenticate, Retry-After and the RateLimit fields.
    return problem(
        exc.code,
        exc.detail,
        instance=request.url.path,
        headers=exc.headers,
        extra=exc.members(),
    )


def _http_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        detail = f"No resource at {request.url.path}; GET / lists every operation."
    elif status == 405:
        allowed = headers.get("Allow") or headers.get("allow") or "GET"
        headers = {"Allow": allowed}
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}."
    elif isinstance(exc, ProblemException) and exc.detail:
        detail = str(exc.detail)
    else:
        detail = HTTPStatus(status).phrase
    code = _CODE_BY_STATUS.get(status)
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="mdp"')
    if code is None:
        # A framework problem we have no code for (e.g. 406): keep its status, generic code.
        code = RequestValidationFailed.code if 400 <= status < 500 else InternalError.code
    return problem(code, detail, instance=request.url.path, status=status, headers=headers)


def _unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # The traceback goes to the log (with the request id); the client gets nothing internal.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        InternalError.code,
        "The server failed to answer this request; it has been logged with its request id.",
        instance=request.url.path,
    )


def _abandoned(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # Nobody reads it: 499 (nginx's "client closed request") is for the logs and metrics.
    logger.info("%s %s: the client went away while queued", request.method, request.url.path)
    return ConnexionResponse(status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: AsyncApp) -> None:
    app.add_error_handler(Abandoned, _abandoned)
    app.add_error_handler(ServiceError, _service_error)
    # Connexion registers its own ProblemException handler; ours must shadow it too.
    app.add_error_handler(ProblemException, _http_error)
    app.add_error_handler(HTTPException, _http_error)
    app.add_error_handler(Exception, _unexpected)
