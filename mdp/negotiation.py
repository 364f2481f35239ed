"""406 Not Acceptable, which Connexion does not answer: a request whose `Accept` admits none of
the media types its operation answers success in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from connexion.middleware.abstract import ROUTING_CONTEXT
from starlette.types import ASGIApp, Receive, Scope, Send

from errors import NotAcceptable
from web.negotiation import media_range

__all__ = ["AcceptCheck", "accepts", "success_media_types"]

_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def accepts(accept: str, produces: Iterable[str]) -> bool:
    """Whether an `Accept` header admits at least one of `produces` (RFC 9110 §12.5.1)."""
    offered = [media_range(media)[0] for media in produces]
    for item in accept.split(","):
        media, quality = media_range(item)
        if quality <= 0 or not media:
            continue
        kind, _, subtype = media.partition("/")
        for offer in offered:
            offer_kind, _, offer_subtype = offer.partition("/")
            if kind == "*" or (kind == offer_kind and subtype in ("*", offer_subtype)):
                return True
    return False


def success_media_types(document: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """operationId -> the media types of its 2xx responses, from the contract."""
    found: dict[str, tuple[str, ...]] = {}
    for item in document["paths"].values():
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            found[operation["operationId"]] = tuple(
                media
                for status, response in operation.get("responses", {}).items()
                if str(status).startswith("2")
                for media in response.get("content", {})
            )
    return found


class AcceptCheck:
    """Plain ASGI middleware after Connexion's routing, security and parameter validation (so
    401/403/429 and 400 come first): NotAcceptable when `Accept` admits nothing the routed
    operation answers success in. A request without `Accept` accepts anything."""

    # Each distinct Accept value is judged once per operation; clients send few distinct ones.
    _CACHE_SIZE = 64

    def __init__(self, app: ASGIApp, produces: Mapping[str, tuple[str, ...]]) -> None:
        self.app = app
        self.produces = {operation: media for operation, media in produces.items() if media}
        self._verdicts: dict[tuple[str, bytes], bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            routing = scope["extensions"].get(ROUTING_CONTEXT) or {}
            operation: str | None = routing.get("operation_id")
            produces = self.produces.get(operation) if operation is not None else None
            if operation is not None and produces is not None:
                self._check(operation, produces, scope["headers"])
        await self.app(scope, receive, send)

    def _check(
        self, operation: str, produces: tuple[str, ...], headers: list[tuple[bytes, bytes]]
    ) -> None:
        accept = None
        for key, value in headers:
            if key == b"accept":
                accept = value if accept is None else accept + b"," + value
        if accept is None:
            return
        verdict = self._verdicts.get((operation, accept))
        if verdict is None:
            verdict = accepts(accept.decode("latin-1"), produces)
            if len(self._verdicts) >= self._CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[(operation, accept)] = verdict
        if not verdict:
            offered = ", ".join(produces)
            raise NotAcceptable(f"Accept {accept.decode('latin-1')!r} admits none of: {offered}.")
