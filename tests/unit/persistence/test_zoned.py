"""Local-time candle buckets: DST days, half-hour zones, local mean time, unknown zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from persistence import finality, zoned
from persistence.finality import INTERVALS
from persistence.zoned import UnknownZone, bucket_starts, zone

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def starts(name: str, step: timedelta, lo: str, hi: str) -> list[str]:
    found, _ = bucket_starts(zone(name), step, utc(lo), utc(hi), limit=1000)
    return [s.strftime("%m-%dT%H:%M") for s in found]


def test_utc_buckets_are_epoch_multiples():
    assert starts("UTC", 4 * HOUR, "2026-01-01T01:00", "2026-01-01T13:00") == [
        "01-01T04:00",
        "01-01T08:00",
        "01-01T12:00",
    ]


def test_a_new_york_day_lasts_25_hours_when_clocks_fall_back_and_23_when_they_spring():
    assert starts("America/New_York", DAY, "2026-10-31T00:00", "2026-11-03T00:00") == [
        "10-31T04:00",
        "11-01T04:00",
        "11-02T05:00",
    ]
    assert starts("America/New_York", DAY, "2026-03-07T00:00", "2026-03-10T00:00") == [
        "03-07T05:00",
        "03-08T05:00",
        "03-09T04:00",
    ]


def test_four_hour_buckets_start_at_local_midnight_and_one_lasts_five_hours_on_fall_back():
    assert starts("America/New_York", 4 * HOUR, "2026-11-01T04:00", "2026-11-01T18:00") == [
        "11-01T04:00",
        "11-01T09:00",
        "11-01T13:00",
        "11-01T17:00",
    ]


def test_the_repeated_hour_is_one_bucket_and_the_skipped_hour_none():
    # 01:00 local happens twice on 1 November: one two-hour bucket from 05:00 UTC.
    assert starts("America/New_York", HOUR, "2026-11-01T04:00", "2026-11-01T09:00") == [
        "11-01T04:00",
        "11-01T05:00",
        "11-01T07:00",
        "11-01T08:00",
    ]
    # 02:00 local never happens on 8 March: 01:00 EST is followed by 03:00 EDT.
    assert starts("America/New_York", HOUR, "2026-03-08T05:00", "2026-03-08T09:00") == [
        "03-08T05:00",
        "03-08T06:00",
        "03-08T07:00",
        "03-08T08:00",
    ]


def test_hours_in_a_half_hour_zone_start_at_half_past_utc():
    assert starts("Asia/Kolkata", HOUR, "2026-01-01T00:00", "2026-01-01T02:00") == [
        "01-01T00:30",
        "01-01T01:30",
    ]


def test_local_mean_time_boundaries_are_rounded_down_to_the_utc_minute():
    # Amsterdam kept local mean time (+00:19:32) until 1937: midnight was 23:40:28 UTC.
    found, end = bucket_starts(
        zone("Europe/Amsterdam"), DAY, utc("1900-01-01T00:00"), utc("1900-01-02T00:00"), limit=5
    )
    assert found == [utc("1900-01-01T23:40")]
    assert end == utc("1900-01-02T23:40")


def test_the_end_is_the_next_bucket_start_and_limit_caps_the_count():
    found, end = bucket_starts(
        zone("Europe/Paris"), DAY, utc("2026-01-01T00:00"), utc("2026-02-01T00:00"), limit=2
    )
    assert found == [utc("2026-01-01T23:00"), utc("2026-01-02T23:00")]
    assert end == utc("2026-01-03T23:00")


@pytest.mark.parametrize(
    "name", ["Mars/Olympus_Mons", "../etc/passwd", "/usr/share/zoneinfo/UTC", ""]
)
def test_unknown_zones_are_refused(name: str):
    with pytest.raises(UnknownZone):
        zone(name)


@given(
    moment=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    step=st.sampled_from(sorted(INTERVALS.values())),
)
def test_utc_buckets_are_the_epoch_aligned_buckets(moment: datetime, step: timedelta) -> None:
    # UTC is the zone whose offset is 0: its local buckets are the epoch-aligned ones.
    utc = zone("UTC")
    assert zoned.bucket_floor(utc, step, moment) == finality.bucket_floor(moment, step)
    assert zoned.bucket_ceil(utc, step, moment) == finality.bucket_ceil(moment, step)
