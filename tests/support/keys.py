"""Real API keys for harnesses that serve with AUTH_MODE=required (the default with a
database URL): made by the code `mdp keys create` runs, before the service starts."""

from __future__ import annotations

import asyncio
import concurrent.futures

from sqlalchemy.engine import URL

from access.apikeys import SCOPES, RateLimit, create_key
from tests.support.database import migrate, open_test_engine

__all__ = ["TEST_RATE_LIMIT", "provision_key", "provision_key_now"]

# Test clients send many requests quickly: far above any limit a test does not set itself.
TEST_RATE_LIMIT = RateLimit(1_000_000, 1)


async def provision_key(
    url: URL,
    *,
    scopes: tuple[str, ...] = SCOPES,
    name: str = "tests",
    rate_limit: RateLimit = TEST_RATE_LIMIT,
) -> str:
    """A new key on `url` (migrated to head first)."""
    await migrate(url)
    engine = open_test_engine(url)
    try:
        _, key = await create_key(engine, name=name, scopes=scopes, rate_limit=rate_limit)
    finally:
        await engine.dispose()
    return key


def provision_key_now(url: URL, *, rate_limit: RateLimit = TEST_RATE_LIMIT) -> str:
    """`provision_key` from synchronous code, whether or not an event loop runs there (some
    callers are async tests): on a thread and loop of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, provision_key(url, rate_limit=rate_limit)).result()
