"""Choosing the /metrics format from an Accept header."""

from __future__ import annotations

import pytest

from handlers.meta import JSON, OPENMETRICS, TEXT, negotiate


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", JSON),
        ("*/*", JSON),
        ("application/json", JSON),
        ("text/plain", TEXT),
        ("text/plain;version=0.0.4;q=0.9, */*;q=0.1", TEXT),
        ("application/openmetrics-text;version=1.0.0,text/plain;q=0.5", OPENMETRICS),
        ("application/json;q=0.4, text/plain;q=0.6", TEXT),
        ("text/plain;q=0.3, application/json", JSON),
        ("text/plain;q=banana", JSON),
        ("TEXT/PLAIN", TEXT),
    ],
)
def test_negotiate_picks_the_highest_quality_supported_format(accept: str, expected: str) -> None:
    assert negotiate(accept) == expected
