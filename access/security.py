"""Access control in Connexion's security layer: API keys, scopes per operation, rate limits.

The contract declares two security schemes, `X-API-Key` and `Authorization: Bearer`, either of
which carries the same key. OpenAPI 3.0 requires the scope list of a non-OAuth requirement to
be empty, so each operation names its scopes in `x-required-scopes`, read here at start-up.

`security_map` hands Connexion a handler per scheme. Connexion's security middleware calls, for
every request to a secured operation, each scheme's verification function in turn and stops at
the first that returns credentials. Each request belongs to exactly one of ours — the API-key
function judges requests with an `X-API-Key` header or no credentials at all, the bearer
function those with only an `Authorization` header, the other answers "not mine" — so every
request is judged (and audited) once, whatever the order.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from connexion.middleware.abstract import ROUTING_CONTEXT
from connexion.security import NO_VALUE
from starlette.types import Scope

import errors
from access import audit, ratelimit
from access.apikeys import SCOPES, AuthMode, hash_key, key_id_of
from access.keyring import Key, KeyRing
from access.ratelimit import RateLimiter
from errors import DatabaseUnavailable, ServiceError

__all__ = [
    "SCOPE_EXTENSION",
    "Forbidden",
    "Guard",
    "RateLimited",
    "Unauthenticated",
    "required_scopes",
    "security_map",
]

SCOPE_EXTENSION = "x-required-scopes"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_CHALLENGE = 'Bearer realm="mdp"'
_INVALID = f'{_CHALLENGE}, error="invalid_token"'
# Longer than any key: a header this long is refused before it is even looked at.
_MAX_CREDENTIAL = 200
# What an unknown key id's secret is compared with: no SHA-256 is all zeros in practice.
_NO_KEY_HASH = bytes(32)
# Verified credentials remembered; all are forgotten when it is full (one per key in use).
_VERIFIED_MAX = 1024


class AuthError(ServiceError):
    """A refusal; `reason` goes to the audit record, `key` when the key was recognised.
    The problem itself (code, status, title) is the `errors` class it is combined with."""

    def __init__(
        self,
        detail: str,
        *,
        reason: str,
        key: Key | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail, headers=headers)
        self.reason = reason
        self.key = key


class Unauthenticated(AuthError, errors.Unauthenticated):
    def __init__(self, detail: str, *, reason: str, key: Key | None = None) -> None:
        # RFC 6750 §3: no error code when the request carried no credentials at all.
        challenge = _CHALLENGE if reason == "missing_credentials" else _INVALID
        super().__init__(detail, reason=reason, key=key, headers={"WWW-Authenticate": challenge})


class Forbidden(AuthError, errors.Forbidden):
    pass


class RateLimited(AuthError, errors.RateLimited):
    pass


def required_scopes(document: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """operationId -> scopes, for every operation that requires credentials.

    Raises ValueError when a secured operation names no scope or an unknown one, so that an
    operation added without thinking about access cannot start unguarded or unreachable.
    """
    default = document.get("security", [])
    found: dict[str, frozenset[str]] = {}
    problems = []
    for item in document["paths"].values():
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            secured = bool(operation.get("security", default))
            scopes = operation.get(SCOPE_EXTENSION)
            name = operation["operationId"]
            if not secured:
                if scopes is not None:
                    problems.append(f"{name} declares {SCOPE_EXTENSION} but no security")
                continue
            if not scopes or not set(scopes) <= set(SCOPES):
                problems.append(f"{name} needs {SCOPE_EXTENSION}: a list from {', '.join(SCOPES)}")
                continue
            found[name] = frozenset(scopes)
    if problems:
        raise ValueError("; ".join(problems))
    return found


@dataclass(slots=True)
class Guard:
    """Everything a request's credentials are judged against, built once per app."""

    mode: AuthMode
    scopes: Mapping[str, frozenset[str]]
    ring: KeyRing = field(default_factory=KeyRing)
    limiter: RateLimiter = field(default_factory=RateLimiter)
    # Credentials already checked against their key, by the bytes presented: a repeated one
    # skips the pattern and the SHA-256, about 4 µs of a request's 60.
    verified: dict[bytes, Key] = field(default_factory=dict)

    def judge(self, scope: Mapping[str, Any], api_keys: list[bytes], bearer: list[bytes]) -> Any:
        if self.mode == "off":
            return {"sub": None}
        if not self.ring.loaded:
            raise DatabaseUnavailable("API keys cannot be checked until the database is up.")
        operation = scope["extensions"][ROUTING_CONTEXT]["operation_id"]
        try:
            return self._judge(operation, api_keys, bearer)
        except AuthError as exc:
            key = exc.key
            audit.set_outcome(
                audit.Outcome(key.id if key else None, key.name if key else None, reason=exc.reason)
            )
            raise

    def _judge(self, operation: str, api_keys: list[bytes], bearer: list[bytes]) -> Any:
        if len(api_keys) + len(bearer) > 1:
            raise Unauthenticated(
                "Send exactly one API key: one X-API-Key header or one Authorization header.",
                reason="several_credentials",
            )
        if bearer:
            scheme, _, token = bearer[0].partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                raise Unauthenticated(
                    "The Authorization header must be `Bearer <API key>`.",
                    reason="malformed_authorization",
                )
            presented = token.strip()
        elif api_keys:
            presented = api_keys[0].strip()
        else:
            raise Unauthenticated(
                "This operation needs an API key: send `X-API-Key: <key>` or "
                "`Authorization: Bearer <key>`.",
                reason="missing_credentials",
            )
        key = self.verified.get(presented)
        # The same Key object, not just the same id: a reload (a new, revoked or rotated key)
        # builds new objects, so nothing verified before it is trusted after.
        if key is None or self.ring.get(key.id) is not key:
            key = self._verify(presented)
            if len(self.verified) >= _VERIFIED_MAX:
                self.verified.clear()
            self.verified[presented] = key
        if key.revoked:
            raise Unauthenticated(
                f"The API key {key.id} has been revoked.", reason="revoked", key=key
            )
        needed = self.scopes[operation]
        if not needed <= key.scopes:
            raise Forbidden(
                f"This operation needs the scope {', '.join(sorted(needed))}; key {key.id} "
                f"has {', '.join(sorted(key.scopes))}.",
                reason="forbidden",
                key=key,
            )
        taken, tokens = self.limiter.take(key.id, key.limit)
        fields = ratelimit.headers(key.limit, tokens)
        if not taken:
            wait = ratelimit.retry_after(key.limit, tokens)
            raise RateLimited(
                f"Key {key.id} is over its rate limit of {key.limit} on this instance; "
                f"retry after {wait} s.",
                reason="rate_limited",
                key=key,
                headers={
                    "Retry-After": str(wait),
                    **{name.decode(): value.decode() for name, value in fields},
                },
            )
        self.ring.mark_used(key.id)
        audit.set_outcome(audit.Outcome(key.id, key.name, headers=fields))
        # The key's own caps travel with it to the handlers (handlers.context.key_cap).
        return {"sub": key.id, "max_exports": key.max_exports, "max_streams": key.max_streams}

    def _verify(self, presented: bytes) -> Key:
        """The key `presented` is the secret of, or Unauthenticated."""
        text = presented.decode("latin-1") if len(presented) <= _MAX_CREDENTIAL else ""
        key_id = key_id_of(text)
        if key_id is None:
            raise Unauthenticated(
                "The API key is malformed: keys look like `mdp_<id>_<secret>`.",
                reason="malformed_key",
            )
        key = self.ring.get(key_id)
        # Hashed and compared even for an unknown id (against a hash nothing matches): the
        # time a refusal takes must not tell which ids exist.
        expected = key.key_hash if key is not None else _NO_KEY_HASH
        if not hmac.compare_digest(expected, hash_key(text)) or key is None:
            raise Unauthenticated("The API key is not valid.", reason="invalid_key")
        return key


