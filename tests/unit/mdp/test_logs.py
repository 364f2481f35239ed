"""JSON log lines in Cloud Logging's structured format."""

from __future__ import annotations

import json
import logging

from mdp.logs import JsonFormatter
from mdp.telemetry import _request_id, _trace


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mdp.test", logging.WARNING, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_severity_message_logger_and_request_id() -> None:
    token = _request_id.set("req-1")
    try:
        line = JsonFormatter(project=None).format(_record("hello %s"))
    finally:
        _request_id.reset(token)

    entry = json.loads(line)
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "hello %s"
    assert entry["logger"] == "mdp.test"
    assert entry["request_id"] == "req-1"
    assert "logging.googleapis.com/trace" not in entry


def test_json_line_names_the_cloud_trace_of_the_request() -> None:
    token = _trace.set("105445aa7843bc8bf206b12000100000")
    try:
        line = JsonFormatter(project="demo-project").format(_record("traced"))
    finally:
        _trace.reset(token)

    assert json.loads(line)["logging.googleapis.com/trace"] == (
        "projects/demo-project/traces/105445aa7843bc8bf206b12000100000"
    )


def test_access_line_carries_cloud_logging_http_request() -> None:
    http = {"method": "GET", "path": "/symbols", "status": 200, "latency_ms": 1.5}

    entry = json.loads(JsonFormatter(project=None).format(_record("GET /symbols", http=http)))

    assert entry["httpRequest"] == {
        "requestMethod": "GET",
        "requestUrl": "/symbols",
        "status": 200,
        "latency": "0.001500s",
    }
