"""Fair shares: per instance and per owner, refused at once, ended on revocation."""

from __future__ import annotations

import pytest

from persistence.budget import Budget


class _Full(Exception):
    pass


class _OwnerFull(Exception):
    pass


def _budget(total: int) -> Budget:
    return Budget(total, full=lambda n: _Full(n), owner_full=lambda n: _OwnerFull(n))


def test_an_owner_over_its_cap_is_refused_before_the_instance_is_full() -> None:
    budget = _budget(3)
    budget.claim("k1", 1)
    with pytest.raises(_OwnerFull):
        budget.claim("k1", 1)
    budget.claim("k2", 1)
    budget.claim(None, 1)  # access control off: counts against the total only
    with pytest.raises(_Full):
        budget.claim("k3", 1)


def test_a_released_claim_frees_both_shares_once() -> None:
    budget = _budget(1)
    claim = budget.claim("k1", 1)
    claim.release()
    claim.release()
    assert len(budget) == 0
    budget.claim("k1", 1)
    # Released once: the owner's count is back at 0, not below it.
    with pytest.raises(_OwnerFull):
        budget.claim("k1", 1)


def test_revoking_an_owner_ends_its_claims_only() -> None:
    budget = _budget(2)
    kept, revoked = budget.claim("k1", 1), budget.claim("k2", 1)
    budget.keep_owners({"k1"})
    assert revoked.ended.is_set() and not kept.ended.is_set()
