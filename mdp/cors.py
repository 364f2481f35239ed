"""CORS for the origins in CORS_ALLOW_ORIGINS, with Starlette's middleware."""

from __future__ import annotations

from collections.abc import Sequence

from connexion import AsyncApp
from connexion.middleware import MiddlewarePosition
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from errors import CorsRefused
from mdp.problems import problem

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "install_cors"]

# What a page may send beyond the CORS-safelisted headers: credentials, a stream's resume
# point, a conditional request, and its own request id.
ALLOW_HEADERS = ("X-API-Key", "Authorization", "Last-Event-ID", "If-None-Match", "X-Request-ID")
# What a page may read beyond the CORS-safelisted response headers.
EXPOSE_HEADERS = (
    "ETag",
    "RateLimit-Policy",
    "RateLimit",
    "Retry-After",
    "X-Row-Count",
    "X-Request-ID",
)


class _CORSMiddleware(CORSMiddleware):
    """Starlette's, with its refusal of a preflight (plain text) answered as a problem."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await super().__call__(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if "origin" in headers and "access-control-request-method" in headers:
            response = self.preflight_response(request_headers=headers)
            if response.status_code >= 400:
                response = _refusal(response, headers, scope["path"])
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _refusal(refused: Response, request_headers: Headers, path: str) -> Response:
    # Starlette says what it refused: "Disallowed CORS origin, headers".
    what = bytes(refused.body).decode().removeprefix("Disallowed CORS ")
    origin = request_headers.get("origin", "")[:100]
    answer = problem(
        CorsRefused.code,
        f"This preflight from {origin!r} asks for a disallowed {what}: the API answers pages "
        "on the origins in CORS_ALLOW_ORIGINS, with GET and HEAD and the headers "
        + ", ".join(ALLOW_HEADERS),
        instance=path,
    )
    return Response(
        answer.body,
        status_code=answer.status_code,
        headers=dict(answer.headers or {}),
        media_type=answer.content_type,
    )


def install_cors(app: AsyncApp, origins: Sequence[str]) -> None:
    """Answer CORS for `origins`, if any. The middleware sits outside Connexion's security,
    so a preflight (which carries no credentials) is answered without a key and without
    counting against a rate limit; inside it, every answer, problems and streams included,
    gets the CORS headers and `Vary: Origin`."""
    if not origins:
        return
    app.add_middleware(
        _CORSMiddleware,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        allow_origins=list(origins),
        allow_methods=["GET", "HEAD"],
        allow_headers=list(ALLOW_HEADERS),
        expose_headers=list(EXPOSE_HEADERS),
        max_age=600,
    )
