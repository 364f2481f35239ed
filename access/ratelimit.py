"""Per-key token buckets, per instance, with the IETF RateLimit header fields.

Each instance keeps its own buckets in memory: with N instances behind the load balancer a key
may be served up to N times its limit in total. That is the documented trade: no shared store
on the request path. The service runs on one event loop, so a bucket needs no lock; taking a
token is a dict lookup and a few float operations.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

from access.apikeys import RateLimit

__all__ = ["RateLimiter", "headers", "reset_seconds", "retry_after"]

# draft-ietf-httpapi-ratelimit-headers-10: one quota policy, named after what it limits.
_POLICY = '"key"'
_POLICY_BYTES = _POLICY.encode()


@functools.cache
def _policy(limit: RateLimit) -> tuple[bytes, bytes]:
    # A handful of distinct limits: built once each, not per request.
    return b"ratelimit-policy", f"{_POLICY};q={limit.requests};w={limit.window_seconds}".encode()


def reset_seconds(limit: RateLimit, tokens: float) -> int:
    """Seconds until the bucket is full again (`t` of the RateLimit field)."""
    return math.ceil((limit.requests - tokens) * limit.window_seconds / limit.requests)


def retry_after(limit: RateLimit, tokens: float) -> int:
    """Seconds until the next request can pass, when this one could not."""
    return max(1, math.ceil((1.0 - tokens) * limit.window_seconds / limit.requests))


def headers(limit: RateLimit, tokens: float) -> list[tuple[bytes, bytes]]:
    state = b"%s;r=%d;t=%d" % (_POLICY_BYTES, tokens, reset_seconds(limit, tokens))
    return [_policy(limit), (b"ratelimit", state)]


class RateLimiter:
    """A bucket of `limit.requests` tokens per key, refilled evenly over `window_seconds`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # key id -> [tokens, time of last refill]
        self._buckets: dict[str, list[float]] = {}

    def take(self, key_id: str, limit: RateLimit) -> tuple[bool, float]:
        """Take a token if there is one: (taken, tokens left)."""
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = [float(limit.requests), now]
        refill = (now - bucket[1]) * limit.requests / limit.window_seconds
        tokens = min(float(limit.requests), bucket[0] + refill)
        bucket[1] = now
        taken = tokens >= 1.0
        if taken:
            tokens -= 1.0
        bucket[0] = tokens
        return taken, tokens
