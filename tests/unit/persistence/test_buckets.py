"""Candle buckets: bucket_floor / bucket_ceil align every interval to UTC epoch multiples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persistence.finality import EPOCH, INTERVALS, bucket_ceil, bucket_floor

ZERO = timedelta(0)
# Fixed offsets only: a moment's offset is part of the input, not something that moves.
OFFSETS = [
    UTC,
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-8)),
    timezone(timedelta(hours=13, minutes=45)),
]

moments = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(OFFSETS),
)
steps = st.sampled_from(sorted(INTERVALS.values()))


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def test_intervals_are_the_six_the_contract_names() -> None:
    assert INTERVALS == {
        "1m": timedelta(minutes=1),
        "5m": timedelta(minutes=5),
        "15m": timedelta(minutes=15),
        "1h": timedelta(hours=1),
        "4h": timedelta(hours=4),
        "1d": timedelta(days=1),
    }


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("1m", utc(2026, 1, 2, 15, 59)),
        ("5m", utc(2026, 1, 2, 15, 55)),
        ("15m", utc(2026, 1, 2, 15, 45)),
        ("1h", utc(2026, 1, 2, 15)),
        ("4h", utc(2026, 1, 2, 12)),
        ("1d", utc(2026, 1, 2)),
    ],
)
def test_bucket_floor_is_the_start_of_the_utc_bucket(interval: str, expected: datetime) -> None:
    moment = utc(2026, 1, 2, 15, 59, 59, 999_999)
    assert bucket_floor(moment, INTERVALS[interval]) == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("1m", utc(2026, 1, 2, 15, 1)),
        ("5m", utc(2026, 1, 2, 15, 5)),
        ("15m", utc(2026, 1, 2, 15, 15)),
        ("1h", utc(2026, 1, 2, 16)),
        ("4h", utc(2026, 1, 2, 16)),
        ("1d", utc(2026, 1, 3)),
    ],
)
def test_bucket_ceil_is_the_start_of_the_next_utc_bucket(interval: str, expected: datetime) -> None:
    moment = utc(2026, 1, 2, 15, 0, 0, 1)
    assert bucket_ceil(moment, INTERVALS[interval]) == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("1m", utc(1969, 12, 31, 23, 59)),
        ("4h", utc(1969, 12, 31, 20)),
        ("1d", utc(1969, 12, 31)),
    ],
)
def test_bucket_floor_aligns_moments_before_the_epoch(interval: str, expected: datetime) -> None:
    assert bucket_floor(utc(1969, 12, 31, 23, 59, 59, 500_000), INTERVALS[interval]) == expected


def test_bucket_floor_aligns_to_utc_not_to_the_moments_offset() -> None:
    # 03:00 in India is 21:30 UTC the day before, so the day bucket starts that day at 00:00 UTC.
    moment = datetime(2026, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert bucket_floor(moment, INTERVALS["1d"]) == utc(2026, 1, 1)
    assert bucket_floor(moment, INTERVALS["4h"]) == utc(2026, 1, 1, 20)


@settings(max_examples=300, deadline=None)
@given(moment=moments, step=steps)
def test_bucket_floor_holds_the_moment(moment: datetime, step: timedelta) -> None:
    floor = bucket_floor(moment, step)
    assert floor <= moment < floor + step
    assert (floor - EPOCH) % step == ZERO


@settings(max_examples=300, deadline=None)
@given(moment=moments)
def test_day_and_four_hour_buckets_start_on_utc_hours(moment: datetime) -> None:
    day = bucket_floor(moment, INTERVALS["1d"]).astimezone(UTC)
    four_hours = bucket_floor(moment, INTERVALS["4h"]).astimezone(UTC)
    assert (day.hour, day.minute, day.second, day.microsecond) == (0, 0, 0, 0)
    assert four_hours.hour % 4 == 0
    assert (four_hours.minute, four_hours.second, four_hours.microsecond) == (0, 0, 0)


@settings(max_examples=300, deadline=None)
@given(moment=moments, step=steps)
def test_bucket_floor_is_idempotent(moment: datetime, step: timedelta) -> None:
    floor = bucket_floor(moment, step)
    assert bucket_floor(floor, step) == floor


@settings(max_examples=300, deadline=None)
@given(moment=moments, step=steps)
def test_bucket_ceil_is_the_first_bucket_start_at_or_after_the_moment(
    moment: datetime, step: timedelta
) -> None:
    ceil = bucket_ceil(moment, step)
    assert moment <= ceil < moment + step
    assert (ceil - EPOCH) % step == ZERO


@settings(max_examples=300, deadline=None)
@given(moment=moments, step=steps)
def test_bucket_ceil_is_idempotent_on_aligned_values(moment: datetime, step: timedelta) -> None:
    ceil = bucket_ceil(moment, step)
    floor = bucket_floor(moment, step)
    assert bucket_ceil(ceil, step) == ceil
    assert bucket_ceil(floor, step) == floor


@settings(max_examples=300, deadline=None)
@given(moment=moments, step=steps)
def test_bucket_ceil_equals_floor_only_on_a_bucket_start(moment: datetime, step: timedelta) -> None:
    floor, ceil = bucket_floor(moment, step), bucket_ceil(moment, step)
    if floor == moment:
        assert ceil == moment
    else:
        assert ceil == floor + step


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(min_value=-500_000, max_value=500_000),
    interval=st.sampled_from(sorted(INTERVALS)),
)
def test_every_epoch_multiple_is_its_own_floor_and_ceil(start: int, interval: str) -> None:
    step = INTERVALS[interval]
    aligned = EPOCH + start * step
    assert bucket_floor(aligned, step) == aligned
    assert bucket_ceil(aligned, step) == aligned
    assert bucket_floor(aligned - timedelta(microseconds=1), step) == aligned - step
    assert bucket_ceil(aligned + timedelta(microseconds=1), step) == aligned + step
