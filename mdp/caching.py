"""HTTP caching of data answers: ETag, Cache-Control and If-None-Match (RFC 9110, RFC 9111)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from starlette.responses import Response

__all__ = ["NO_STORE", "UNCACHEABLE", "conditional", "none_match"]

# Answers are the same for every client, but only for clients with a key: a shared cache (a CDN)
# must not hand one to a request without the credentials it was fetched with.
_VARY = "Authorization, X-API-Key"
NO_STORE = b"no-store"
# Every answer to a request that needs credentials says how it may be cached: the data
# answers that are the same for every key that may read them set `public`/`no-cache` and
# Vary on the credential headers (below); every other one (problems, /metrics, ingestion
# status, streams, exports) is not stored at all. mdp.telemetry adds this where needed.
UNCACHEABLE = (b"cache-control", NO_STORE)
# What a 304 keeps of the 200 it stands for, besides the validators.
_KEPT_BY_304 = ("cache-control", "x-request-id")

# An entity-tag: optional weakness marker, then a quoted opaque tag (RFC 9110 §8.8.3). A comma
# may sit inside the quotes, so a list is scanned tag by tag, never split on commas.
_ENTITY_TAG = re.compile(r'(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def _entity_tag(body: bytes) -> str:
    # Strong: two answers with the same tag are the same bytes.
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def none_match(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match value matches `etag`: `*`, or any listed tag by the weak
    comparison RFC 9110 §13.1.2 prescribes (`W/"x"` matches `"x"`)."""
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")[1:-1]
    return any(match == opaque for match in _ENTITY_TAG.findall(if_none_match))


def conditional(response: Response, headers: Iterable[tuple[bytes, bytes]]) -> Response:
    """Tag a cacheable 200 (one that carries Cache-Control, other than `no-store`) and answer
    304 when the request's If-None-Match already holds that tag; any other response passes
    unchanged."""
    if response.status_code != 200 or not any(
        name == b"cache-control" and value != NO_STORE for name, value in response.raw_headers
    ):
        return response
    etag = _entity_tag(bytes(response.body))
    # Appended, not set: this is the one place that adds them.
    response.headers.append("ETag", etag)
    response.headers.append("Vary", _VARY)
    # Several If-None-Match fields form one list (RFC 9110 §5.3).
    received = ", ".join(
        value.decode("latin-1") for name, value in headers if name == b"if-none-match"
    )
    if not received or not none_match(received, etag):
        return response
    # RFC 9110 §15.4.5: a 304 repeats the validators and caching headers a 200 would carry.
    kept = {name: response.headers[name] for name in _KEPT_BY_304 if name in response.headers}
    return Response(status_code=304, headers={"ETag": etag, "Vary": _VARY, **kept})
