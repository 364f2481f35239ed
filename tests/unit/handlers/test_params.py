"""Query values to domain values: RFC 3339 times as aware UTC, windows that run forwards."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from errors import InvalidTimeRange
from handlers.params import parse_time, parse_window, symbol_code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05+00:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T08:34:05+05:30", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-01T19:04:05-08:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02t03:04:05z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02t03:04:05+01:00", datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.5Z", datetime(2026, 1, 2, 3, 4, 5, 500_000, tzinfo=UTC)),
        ("2026-01-02T03:04:05.123456Z", datetime(2026, 1, 2, 3, 4, 5, 123_456, tzinfo=UTC)),
        ("2026-01-02T03:04:05.000001-00:30", datetime(2026, 1, 2, 3, 34, 5, 1, tzinfo=UTC)),
        ("2026-01-01T23:30:00-01:00", datetime(2026, 1, 2, 0, 30, tzinfo=UTC)),
    ],
)
def test_parse_time_returns_the_instant_in_utc(value: str, expected: datetime) -> None:
    moment = parse_time(value, "start")
    assert moment == expected
    assert moment.tzinfo is UTC
    # Same wall clock as the expected UTC value, not merely the same instant.
    assert moment.replace(tzinfo=None) == expected.replace(tzinfo=None)


# Only values `format: date-time` admits: validation answers 400 to the rest (no offset, a bare
# date, not a timestamp) before a handler runs (tests/api/test_trades.py).
@pytest.mark.parametrize(
    "value",
    [
        "2026-12-31T23:59:60Z",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2026-02-30T00:00:00Z",
    ],
)
def test_parse_time_rejects_values_without_a_utc_instant(value: str) -> None:
    with pytest.raises(InvalidTimeRange) as caught:
        parse_time(value, "end")
    assert caught.value.detail.startswith(f"end {value!r} ")


def test_parse_window_returns_both_bounds_in_utc() -> None:
    start, end = parse_window("2026-01-02T03:00:00+01:00", "2026-01-02T03:00:00Z")
    assert start == datetime(2026, 1, 2, 2, tzinfo=UTC)
    assert end == datetime(2026, 1, 2, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, None),
        ("2026-01-02T03:00:00Z", None),
        (None, "2026-01-02T03:00:00Z"),
    ],
)
def test_parse_window_leaves_a_missing_bound_open(start: str | None, end: str | None) -> None:
    start_at, end_at = parse_window(start, end)
    assert (start_at is None) == (start is None)
    assert (end_at is None) == (end is None)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-01-02T03:00:00Z", "2026-01-02T02:59:59.999999Z"),
        ("2026-01-02T03:00:00Z", "2026-01-02T03:00:00Z"),
        # The same instant written in two offsets is still an empty window.
        ("2026-01-02T03:00:00Z", "2026-01-02T04:00:00+01:00"),
    ],
)
def test_parse_window_rejects_a_start_not_before_end(start: str, end: str) -> None:
    with pytest.raises(InvalidTimeRange, match="must be before end") as caught:
        parse_window(start, end)
    assert caught.value.code == "invalid_time_range"


def test_parse_window_accepts_a_window_one_microsecond_long() -> None:
    start, end = parse_window("2026-01-02T03:00:00Z", "2026-01-02T03:00:00.000001Z")
    assert start is not None and end is not None
    assert (end - start).microseconds == 1


@pytest.mark.parametrize(("name", "start", "end"), [("start", "nope", None), ("end", None, "nope")])
def test_parse_window_names_the_bound_that_is_invalid(
    name: str, start: str | None, end: str | None
) -> None:
    with pytest.raises(InvalidTimeRange) as caught:
        parse_window(start, end)
    assert caught.value.detail.startswith(f"{name} 'nope' ")


def test_symbol_code_is_upper_case() -> None:
    assert symbol_code("aApl") == "AAPL"
