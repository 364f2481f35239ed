"""Pagination cursors: exact round-trips, bound to their filters, and nothing else gets in."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from errors import InvalidCursor
from handlers.cursors import decode, encode

URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The oldest and newest moments a cursor may carry (a day inside datetime's own range).
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)

TRADE_FILTERS = ("AAPL", "2026-01-02T00:00:00+00:00", None, "desc")
CANDLE_FILTERS = ("AAPL", "1m", None, None)
TRADE_SHAPE = (datetime, int)
CANDLE_SHAPE = (datetime, datetime, datetime)

moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 29), timezones=st.just(UTC)
)
int64s = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
codes = st.text(max_size=64)


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def token_of(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


def payload_of(token: str) -> list[object]:
    decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert isinstance(decoded, list)
    return decoded


def forge(kind: str, filters: Sequence[str | None], *values: object, version: object = 1) -> str:
    """A token with the genuine fingerprint for (kind, filters) but any version and values."""
    fingerprint = payload_of(encode(kind, filters, ("x",)))[1]
    # The stdlib encoder, because orjson refuses integers beyond 64 bits.
    return token_of(json.dumps([version, fingerprint, *values]).encode())


def test_forged_token_with_valid_values_is_accepted() -> None:
    # Guards the helper the rejection tests rely on: only the value under test is wrong.
    token = forge("trades", TRADE_FILTERS, micros(EARLIEST), 5)
    assert decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE) == [EARLIEST, 5]


@settings(max_examples=200, deadline=None)
@given(code=codes)
def test_symbol_cursor_round_trips(code: str) -> None:
    token = encode("symbols", (), (code,))
    assert decode(token, "symbols", (), (str,)) == [code]


@settings(max_examples=200, deadline=None)
@given(moment=moments, trade_id=int64s)
def test_trade_cursor_round_trips_to_the_microsecond(moment: datetime, trade_id: int) -> None:
    token = encode("trades", TRADE_FILTERS, (moment, trade_id))
    decoded_moment, decoded_id = decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE)
    assert decoded_moment == moment
    assert isinstance(decoded_moment, datetime)
    assert decoded_moment.microsecond == moment.microsecond
    assert decoded_moment.utcoffset() == timedelta(0)
    assert decoded_id == trade_id


@settings(max_examples=200, deadline=None)
@given(position=st.tuples(moments, moments, moments))
def test_candle_cursor_round_trips_three_moments(
    position: tuple[datetime, datetime, datetime],
) -> None:
    token = encode("candles", CANDLE_FILTERS, position)
    assert decode(token, "candles", CANDLE_FILTERS, CANDLE_SHAPE) == list(position)


def test_cursor_keeps_microseconds_of_a_moment_in_another_offset() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC)
    local = moment.astimezone(timezone(timedelta(hours=-7)))
    token = encode("trades", TRADE_FILTERS, (local, 42))
    assert decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE) == [moment, 42]


@pytest.mark.parametrize(
    ("moment", "trade_id"),
    [(EARLIEST, INT64_MIN), (LATEST, INT64_MAX), (EPOCH, 0)],
)
def test_cursor_accepts_the_edges_of_its_ranges(moment: datetime, trade_id: int) -> None:
    token = encode("trades", TRADE_FILTERS, (moment, trade_id))
    assert decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE) == [moment, trade_id]


@settings(max_examples=200, deadline=None)
@given(code=codes, moment=moments, trade_id=int64s)
def test_cursor_tokens_are_url_safe(code: str, moment: datetime, trade_id: int) -> None:
    for token in (
        encode("symbols", (), (code,)),
        encode("trades", TRADE_FILTERS, (moment, trade_id)),
        encode("candles", CANDLE_FILTERS, (moment, moment, moment)),
    ):
        assert URL_SAFE.match(token), token


@pytest.mark.parametrize(
    ("kind", "filters"),
    [
        ("trades", ("AAPL", "2026-01-02T00:00:00+00:00", None, "asc")),
        ("trades", ("MSFT", "2026-01-02T00:00:00+00:00", None, "desc")),
        ("trades", ("AAPL", None, None, "desc")),
        ("trades", ("AAPL", None, "2026-01-02T00:00:00+00:00", "desc")),
        ("candles", TRADE_FILTERS),
    ],
)
def test_cursor_reused_with_other_filters_is_rejected(
    kind: str, filters: tuple[str | None, ...]
) -> None:
    token = encode("trades", TRADE_FILTERS, (EPOCH, 1))
    with pytest.raises(InvalidCursor, match="different filters") as caught:
        decode(token, kind, filters, TRADE_SHAPE)
    assert caught.value.code == "invalid_cursor"


MALFORMED = {
    "garbage": "not-a-cursor",
    "one character": "a",
    "impossible base64 length": "abcde",
    "non-ascii": "éé",
    "empty": "",
    "base64 of text": token_of(b"hello, world"),
    "base64 of a json object": token_of(b'{"v": 1}'),
    "base64 of a json number": token_of(b"1"),
    "base64 of invalid utf-8": token_of(b"\xff\xfe[1]"),
}


@pytest.mark.parametrize("token", MALFORMED.values(), ids=list(MALFORMED))
def test_undecodable_cursor_is_rejected(token: str) -> None:
    with pytest.raises(InvalidCursor, match="malformed"):
        decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE)


WRONG_VALUES = {
    "version 2": ({"version": 2}, (0, 1)),
    "version 0": ({"version": 0}, (0, 1)),
    "version as text": ({"version": "1"}, (0, 1)),
    "too few values": ({}, (0,)),
    "too many values": ({}, (0, 1, 2)),
    "no values": ({}, ()),
    "text for a moment": ({}, ("2026-01-02T00:00:00Z", 1)),
    "text for an id": ({}, (0, "1")),
    "float for an id": ({}, (0, 1.0)),
    "float for a moment": ({}, (0.5, 1)),
    "null for an id": ({}, (0, None)),
    "list for an id": ({}, (0, [1])),
    "bool for an id": ({}, (0, True)),
    "bool for a moment": ({}, (False, 1)),
    "moment before year 1 day 2": ({}, (micros(EARLIEST) - 1, 1)),
    "moment after 9999-12-30": ({}, (micros(LATEST) + 1, 1)),
    "moment beyond any datetime": ({}, (2**62, 1)),
    "id of 2**63": ({}, (0, 2**63)),
    "id below -2**63": ({}, (0, -(2**63) - 1)),
    "id of 2**64": ({}, (0, 2**64)),
    "id of 2**70": ({}, (0, 2**70)),
}


@pytest.mark.parametrize(("options", "values"), WRONG_VALUES.values(), ids=list(WRONG_VALUES))
def test_cursor_with_a_wrong_version_arity_or_value_is_rejected(
    options: dict[str, object], values: tuple[object, ...]
) -> None:
    token = forge("trades", TRADE_FILTERS, *values, **options)
    with pytest.raises(InvalidCursor, match="malformed"):
        decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE)


@pytest.mark.parametrize("code", ["x" * 65, 1, None, True])
def test_symbol_cursor_rejects_anything_but_a_short_string(code: object) -> None:
    token = forge("symbols", (), code)
    with pytest.raises(InvalidCursor, match="malformed"):
        decode(token, "symbols", (), (str,))


@settings(max_examples=300, deadline=None)
@given(token=st.text())
def test_decode_rejects_arbitrary_text_with_invalid_cursor_only(token: str) -> None:
    with pytest.raises(InvalidCursor):
        decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary())
def test_decode_rejects_arbitrary_bytes_with_invalid_cursor_only(payload: bytes) -> None:
    with pytest.raises(InvalidCursor):
        decode(token_of(payload), "trades", TRADE_FILTERS, TRADE_SHAPE)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=80),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    version=st.one_of(st.just(1), json_values),
    values=st.lists(json_values, max_size=4),
)
def test_decode_of_any_json_yields_in_range_values_or_invalid_cursor(
    version: object, values: list[object]
) -> None:
    token = forge("trades", TRADE_FILTERS, *values, version=version)
    try:
        position = decode(token, "trades", TRADE_FILTERS, TRADE_SHAPE)
    except InvalidCursor:
        return
    moment, trade_id = position
    assert isinstance(moment, datetime)
    assert EARLIEST <= moment <= LATEST
    assert type(trade_id) is int
    assert INT64_MIN <= trade_id <= INT64_MAX
