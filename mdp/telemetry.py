"""Request ids, access logs and the in-memory request latency aggregates behind /metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestMetrics", "TelemetryMiddleware", "current_request_id"]

access_logger = logging.getLogger("mdp.access")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# Echo what clients send only when it is safe to put in a header and a log line.
_VALID_REQUEST_ID = re.compile(rb"^[\x21-\x7e]{1,200}$")


def current_request_id() -> str | None:
    return _request_id.get()


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

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
                break
        if not _VALID_REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex.encode()
        token = _request_id.set(request_id.decode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Handlers already stamp it (see mdp.responses); never send it twice.
                headers = [
                    (name, value)
                    for name, value in message.get("headers", ())
                    if name.lower() != b"x-request-id"
                ]
                message["headers"] = [*headers, (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.metrics.record(elapsed_ms)
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
            _request_id.reset(token)
