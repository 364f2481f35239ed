"""Request ids, access logs and the in-memory request latency aggregates behind /metrics."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connexion.middleware.abstract import ROUTING_CONTEXT
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from access import audit
from mdp.caching import UNCACHEABLE
from mdp.metrics import PrometheusMetrics

__all__ = ["RequestMetrics", "TelemetryMiddleware", "current_request_id", "current_trace"]

access_logger = logging.getLogger("mdp.access")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# Cloud Run's load balancer sends `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=1`.
_trace: ContextVar[str | None] = ContextVar("trace", default=None)
_TRACE_ID = re.compile(rb"^([0-9a-fA-F]{32})(?:/|;|$)")
# Echo what clients send only when it is safe to put in a header and a log line.
_VALID_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,200}$")


def current_request_id() -> str | None:
    return _request_id.get()


def current_trace() -> str | None:
    """The Cloud Trace id of the request being served, if the platform sent one."""
    return _trace.get()


@dataclass(slots=True)
class RequestMetrics:
    """Latency aggregates for this instance since start; reset on restart by design."""

    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    count: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0

    def record(self, elapsed_ms: float) -> None:
        self.count += 1
        self.total_ms += elapsed_ms
        self.last_ms = elapsed_ms
        if elapsed_ms > self.max_ms:
            self.max_ms = elapsed_ms

    @property
    def average_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0

    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic


class TelemetryMiddleware:
    """Outermost middleware, so error responses get a request id and count as requests too."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: RequestMetrics,
        prometheus: PrometheusMetrics,
        secured: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.prometheus = prometheus
        # Operations that need credentials: an answer to one that says nothing of caching
        # is sent `no-store` (see mdp.caching).
        self.secured = secured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id, trace = _identify(scope["headers"])
        token = _request_id.set(request_id.decode())
        trace_token = _trace.set(trace)
        # Connexion's router works on a shallow copy of the scope but records the operation in
        # this (shared) dict: create it here so the operation is visible here afterwards.
        extensions = scope.setdefault("extensions", {})
        status = 500
        sent = 0
        audit_token = audit.begin()

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = self._headers(message, request_id, extensions)
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            elapsed_ms = elapsed * 1000
            self.metrics.record(elapsed_ms)
            routing = extensions.get(ROUTING_CONTEXT) or {}
            # Unrouted requests (404s, /docs) share one label: paths must not become labels.
            operation = routing.get("operation_id") or "unmatched"
            self.prometheus.observe(operation, scope["method"], status, elapsed)
            audit.finish(
                audit_token,
                scope,
                request_id=request_id.decode(),
                operation=operation,
                status=status,
                sent=sent,
                elapsed_ms=elapsed_ms,
            )
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(scope, status, elapsed_ms)
            _trace.reset(trace_token)
            _request_id.reset(token)

    def _headers(
        self, start: Message, request_id: bytes, extensions: dict[str, Any]
    ) -> list[tuple[bytes, bytes]]:
        """The response's headers, with what every answer carries added."""
        # Starlette writes header names in lower case. Handlers already stamp the request id
        # (see mdp.responses); never send it twice.
        headers = list(start.get("headers", ()))
        stamped = cached = False
        for name, _ in headers:
            if name == b"x-request-id":
                stamped = True
            elif name == b"cache-control":
                cached = True
        if not stamped:
            headers.append((b"x-request-id", request_id))
        if not cached and self.secured:
            routing = extensions.get(ROUTING_CONTEXT)
            if routing is not None and routing.get("operation_id") in self.secured:
                headers.append(UNCACHEABLE)
        outcome = audit.current()
        if outcome is not None:
            # The RateLimit fields of an authenticated request (a refusal has none).
            headers += outcome.headers
        return headers


def _log_access(scope: Scope, status: int, elapsed_ms: float) -> None:
    access_logger.info(
        "%s %s %d %.2fms",
        scope["method"],
        scope["path"],
        status,
        elapsed_ms,
        extra={
            "http": {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(elapsed_ms, 3),
            }
        },
    )


def _identify(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, str | None]:
    """The request's id (the client's X-Request-ID when it is safe to echo, else a new one)
    and the Cloud Trace id the platform sent, if any."""
    request_id = b""
    trace = None
    for name, value in headers:
        if name == b"x-request-id":
            request_id = value
        elif name == b"x-cloud-trace-context":
            match = _TRACE_ID.match(value)
            trace = match.group(1).decode().lower() if match else None
    if not request_id or not _VALID_REQUEST_ID.match(request_id):
        # An identifier, not a secret: no system call per request for it.
        request_id = b"%032x" % random.getrandbits(128)
    return request_id, trace
