"""Fair shares of a scarce thing (export connections, stream slots): per instance and per owner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

__all__ = ["Budget", "Claim"]


class Claim:
    """One holder's share, until `release()`. `ended` is set when the owner loses access
    (its key was revoked): the holder stops at once."""

    __slots__ = ("_budget", "ended", "owner")

    def __init__(self, budget: Budget, owner: str | None) -> None:
        self._budget = budget
        self.owner = owner
        self.ended = asyncio.Event()

    def release(self) -> None:
        self._budget._release(self)


class Budget:
    """At most `total` claims at a time, and at most a given number per owner; never waits.

    Holders keep their share for minutes (an export, a stream), so a newcomer over a cap is
    refused at once rather than queued: `full()` is raised over the instance's cap,
    `owner_full(cap)` over the owner's. Unowned claims (access control off) count only
    against the total.
    """

    def __init__(
        self,
        total: int,
        *,
        full: Callable[[int], Exception],
        owner_full: Callable[[int], Exception],
    ) -> None:
        self.total = total
        self._full = full
        self._owner_full = owner_full
        self._claims: set[Claim] = set()
        self._by_owner: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._claims)

    def claim(self, owner: str | None, per_owner: int | None) -> Claim:
        """A share for `owner`, who may hold `per_owner` at once (None: no cap of its own)."""
        if (
            owner is not None
            and per_owner is not None
            and self._by_owner.get(owner, 0) >= per_owner
        ):
            raise self._owner_full(per_owner)
        if len(self._claims) >= self.total:
            raise self._full(self.total)
        claim = Claim(self, owner)
        self._claims.add(claim)
        if owner is not None:
            self._by_owner[owner] = self._by_owner.get(owner, 0) + 1
        return claim

    def _release(self, claim: Claim) -> None:
        if claim not in self._claims:
            return  # released twice: the second is a no-op
        self._claims.discard(claim)
        if claim.owner is not None:
            left = self._by_owner[claim.owner] - 1
            if left:
                self._by_owner[claim.owner] = left
            else:
                del self._by_owner[claim.owner]

    def keep_owners(self, active: Collection[str]) -> None:
        """End every claim whose owner is no longer among `active` (a revoked key)."""
        for claim in tuple(self._claims):
            if claim.owner is not None and claim.owner not in active:
                claim.ended.set()
