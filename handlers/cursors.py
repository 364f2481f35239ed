"""Opaque pagination cursors, bound to the filters of the request that issued them."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson

from errors import InvalidCursor

__all__ = ["decode", "encode"]

_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Scalar = str | int | None


def _fingerprint(kind: str, filters: Sequence[Scalar]) -> str:
    digest = hashlib.blake2b(orjson.dumps([kind, *filters]), digest_size=8)
    return digest.hexdigest()


def to_micros(moment: datetime) -> int:
    """Exact microseconds since the epoch (no float rounding)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def encode(kind: str, filters: Sequence[Scalar], position: Sequence[Scalar | datetime]) -> str:
    values = [to_micros(v) if isinstance(v, datetime) else v for v in position]
    payload = orjson.dumps([_VERSION, _fingerprint(kind, filters), *values])
    return base64.urlsafe_b64encode(payload).rstrip(b"=").decode()


_MIN_MICROS = to_micros(datetime(1, 1, 2, tzinfo=UTC))
_MAX_MICROS = to_micros(datetime(9999, 12, 30, tzinfo=UTC))
_BIGINT = 2**63


def _convert(value: object, kind: type) -> Scalar | datetime:
    if kind is datetime:
        if type(value) is int and _MIN_MICROS <= value <= _MAX_MICROS:
            return from_micros(value)
    elif kind is int:
        if type(value) is int and -_BIGINT <= value < _BIGINT:
            return value
    elif kind is str:
        if type(value) is str and len(value) <= 64:
            return value
    raise ValueError(value)


def decode(
    token: str, kind: str, filters: Sequence[Scalar], shape: Sequence[type]
) -> list[Scalar | datetime]:
    """The position inside `token`, converted to `shape` (datetime, int or str).

    InvalidCursor unless it is well formed, of this version, issued for the same filters,
    and every value is in range: a crafted cursor must never reach the database as garbage.
    """
    malformed = InvalidCursor("The cursor is malformed; use next_cursor exactly as returned.")
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(payload, list) or len(payload) != 2 + len(shape):
            raise ValueError(payload)
        if type(payload[0]) is not int or payload[0] != _VERSION:
            raise ValueError(payload)
        position = [_convert(v, t) for v, t in zip(payload[2:], shape, strict=True)]
    except (binascii.Error, ValueError):
        raise malformed from None
    if payload[1] != _fingerprint(kind, filters):
        raise InvalidCursor(
            "The cursor was issued for different filters; repeat the original query parameters "
            "(other than limit) with it."
        )
    return position
