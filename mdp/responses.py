"""Handler results to HTTP responses: one resolver wrapper instead of per-handler plumbing."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from types import SimpleNamespace
from typing import Any

import orjson
from connexion.jsonifier import Jsonifier
from connexion.resolver import Resolver
from starlette.responses import Response

__all__ = ["JsonResolver", "dumps", "jsonifier"]

# Timestamps leave as RFC 3339 with a `Z`; aware datetimes from asyncpg are already in UTC.
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(data: Any, **_: Any) -> str:
    return orjson.dumps(data, option=_OPTIONS).decode()


def _loads(data: str | bytes) -> Any:
    return orjson.loads(data)


# For the few bodies Connexion serialises itself.
jsonifier = Jsonifier(SimpleNamespace(dumps=dumps, loads=_loads))

Handler = Callable[..., Awaitable[Any]]


def _respond(result: Any) -> Any:
    if isinstance(result, Response):
        return result
    headers: Mapping[str, str] | None = None
    status = 200
    if isinstance(result, tuple):
        result, status, *rest = result
        headers = rest[0] if rest else None
    return Response(
        orjson.dumps(result, option=_OPTIONS),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


class JsonResolver(Resolver):  # type: ignore[misc]
    """Wraps every handler so that a returned dict (or `(dict, status[, headers])`) becomes an
    `application/json` response encoded by orjson.

    Naming the content type here is what lets an operation declare `application/json` for
    success and `application/problem+json` for errors (Connexion otherwise answers 500), and it
    skips Connexion's slower stdlib-json serialisation on the hot path.
    """

    def resolve_function_from_operation_id(self, operation_id: str) -> Handler:
        handler: Handler = super().resolve_function_from_operation_id(operation_id)

        @functools.wraps(handler)
        async def respond(*args: Any, **kwargs: Any) -> Any:
            return _respond(await handler(*args, **kwargs))

        return respond
