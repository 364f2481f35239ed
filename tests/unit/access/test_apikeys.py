"""API key format, hashing, scopes and rate-limit parsing."""

from __future__ import annotations

import hashlib
import re

import pytest

from access.apikeys import (
    KEY_PREFIX,
    RateLimit,
    _new_key,
    hash_key,
    key_id_of,
    parse_rate_limit,
    parse_scopes,
    redact,
)


def test_new_key_has_the_scannable_prefix_its_id_and_256_random_bits() -> None:
    key_id, key = _new_key()
    assert re.fullmatch(r"[0-9a-f]{12}", key_id)
    assert key.startswith(f"{KEY_PREFIX}{key_id}_")
    secret = key.removeprefix(f"{KEY_PREFIX}{key_id}_")
    # 32 bytes, base64url without padding.
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)
    assert key_id_of(key) == key_id


def test_new_keys_never_repeat() -> None:
    keys = {_new_key()[1] for _ in range(1000)}
    assert len(keys) == 1000


def test_hash_is_sha256_of_the_whole_key() -> None:
    _, key = _new_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).digest()
    assert len(hash_key(key)) == 32


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "mdp_",
        "secret",
        "mdp_0123456789ab_" + "a" * 42,  # one character short
        "mdp_0123456789ab_" + "a" * 44,  # one too many
        "mdp_0123456789AB_" + "a" * 43,  # id is lowercase hex
        "mdp_0123456789ab_" + "a" * 42 + "=",  # outside base64url
        "mdp_0123456789ab_" + "a" * 42 + "\x00",
        "xyz_0123456789ab_" + "a" * 43,
        " mdp_0123456789ab_" + "a" * 43,
        "mdp_0123456789ab_" + "a" * 43 + "\n",
    ],
)
def test_key_id_of_rejects_anything_but_the_exact_shape(presented: str) -> None:
    assert key_id_of(presented) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("50/s", RateLimit(50, 1)),
        ("600/min", RateLimit(600, 60)),
        ("600/m", RateLimit(600, 60)),
        ("10000/h", RateLimit(10000, 3600)),
        (" 7 / S ", RateLimit(7, 1)),
    ],
)
def test_parse_rate_limit(raw: str, expected: RateLimit) -> None:
    assert parse_rate_limit(raw) == expected


@pytest.mark.parametrize("raw", ["50", "50/day", "0/s", "-1/s", "1.5/s", "x/s", "2000000/s"])
def test_parse_rate_limit_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate_limit(raw)


def test_rate_limit_prints_as_it_is_written() -> None:
    assert [str(parse_rate_limit(raw)) for raw in ("50/s", "600/min", "5/h")] == [
        "50/s",
        "600/min",
        "5/h",
    ]


def test_parse_scopes_folds_case_and_duplicates() -> None:
    assert parse_scopes("Read, stream,read,export") == ("read", "stream", "export")


@pytest.mark.parametrize("raw", ["", ",", "admin", "read,write"])
def test_parse_scopes_rejects_unknown_or_empty(raw: str) -> None:
    with pytest.raises(ValueError, match="scopes"):
        parse_scopes(raw)


def test_redact_keeps_the_id_and_drops_the_secret_of_anything_key_like() -> None:
    key_id, key = _new_key()
    text = f"api_key={key}&other=1 and mdp_{key_id}_short"
    redacted = redact(text)
    assert key.split("_", 2)[2] not in redacted
    assert redacted.count(f"mdp_{key_id}_[redacted]") == 2
    assert redact("symbol=AAPL") == "symbol=AAPL"
