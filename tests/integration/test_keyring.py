"""The per-instance key ring against real PostgreSQL: reloads only on a change, batches uses."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from access.apikeys import RateLimit, create_key, hash_key, revoke
from access.keyring import KeyRing


async def test_refresh_reloads_only_when_a_key_changed(fresh_engine: AsyncEngine) -> None:
    ring = KeyRing()
    assert await ring.refresh(fresh_engine)
    assert ring.loaded and ring.active == 0

    assert not await ring.refresh(fresh_engine)
    row, key = await create_key(
        fresh_engine, name="ml", scopes=["read", "export"], rate_limit=RateLimit(600, 60)
    )
    assert await ring.refresh(fresh_engine)
    loaded = ring.get(row.id)
    assert loaded is not None
    assert loaded.key_hash == hash_key(key)
    assert loaded.scopes == {"read", "export"}
    assert loaded.limit == RateLimit(600, 60)
    assert not loaded.revoked

    await revoke(fresh_engine, row.id)
    assert await ring.refresh(fresh_engine)
    revoked = ring.get(row.id)
    assert revoked is not None and revoked.revoked
    assert ring.active == 0


async def test_uses_are_written_in_one_batch_without_making_instances_reload(
    fresh_engine: AsyncEngine,
) -> None:
    ring = KeyRing()
    first, _ = await create_key(fresh_engine, name="a", scopes=["read"], rate_limit=RateLimit(5, 1))
    second, _ = await create_key(fresh_engine, name="b", scopes=["ops"], rate_limit=RateLimit(5, 1))
    await ring.refresh(fresh_engine)

    for _ in range(100):
        ring.mark_used(first.id)
    ring.mark_used(second.id)
    await ring.flush_usage(fresh_engine)

    async with fresh_engine.connect() as conn:
        used = dict((await conn.execute(text("SELECT id, last_used_at FROM api_keys"))).all())
    assert used[first.id] is not None and used[second.id] is not None
    assert not await ring.refresh(fresh_engine)
