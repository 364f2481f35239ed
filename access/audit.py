"""The audit trail: one JSON record per authenticated data request, and per refused one, on
the `mdp.audit` logger (Cloud Logging can route it to a sink of its own). Never a secret."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Scope

from access.apikeys import redact
from errors import MAX_REPORTED_ISSUES

__all__ = ["Outcome", "begin", "count_served", "current", "finish", "set_outcome"]

audit_logger = logging.getLogger("mdp.audit")

# Values in the record are cut to this: parameters are the client's text, not ours.
_MAX_VALUE = 256


@dataclass(slots=True)
class Outcome:
    """What the security layer decided for this request, and what was served after."""

    key_id: str | None
    key_name: str | None
    reason: str | None = None
    # The RateLimit fields every response of an authenticated request carries.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    rows: int = 0


_outcome: ContextVar[Outcome | None] = ContextVar("audit_outcome", default=None)


def begin() -> Any:
    """Start a request with no outcome; returns the token `finish` resets."""
    return _outcome.set(None)


def set_outcome(outcome: Outcome) -> None:
    _outcome.set(outcome)


def current() -> Outcome | None:
    return _outcome.get()


def count_served(rows: int) -> None:
    """Add to the rows (or events) served by this request, if it is audited."""
    outcome = _outcome.get()
    if outcome is not None:
        outcome.rows += rows


def _parameters(scope: Scope) -> dict[str, str]:
    # A key sent as a query parameter by mistake must not reach the log with it.
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    # Bounded like a problem's `errors`: a hostile query must not make a huge log line.
    kept = {
        redact(name[:_MAX_VALUE]): redact(value[:_MAX_VALUE])
        for name, value in pairs[:MAX_REPORTED_ISSUES]
    }
    if len(pairs) > MAX_REPORTED_ISSUES:
        kept["…omitted"] = str(len(pairs) - MAX_REPORTED_ISSUES)
    return kept


def finish(
    token: Any,
    scope: Scope,
    *,
    request_id: str,
    operation: str,
    status: int,
    sent: int,
    elapsed_ms: float,
) -> None:
    """Write the record of this request (if the security layer judged it) and reset."""
    outcome = _outcome.get()
    _outcome.reset(token)
    if outcome is None or not audit_logger.isEnabledFor(logging.INFO):
        return
    refused = outcome.reason is not None
    record: dict[str, Any] = {
        "event": "request_refused" if refused else "request",
        "key_id": outcome.key_id,
        "key_name": outcome.key_name,
        "operation": operation,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_ms": round(elapsed_ms, 3),
        "request_id": request_id,
    }
    if refused:
        record["reason"] = outcome.reason
    else:
        rows = outcome.rows if status < 300 else 0  # a 304 or an error served no rows
        record.update(parameters=_parameters(scope), rows=rows, bytes=sent)
    audit_logger.info(
        "%s %s %s %d key=%s%s",
        record["event"],
        scope["method"],
        scope["path"],
        status,
        outcome.key_id or "-",
        f" reason={outcome.reason}" if refused else "",
        extra={"audit": record},
    )
