"""RFC 9457 problem responses, produced for every error in this one module."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from mdp.telemetry import current_request_id
from persistence.errors import DomainError

__all__ = [
    "NotAcceptable",
    "RequestValidationFailed",
    "ValidationIssue",
    "install_error_handlers",
    "problem",
]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# How long clients should wait before retrying while the database is away.
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    title: str


# Every code the contract documents; `title` is fixed per code, `detail` varies per occurrence.
PROBLEM_TYPES: Mapping[str, ProblemType] = {
    "validation_failed": ProblemType(400, "Validation failed"),
    "invalid_time_range": ProblemType(400, "Invalid time range"),
    "invalid_cursor": ProblemType(400, "Invalid cursor"),
    "export_too_large": ProblemType(400, "Export too large"),
    "not_found": ProblemType(404, "Not found"),
    "method_not_allowed": ProblemType(405, "Method not allowed"),
    "symbol_not_found": ProblemType(404, "Symbol not found"),
    "no_trades": ProblemType(404, "No trades"),
    "unauthenticated": ProblemType(401, "Unauthenticated"),
    "forbidden": ProblemType(403, "Forbidden"),
    "rate_limited": ProblemType(429, "Too many requests"),
    "internal_error": ProblemType(500, "Internal server error"),
    "database_unavailable": ProblemType(503, "Database unavailable"),
    "streams_at_capacity": ProblemType(503, "Streams at capacity"),
    "not_acceptable": ProblemType(406, "Not acceptable"),
    "overloaded": ProblemType(503, "Overloaded"),
}
_CODE_BY_STATUS = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    429: "rate_limited",
    500: "internal_error",
}


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    location: str
    name: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"in": self.location, "name": self.name, "message": self.message}


class NotAcceptable(DomainError):
    """The request's `Accept` header admits none of the operation's media types."""

    code = "not_acceptable"


class RequestValidationFailed(Exception):
    """Raised by the parameter validator with every offending parameter, not just the first."""

    def __init__(self, issues: Sequence[ValidationIssue]) -> None:
        super().__init__("; ".join(f"{i.name}: {i.message}" for i in issues))
        self.issues = list(issues)


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
    if status == 503:
        response_headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return ConnexionResponse(
        status_code=status,
        mimetype=PROBLEM_MEDIA_TYPE,
        content_type=PROBLEM_MEDIA_TYPE,
        body=orjson.dumps(body),
        headers=response_headers,
    )


def _domain_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, DomainError)
    if PROBLEM_TYPES[exc.code].status >= 500:
        logger.warning("%s: %s", exc.code, exc.detail)
    # Refusals carry WWW-Authenticate, Retry-After and the RateLimit fields.
    headers = getattr(exc, "headers", None)
    return problem(exc.code, exc.detail, instance=request.url.path, headers=headers)


def _validation_failed(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, RequestValidationFailed)
    names = ", ".join(dict.fromkeys(issue.name for issue in exc.issues))
    return problem(
        "validation_failed",
        f"Invalid request parameters: {names}.",
        instance=request.url.path,
        extra={"errors": [issue.as_dict() for issue in exc.issues]},
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
        code = "validation_failed" if 400 <= status < 500 else "internal_error"
    return problem(code, detail, instance=request.url.path, status=status, headers=headers)


def _unexpected(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    # The traceback goes to the log (with the request id); the client gets nothing internal.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem(
        "internal_error",
        "The server failed to answer this request; it has been logged with its request id.",
        instance=request.url.path,
    )


def install_error_handlers(app: AsyncApp) -> None:
    app.add_error_handler(DomainError, _domain_error)
    app.add_error_handler(RequestValidationFailed, _validation_failed)
    # Connexion registers its own ProblemException handler; ours must shadow it too.
    app.add_error_handler(ProblemException, _http_error)
    app.add_error_handler(HTTPException, _http_error)
    app.add_error_handler(Exception, _unexpected)
