"""`mdp keys create|list|revoke` as an operator runs them, on a private database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from access.apikeys import RateLimit, create_key, key_id_of, revoke
from persistence.api_keys import key_version, record_last_used
from tests.support import open_test_engine

ROOT = Path(__file__).resolve().parents[2]


class Outcome(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


async def mdp_keys(url: URL, *args: str) -> Outcome:
    env = {
        **{name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ},
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "LOG_LEVEL": "INFO",
    }
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "mdp.cli", "keys", *args),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Outcome(process.returncode, stdout.decode(), stderr.decode())


def audit_records(stderr: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
    return [line["audit"] for line in lines if line["logger"] == "mdp.audit"]


async def test_create_prints_the_key_alone_once_and_stores_only_its_hash(
    empty_database: URL,
) -> None:
    created = await mdp_keys(
        empty_database, "create", "--name", "analytics-ml", "--scopes", "read,stream,export"
    )

    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == f"{key}\n"
    key_id = key_id_of(key)
    assert key_id is not None
    assert "shown only this once" in created.stderr
    assert key not in created.stderr
    [record] = audit_records(created.stderr)
    assert record["event"] == "key_created"
    assert record["key_id"] == key_id
    assert record["key_name"] == "analytics-ml"
    engine = open_test_engine(empty_database)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT * FROM api_keys"))).mappings().one()
            dump = (await conn.execute(text("SELECT api_keys::text FROM api_keys"))).scalar()
    finally:
        await engine.dispose()
    assert row["id"] == key_id
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert row["scopes"] == ["read", "stream", "export"]
    assert (row["rate_limit"], row["rate_window_seconds"]) == (50, 1)
    secret = key.split("_", 2)[2]
    assert secret not in str(dump)


async def test_list_shows_every_key_without_a_secret_and_revoke_marks_it(
    empty_database: URL,
) -> None:
    first = (
        await mdp_keys(
            empty_database, "create", "--name", "ml", "--scopes", "read", "--rate-limit", "600/min"
        )
    ).stdout.strip()
    second = (await mdp_keys(empty_database, "create", "--name", "ops", "--scopes", "ops")).stdout
    second = second.strip()

    revoked = await mdp_keys(empty_database, "revoke", str(key_id_of(first)))
    listed = await mdp_keys(empty_database, "list")

    assert revoked.returncode == 0, revoked.stderr
    assert [r["event"] for r in audit_records(revoked.stderr)] == ["key_revoked"]
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == (
        "ID NAME SCOPES RATE LIMIT EXPORTS STREAMS CREATED LAST USED REVOKED".split()
    )
    by_id = {row.split()[0]: row.split() for row in rows}
    ml, ops = by_id[str(key_id_of(first))], by_id[str(key_id_of(second))]
    assert ml[1:6] == ["ml", "read", "600/min", "default", "default"]
    assert ml[7] == "-" and ml[8] != "-"  # never used, revoked
    assert ops[1:4] == ["ops", "ops", "50/s"]
    assert ops[8] == "-"
    for key in (first, second):
        assert key.split("_", 2)[2] not in listed.stdout + listed.stderr


async def test_revoke_of_an_unknown_id_fails_and_bad_arguments_exit_2(empty_database: URL) -> None:
    unknown = await mdp_keys(empty_database, "revoke", "0123456789ab")
    bad_scope = await mdp_keys(empty_database, "create", "--name", "x", "--scopes", "admin")
    bad_limit = await mdp_keys(
        empty_database, "create", "--name", "x", "--scopes", "read", "--rate-limit", "5/day"
    )

    assert unknown.returncode == 1
    assert "no key with id '0123456789ab'" in unknown.stderr
    assert bad_scope.returncode == 2 and "scopes must be" in bad_scope.stderr
    assert bad_limit.returncode == 2 and "rate limit must" in bad_limit.stderr


async def test_key_changes_bump_the_version_and_last_used_writes_do_not(
    fresh_engine: AsyncEngine,
) -> None:
    async with fresh_engine.connect() as conn:
        before = await key_version(conn)
    row, _ = await create_key(fresh_engine, name="x", scopes=["read"], rate_limit=RateLimit(5, 1))
    async with fresh_engine.connect() as conn:
        after_create = await key_version(conn)
    async with fresh_engine.begin() as conn:
        await record_last_used(conn, {row.id: datetime.now(UTC)})
    async with fresh_engine.connect() as conn:
        after_use = await key_version(conn)
        used = (await conn.execute(text("SELECT last_used_at FROM api_keys"))).scalar()
    await revoke(fresh_engine, row.id)
    async with fresh_engine.connect() as conn:
        after_revoke = await key_version(conn)

    assert before is not None and after_create is not None and after_revoke is not None
    assert after_create > before
    assert after_use == after_create
    assert used is not None
    assert after_revoke > after_create


async def test_a_key_gets_caps_of_its_own_and_back_to_the_settings(
    empty_database: URL,
) -> None:
    key = (
        await mdp_keys(
            empty_database, "create", "--name", "etl", "--scopes", "export", "--max-exports", "3"
        )
    ).stdout.strip()
    key_id = str(key_id_of(key))

    changed = await mdp_keys(
        empty_database, "caps", key_id, "--max-exports", "default", "--max-streams", "0"
    )
    listed = await mdp_keys(empty_database, "list")
    unknown = await mdp_keys(empty_database, "caps", "0123456789ab", "--max-exports", "1")
    bad = await mdp_keys(empty_database, "caps", key_id, "--max-exports", "-1")

    assert changed.returncode == 0, changed.stderr
    assert [r["event"] for r in audit_records(changed.stderr)] == ["key_caps_set"]
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert row[4:6] == ["default", "0"]
    assert unknown.returncode == 1 and "no key with id" in unknown.stderr
    assert bad.returncode == 2
