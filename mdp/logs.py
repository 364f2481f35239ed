"""Logging: one JSON object per line on stdout (plain text on a terminal), request id bound."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from access.apikeys import redact_line
from mdp.telemetry import current_request_id, current_trace

__all__ = ["configure_logging"]

# Levels in the words Cloud Logging understands.
_SEVERITY = {"WARNING": "WARNING", "CRITICAL": "CRITICAL", "ERROR": "ERROR", "DEBUG": "DEBUG"}


class JsonFormatter(logging.Formatter):
    """Cloud Logging's structured format: `severity`, `message`, the trace that groups a
    request's lines, and `httpRequest` on access lines."""

    def __init__(self, project: str | None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "severity": _SEVERITY.get(record.levelname, "INFO"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        trace = current_trace()
        if trace is not None and self.project:
            entry["logging.googleapis.com/trace"] = f"projects/{self.project}/traces/{trace}"
        http = getattr(record, "http", None)
        if http is not None:
            entry["httpRequest"] = {
                "requestMethod": http["method"],
                "requestUrl": http["path"],
                "status": http["status"],
                "latency": f"{http['latency_ms'] / 1000:.6f}s",
            }
        audit = getattr(record, "audit", None)
        if audit is not None:
            entry["audit"] = audit
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Every field a client may have filled (path, request id, parameters, messages) at
        # once: a key pasted anywhere leaves only its public id in the log.
        return redact_line(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = current_request_id()
        return redact_line(f"{line} [request_id={request_id}]" if request_id else line)


def configure_logging(
    level: str,
    *,
    project: str | None = None,
    json_lines: bool | None = None,
    stream: TextIO | None = None,
) -> None:
    """Route the service's, uvicorn's and the libraries' logs through one handler, on stdout
    unless `stream` says otherwise."""
    stream = stream or sys.stdout
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(project)
        if json_lines
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Alembic narrates every plugin and step at INFO; its warnings are what matter.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
    # Our own access log carries the request id; uvicorn's would duplicate every line.
    logging.getLogger("uvicorn.access").disabled = True
