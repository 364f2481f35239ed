"""The Guard remembers credentials it verified, never past a change to their key."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from access import security
from access.apikeys import RateLimit, hash_key
from access.keyring import Key
from access.security import Guard, Unauthenticated

OPERATION = "listSymbols"
SCOPE: dict[str, Any] = {"extensions": {"connexion_routing": {"operation_id": OPERATION}}}
SECRET = f"mdp_{'a' * 12}_{'s' * 43}"
OTHER_SECRET = f"mdp_{'a' * 12}_{'t' * 43}"


def _guard(key: Key) -> Guard:
    guard = Guard(mode="required", scopes={OPERATION: frozenset({"read"})})
    _reload(guard, key)
    return guard


def _reload(guard: Guard, key: Key) -> None:
    # What KeyRing.refresh leaves after reading the keys (tests/integration/test_keyring.py).
    guard.ring._keys = {key.id: key}
    guard.ring.loaded = True


def _judge(guard: Guard, secret: str) -> Any:
    return guard.judge(SCOPE, [secret.encode()], [])


KEY = Key("a" * 12, "reader", hash_key(SECRET), frozenset({"read"}), RateLimit(10**6, 1), False)
ADMITTED = {"sub": KEY.id, "max_exports": None, "max_streams": None}


def test_a_repeated_credential_is_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = _guard(KEY)
    hashed: list[str] = []
    monkeypatch.setattr(security, "hash_key", lambda text: hashed.append(text) or hash_key(text))

    answers = [_judge(guard, SECRET) for _ in range(3)]

    assert answers == [ADMITTED] * 3
    assert hashed == [SECRET]


def test_a_credential_verified_before_a_key_rotation_is_refused_after_it() -> None:
    guard = _guard(KEY)
    assert _judge(guard, SECRET) == ADMITTED

    _reload(guard, dataclasses.replace(KEY, key_hash=hash_key(OTHER_SECRET)))

    with pytest.raises(Unauthenticated) as refused:
        _judge(guard, SECRET)
    assert refused.value.reason == "invalid_key"
    assert _judge(guard, OTHER_SECRET) == ADMITTED


def test_a_credential_verified_before_its_key_was_revoked_is_refused_after() -> None:
    guard = _guard(KEY)
    assert _judge(guard, SECRET) == ADMITTED

    _reload(guard, dataclasses.replace(KEY, revoked=True))

    with pytest.raises(Unauthenticated) as refused:
        _judge(guard, SECRET)
    assert refused.value.reason == "revoked"


def test_an_unknown_key_id_costs_the_same_work_as_a_wrong_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hashing and comparing happen whether or not the id exists, so the time to refuse a
    key does not tell a guesser which ids are real."""
    guard = _guard(KEY)
    hashed: list[str] = []
    compared: list[bytes] = []
    monkeypatch.setattr(security, "hash_key", lambda text: hashed.append(text) or hash_key(text))
    real = security.hmac.compare_digest
    monkeypatch.setattr(
        security.hmac, "compare_digest", lambda a, b: compared.append(a) or real(a, b)
    )
    unknown = f"mdp_{'b' * 12}_{'s' * 43}"

    for secret in (OTHER_SECRET, unknown):
        with pytest.raises(Unauthenticated) as refused:
            _judge(guard, secret)
        assert refused.value.reason == "invalid_key"

    assert hashed == [OTHER_SECRET, unknown]
    assert len(compared) == 2 and all(len(digest) == 32 for digest in compared)