def _credentials(headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    api_keys: list[bytes] = []
    bearer: list[bytes] = []
    for name, value in headers:
        if name == b"x-api-key":
            api_keys.append(value)
        elif name == b"authorization":
            bearer.append(value)
    return api_keys, bearer


class _Request(Protocol):
    """What a verification function reads of the `ConnexionRequest` Connexion passes it."""

    @property
    def scope(self) -> Scope: ...


def _verify(request: _Request, *, bearer_scheme: bool) -> Any:
    """The token info Connexion records (`{"sub": key id, ...}`), an AuthError, or NO_VALUE
    for a request the other scheme's function judges."""
    scope = request.scope
    api_keys, bearer = _credentials(scope["headers"])
    if bearer_scheme != bool(bearer and not api_keys):
        return NO_VALUE
    guard: Guard = scope["state"]["app"].guard
    return guard.judge(scope, api_keys, bearer)


class _SchemeHandler:
    """A scheme's handler as `add_api(security_map=...)` takes it: Connexion instantiates it for
    each secured operation and calls `get_fn` for the function that verifies its requests."""

    bearer_scheme: ClassVar[bool]

    def get_fn(
        self, security_scheme: Mapping[str, Any], required_scopes: Sequence[str]
    ) -> Callable[[_Request], Any]:
        # The scopes are the operation's `x-required-scopes`, which the guard knows by id.
        return functools.partial(_verify, bearer_scheme=self.bearer_scheme)


class _ApiKeyHandler(_SchemeHandler):
    bearer_scheme = False


class _BearerHandler(_SchemeHandler):
    bearer_scheme = True


# For `add_api(security_map=...)`: Connexion's documented way to replace a scheme's handler.
security_map: dict[str, type[_SchemeHandler]] = {
    "apiKey": _ApiKeyHandler,
    "bearer": _BearerHandler,
}
