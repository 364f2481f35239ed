"""Per-key token buckets and the IETF RateLimit fields they produce."""

from __future__ import annotations

from access.apikeys import RateLimit
from access.ratelimit import RateLimiter, headers, reset_seconds, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_allows_its_burst_then_refuses_until_a_token_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limit = RateLimit(3, 1)

    taken = [limiter.take("k", limit) for _ in range(4)]

    assert [ok for ok, _ in taken] == [True, True, True, False]
    assert [int(tokens) for _, tokens in taken] == [2, 1, 0, 0]
    assert retry_after(limit, taken[3][1]) == 1
    clock.now += 1 / 3
    assert limiter.take("k", limit)[0]
    assert not limiter.take("k", limit)[0]


def test_refill_never_exceeds_the_capacity() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limit = RateLimit(2, 60)
    limiter.take("k", limit)
    clock.now += 3600

    _, tokens = limiter.take("k", limit)

    assert tokens == 1
    assert reset_seconds(limit, tokens) == 30  # one token back at 2 per minute


def test_keys_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(Clock())
    limit = RateLimit(1, 1)
    assert limiter.take("a", limit)[0]
    assert not limiter.take("a", limit)[0]
    assert limiter.take("b", limit)[0]


def test_a_refused_request_takes_no_token_and_says_when_to_retry() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limit = RateLimit(1, 3600)
    limiter.take("k", limit)
    clock.now += 1800

    taken, tokens = limiter.take("k", limit)

    assert not taken
    assert retry_after(limit, tokens) == 1800
    clock.now += 1800
    assert limiter.take("k", limit)[0]


def test_headers_follow_the_ietf_draft() -> None:
    limit = RateLimit(50, 1)
    _, tokens = RateLimiter(Clock()).take("k", limit)
    assert dict(headers(limit, tokens)) == {
        b"ratelimit-policy": b'"key";q=50;w=1',
        b"ratelimit": b'"key";r=49;t=1',
    }
