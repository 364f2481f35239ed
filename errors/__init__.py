"""Every error a client can be told about: its stable code, HTTP status and fixed title."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "BY_CODE",
    "CorsRefused",
    "DatabaseUnavailable",
    "ExportTooLarge",
    "ExportsAtCapacity",
    "Forbidden",
    "InternalError",
    "InvalidCursor",
    "MAX_REPORTED_ISSUES",
    "InvalidTimeRange",
    "KeyExportsAtCapacity",
    "KeyStreamsAtCapacity",
    "MethodNotAllowed",
    "NoTrades",
    "NotAcceptable",
    "NotFound",
    "Overloaded",
    "RateLimited",
    "RequestValidationFailed",
    "ServiceError",
    "StreamsAtCapacity",
    "SymbolNotFound",
    "SymbolsNotFound",
    "Unauthenticated",
    "ValidationIssue",
]

_by_code: dict[str, type[ServiceError]] = {}
# Every code (as the contract documents it) with the class that defines it first.
BY_CODE: Mapping[str, type[ServiceError]] = MappingProxyType(_by_code)


class ServiceError(Exception):
    """Raised anywhere below the HTTP layer; mdp/problems.py renders it as an RFC 9457
    problem. `code`, `status` and `title` are fixed per class, `detail` per occurrence."""

    code: ClassVar[str]
    status: ClassVar[int]
    title: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in vars(cls):
            return  # an abstract base, or a subclass that adds behaviour to a known problem
        known = _by_code.setdefault(cls.code, cls)
        # Two classes may share a code (one symbol or several), never with another meaning.
        if (known.status, known.title) != (cls.status, cls.title):
            raise TypeError(f"{cls.__name__} redefines the problem {cls.code!r}")

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # Response headers this problem needs (WWW-Authenticate, RateLimit, ...).
        self.headers: Mapping[str, str] = dict(headers or {})

    def members(self) -> dict[str, Any]:
        """Members of the problem beyond the standard ones."""
        return {}


# A parameter name as a problem repeats it: long enough for any the contract knows.
_MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    location: str
    name: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"in": self.location, "name": self.name[:_MAX_NAME], "message": self.message}


# Offending parameters a problem names; the rest are counted (a hostile request with
# thousands of unknown parameters must not inflate the answer or the log line).
MAX_REPORTED_ISSUES = 20


class RequestValidationFailed(ServiceError):
    """Raised by the parameter validator with every offending parameter, not just the first
    (up to MAX_REPORTED_ISSUES of them, then how many more)."""

    code, status, title = "validation_failed", 400, "Validation failed"

    def __init__(self, issues: Sequence[ValidationIssue]) -> None:
        self.issues = list(issues[:MAX_REPORTED_ISSUES])
        self.omitted = len(issues) - len(self.issues)
        names = ", ".join(dict.fromkeys(issue.name[:_MAX_NAME] for issue in self.issues))
        more = f" and {self.omitted} more" if self.omitted else ""
        super().__init__(f"Invalid request parameters: {names}{more}.")

    def __str__(self) -> str:
        return "; ".join(f"{i.name}: {i.message}" for i in self.issues)

    def members(self) -> dict[str, Any]:
        members: dict[str, Any] = {"errors": [issue.as_dict() for issue in self.issues]}
        if self.omitted:
            members["errors_omitted"] = self.omitted
        return members


class InvalidTimeRange(ServiceError):
    code, status, title = "invalid_time_range", 400, "Invalid time range"


class InvalidCursor(ServiceError):
    code, status, title = "invalid_cursor", 400, "Invalid cursor"


class ExportTooLarge(ServiceError):
    """An export window over the configured maximum of rows or days; refused before streaming."""

    code, status, title = "export_too_large", 400, "Export too large"


class CorsRefused(ServiceError):
    """A CORS preflight the configured origins, methods or headers do not allow."""

    code, status, title = "cors_refused", 400, "CORS request refused"


class Unauthenticated(ServiceError):
    """No valid credentials; the refusal carries its WWW-Authenticate challenge."""

    code, status, title = "unauthenticated", 401, "Unauthenticated"


class Forbidden(ServiceError):
    """Valid credentials without the scope the operation requires."""

    code, status, title = "forbidden", 403, "Forbidden"


class NotFound(ServiceError):
    """No operation at this path (the framework's 404)."""

    code, status, title = "not_found", 404, "Not found"


class SymbolNotFound(ServiceError):
    code, status, title = "symbol_not_found", 404, "Symbol not found"

    def __init__(self, symbol: str) -> None:
        super().__init__(f"Symbol {symbol!r} is not known to this service.")
        self.symbol = symbol


class SymbolsNotFound(ServiceError):
    """Several symbols asked for at once, some unknown: the detail names every one."""

    code, status, title = "symbol_not_found", 404, "Symbol not found"

    def __init__(self, symbols: list[str]) -> None:
        names = ", ".join(repr(symbol) for symbol in symbols)
        verb = "Symbol {} is" if len(symbols) == 1 else "Symbols {} are"
        super().__init__(f"{verb.format(names)} not known to this service.")
        self.symbols = symbols


class NoTrades(ServiceError):
    code, status, title = "no_trades", 404, "No trades"

    def __init__(self, symbol: str) -> None:
        super().__init__(f"Symbol {symbol!r} has no trades yet.")
        self.symbol = symbol


class MethodNotAllowed(ServiceError):
    """The path exists, the method does not (the framework's 405)."""

    code, status, title = "method_not_allowed", 405, "Method not allowed"


class NotAcceptable(ServiceError):
    """The request's `Accept` header admits none of the operation's media types."""

    code, status, title = "not_acceptable", 406, "Not acceptable"


class RateLimited(ServiceError):
    """The key's rate limit is spent; the refusal says when to retry."""

    code, status, title = "rate_limited", 429, "Too many requests"


class KeyExportsAtCapacity(ServiceError):
    """The key already runs as many exports as it may at once (EXPORT_MAX_PER_KEY, or its own
    cap): one of them must end first."""

    code, status, title = "key_exports_at_capacity", 429, "Too many exports for this key"


class KeyStreamsAtCapacity(ServiceError):
    """The key already holds as many streams as it may at once (STREAM_MAX_PER_KEY, or its
    own cap): one of them must end first."""

    code, status, title = "key_streams_at_capacity", 429, "Too many streams for this key"


class InternalError(ServiceError):
    """A bug: logged with its traceback, answered without anything internal."""

    code, status, title = "internal_error", 500, "Internal server error"


class DatabaseUnavailable(ServiceError):
    """The database cannot be reached (or is not migrated yet); clients should retry."""

    code, status, title = "database_unavailable", 503, "Database unavailable"


class StreamsAtCapacity(ServiceError):
    """This instance already serves as many streams as its setting allows (or is stopping)."""

    code, status, title = "streams_at_capacity", 503, "Streams at capacity"


class ExportsAtCapacity(ServiceError):
    """This instance already runs as many exports as its export connections allow
    (EXPORT_MAX_CONCURRENT): clients retry later, or reach another instance."""

    code, status, title = "exports_at_capacity", 503, "Exports at capacity"


class Overloaded(ServiceError):
    """More requests wait for the database than this instance can serve in time: refused
    before any work, so clients retry elsewhere or later instead of timing out here."""

    code, status, title = "overloaded", 503, "Overloaded"
