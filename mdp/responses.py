"""Handler results to HTTP responses: one resolver wrapper instead of per-handler plumbing."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import orjson
from connexion.jsonifier import Jsonifier
from starlette.responses import Response, StreamingResponse

from access import audit
from mdp.caching import conditional
from mdp.resolver import HandlerResolver
from mdp.telemetry import current_request_id
from web import encoding
from web.answer import Answer
from web.events import EventStream
from web.request import current_scope

__all__ = ["JsonResolver", "dumps", "jsonifier"]


def dumps(data: Any, **_: Any) -> str:
    return encoding.dumps(data).decode()


def _loads(data: str | bytes) -> Any:
    return orjson.loads(data)


# For the few bodies Connexion serialises itself.
jsonifier = Jsonifier(SimpleNamespace(dumps=dumps, loads=_loads))

Handler = Callable[..., Awaitable[Any]]


async def _counted(chunks: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator[bytes]:
    # Events served, for the audit trail, as each chunk goes out.
    async for chunk, events in chunks:
        audit.count_served(events)
        yield chunk


def _respond(result: Any) -> Response:
    # The contract requires X-Request-ID on every response, and response validation runs
    # inside the telemetry middleware that adds it: stamp it here so validation sees it.
    request_id = current_request_id()
    if isinstance(result, EventStream):
        result = StreamingResponse(
            _counted(result.chunks), media_type="text/event-stream", headers=result.headers
        )
    if isinstance(result, Response):
        response = result
        if request_id is not None:
            response.headers["X-Request-ID"] = request_id
    else:
        headers: Mapping[str, str] = {}
        status = 200
        rows = 1
        if isinstance(result, Answer):
            result, status, headers, rows = result
        elif isinstance(result, tuple):
            result, status, *rest = result
            headers = rest[0] if rest else headers
        if status < 300:
            audit.count_served(rows)
        response = Response(
            encoding.dumps(result),
            status_code=status,
            headers={**headers, "X-Request-ID": request_id} if request_id else headers,
            media_type="application/json",
        )
    return conditional(response, current_scope()["headers"])


class JsonResolver(HandlerResolver):
    """Wraps every handler so that a returned dict (or `(dict, status[, headers])`, or an
    `Answer`) becomes an `application/json` response encoded by orjson, and an `EventStream`
    a `text/event-stream` one.

    Naming the content type here is what lets an operation declare `application/json` for
    success and `application/problem+json` for errors (Connexion otherwise answers 500), and it
    skips Connexion's slower stdlib-json serialisation on the hot path.
    """

    def __call__(self, operation_id: str) -> Handler:
        handler: Handler = super().__call__(operation_id)

        @functools.wraps(handler)
        async def respond(*args: Any, **kwargs: Any) -> Any:
            return _respond(await handler(*args, **kwargs))

        return respond
