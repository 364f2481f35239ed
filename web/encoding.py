"""JSON as every body and event is written: orjson, UTC timestamps with `Z`, exact decimals."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

__all__ = ["composed", "dumps", "number"]

# Timestamps leave as RFC 3339 with a `Z`; aware datetimes from asyncpg are already in UTC.
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _exact(value: object) -> orjson.Fragment:
    # Prices and volumes are numeric(38,18) and leave as the decimal number they are, digit for
    # digit (a JSON number is decimal text): never through a binary float, which keeps ~15
    # significant digits. PostgreSQL's trim_scale() already dropped trailing zeros.
    if isinstance(value, Decimal):
        return orjson.Fragment(number(str(value)))
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def number(text: str) -> str:
    """A decimal's text as a JSON number that always reads back as a non-integer type: with a
    fraction or an exponent (`14` is written `14.0`), as when these values were floats, so a
    typed client never sees an int. `persistence.candles` composes the same rule in SQL."""
    return text if "." in text or "E" in text else f"{text}.0"


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=_exact, option=_OPTIONS)


def composed(json_text: str) -> orjson.Fragment:
    """JSON composed elsewhere (by PostgreSQL), written into the body as it is."""
    return orjson.Fragment(json_text)
