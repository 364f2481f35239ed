"""Turning validated query values into domain values (times, symbols)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from errors import InvalidTimeRange, RequestValidationFailed, ValidationIssue
from persistence.zoned import UnknownZone, zone

__all__ = [
    "EARLIEST",
    "LATEST",
    "parse_time",
    "parse_window",
    "parse_zone",
    "symbol_code",
    "symbol_codes",
]

# The supported range of request timestamps: far beyond any market data, and far enough from
# datetime's limits that window arithmetic (up to 5000 daily buckets) can never overflow.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def symbol_code(symbol: str) -> str:
    """Symbols are case-insensitive and always stored and returned upper case."""
    return symbol.upper()


def symbol_codes(symbols: Iterable[str]) -> list[str]:
    """A list of symbols as codes, in the order given, each once (`aapl,AAPL` is one)."""
    return list(dict.fromkeys(symbol_code(symbol) for symbol in symbols))


def parse_time(value: str, name: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as UTC.

    The contract's `format: date-time` has already been checked (an offset is required); this
    turns it into a datetime. RFC 3339 allows lowercase `t`/`z`, which Python 3.11 does not. A
    value the schema admits but that names no supported instant (a year past 9999 once in UTC,
    anything outside 1900-9000) is a time range the service does not serve:
    `invalid_time_range`.
    """
    try:
        moment = datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidTimeRange(
            f"{name} {value!r} is not a supported RFC 3339 timestamp with an offset "
            "(e.g. 2026-01-02T03:04:05Z)."
        ) from None
    if not EARLIEST <= moment < LATEST:
        raise InvalidTimeRange(
            f"{name} {value!r} is outside the supported range "
            "1900-01-01T00:00:00Z (inclusive) to 9000-01-01T00:00:00Z (exclusive)."
        )
    return moment


def parse_window(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """`start` inclusive, `end` exclusive; when both are given, start must come first."""
    start_at = parse_time(start, "start") if start is not None else None
    end_at = parse_time(end, "end") if end is not None else None
    if start_at is not None and end_at is not None and start_at >= end_at:
        raise InvalidTimeRange(f"start ({start}) must be before end ({end}).")
    return start_at, end_at


def parse_zone(name: str) -> ZoneInfo:
    """The IANA time zone `timezone` names; a 400 naming the parameter when there is none."""
    try:
        return zone(name)
    except UnknownZone:
        issue = ValidationIssue(
            "query",
            "timezone",
            f"{name!r} is not an IANA time zone name (e.g. UTC, America/New_York, Asia/Kolkata)",
        )
        raise RequestValidationFailed([issue]) from None
