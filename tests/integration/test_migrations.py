"""Alembic migrations on a real, initially empty PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.finality import INTERVALS
from persistence.migrate import alembic_config, upgrade
from persistence.models import metadata
from persistence.partitions import include_name
from tests.support import MakeDatabase, dsn, open_test_engine, wait_until_async

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()

# (column, type, length or (precision, scale), nullable)
EXPECTED_COLUMNS: dict[str, list[tuple[str, str, Any, str]]] = {
    "symbols": [
        ("symbol", "character varying", 16, "NO"),
        ("name", "text", None, "NO"),
        ("created_at", "timestamp with time zone", None, "NO"),
    ],
    "trades": [
        ("id", "bigint", None, "NO"),
        ("symbol", "character varying", 16, "NO"),
        ("price", "numeric", (38, 18), "NO"),
        ("volume", "numeric", (38, 18), "NO"),
        ("timestamp", "timestamp with time zone", None, "NO"),
        ("venue_trade_id", "text", None, "YES"),
        ("side", "text", None, "YES"),
        ("live", "boolean", None, "YES"),
    ],
    "candles": [
        ("symbol", "character varying", 16, "NO"),
        ("interval", "character varying", 4, "NO"),
        ("timestamp", "timestamp with time zone", None, "NO"),
        ("open", "numeric", (38, 18), "NO"),
        ("high", "numeric", (38, 18), "NO"),
        ("low", "numeric", (38, 18), "NO"),
        ("close", "numeric", (38, 18), "NO"),
        ("volume", "numeric", (38, 18), "NO"),
        ("vwap", "numeric", (38, 18), "NO"),
        ("trade_count", "integer", None, "NO"),
        ("notional", "numeric", (None, None), "NO"),
        ("revision", "integer", None, "NO"),
    ],
    "ingestion_state": [
        ("id", "smallint", None, "NO"),
        ("last_batch_at", "timestamp with time zone", None, "NO"),
    ],
    "candle_watermarks": [
        ("symbol", "character varying", 16, "NO"),
        ("candles_until", "timestamp with time zone", None, "NO"),
    ],
    "live_batches": [
        ("stamped", "timestamp with time zone", None, "NO"),
        ("first_id", "bigint", None, "NO"),
        ("last_id", "bigint", None, "NO"),
        ("rows_marked", "boolean", None, "NO"),
    ],
    "api_keys": [
        ("id", "character varying", 16, "NO"),
        ("name", "text", None, "NO"),
        ("key_hash", "bytea", None, "NO"),
        ("scopes", "ARRAY", None, "NO"),
        ("rate_limit", "integer", None, "NO"),
        ("rate_window_seconds", "integer", None, "NO"),
        ("created_at", "timestamp with time zone", None, "NO"),
        ("revoked_at", "timestamp with time zone", None, "YES"),
        ("last_used_at", "timestamp with time zone", None, "YES"),
        ("max_exports", "integer", None, "YES"),
        ("max_streams", "integer", None, "YES"),
    ],
    "api_key_changes": [
        ("id", "smallint", None, "NO"),
        ("version", "bigint", None, "NO"),
    ],
    "feed_watermarks": [
        ("symbol", "character varying", 16, "NO"),
        ("feed", "character varying", 16, "NO"),
        ("last_trade_id", "bigint", None, "NO"),
        ("complete_through", "timestamp with time zone", None, "YES"),
        ("since", "timestamp with time zone", None, "NO"),
        ("updated_at", "timestamp with time zone", None, "NO"),
    ],
    "ingestion_intervals": [
        ("symbol", "character varying", 16, "NO"),
        ("feed", "character varying", 16, "NO"),
        ("started_at", "timestamp with time zone", None, "NO"),
        ("complete_through", "timestamp with time zone", None, "NO"),
    ],
    "trades_dropped_months": [
        ("month", "timestamp with time zone", None, "NO"),
        ("dropped_at", "timestamp with time zone", None, "NO"),
    ],
}

_COLUMNS = text(
    """
    SELECT column_name, data_type, character_maximum_length, numeric_precision,
           numeric_scale, is_nullable
    FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name = :table
    ORDER BY ordinal_position
    """
)

# Every index of a table: name, primary?, key columns in order, INCLUDE columns in order.
_INDEXES = text(
    """
    SELECT i.relname, x.indisprimary, x.indisunique,
           array(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 WHERE k.n <= x.indnkeyatts ORDER BY k.n) AS keys,
           array(SELECT a.attname FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 WHERE k.n > x.indnkeyatts ORDER BY k.n) AS included
    FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = CAST(:table AS regclass)
    ORDER BY i.relname
    """
)

_CONSTRAINTS = text(
    """
    SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid)
    FROM pg_constraint
    -- PostgreSQL 18 also catalogues NOT NULL as constraints ('n'); columns cover those.
    WHERE connamespace = 'public'::regnamespace AND contype <> 'n'
      -- Partitions repeat their parent's constraints.
      AND conrelid::regclass::text !~ '^trades_y[0-9]'
    ORDER BY 1, 2
    """
)


async def _columns(conn: Any, table: str) -> list[tuple[str, str, Any, str]]:
    rows = (await conn.execute(_COLUMNS, {"table": table})).all()
    shaped = []
    for name, data_type, length, precision, scale, nullable in rows:
        size = (precision, scale) if data_type == "numeric" else length
        shaped.append((name, data_type, size, nullable))
    return shaped


async def _schema(engine: AsyncEngine) -> dict[str, Any]:
    """Everything a migration could change, in a comparable form."""
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_name !~ '^trades_y[0-9]' "
                    "ORDER BY table_name"
                )
            )
        ).all()
        schema: dict[str, Any] = {"tables": [t for (t,) in tables]}
        for table in EXPECTED_COLUMNS:
            schema[f"{table}.columns"] = await _columns(conn, table)
            schema[f"{table}.indexes"] = (await conn.execute(_INDEXES, {"table": table})).all()
        schema["constraints"] = (await conn.execute(_CONSTRAINTS)).all()
        schema["versions"] = await _versions(conn)
        return schema


def _assert_head_schema(schema: dict[str, Any]) -> None:
    """Every table at head, each with exactly the expected columns."""
    assert schema["tables"] == ["alembic_version", *sorted(EXPECTED_COLUMNS)]
    for table, expected in EXPECTED_COLUMNS.items():
        assert schema[f"{table}.columns"] == expected, table


async def _versions(conn: Any) -> list[str]:
    return list((await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars())


async def test_upgrade_on_empty_database_creates_tables_with_expected_columns(
    empty_database: URL,
) -> None:
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        schema = await _schema(engine)
    finally:
        await engine.dispose()

    _assert_head_schema(schema)


async def test_upgrade_creates_trades_index_on_symbol_timestamp_id_covering_price_volume(
    empty_database: URL,
) -> None:
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            indexes = (await conn.execute(_INDEXES, {"table": "trades"})).all()
    finally:
        await engine.dispose()

    by_keys = {
        tuple(keys): (primary, unique, tuple(included))
        for _, primary, unique, keys, included in indexes
    }
    assert by_keys[("symbol", "timestamp", "id")] == (False, False, ("price", "volume"))
    assert by_keys[("id", "timestamp")] == (True, True, ())
    assert by_keys[("symbol", "venue_trade_id", "timestamp")] == (False, True, ())


async def test_upgrade_makes_symbol_interval_timestamp_the_candles_primary_key(
    empty_database: URL,
) -> None:
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            indexes = (await conn.execute(_INDEXES, {"table": "candles"})).all()
    finally:
        await engine.dispose()

    primary = [keys for _, is_primary, _, keys, _ in indexes if is_primary]
    assert primary == [["symbol", "interval", "timestamp"]]


async def test_upgrade_creates_foreign_keys_checks_and_id_sequence(empty_database: URL) -> None:
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        schema = await _schema(engine)
        async with engine.connect() as conn:
            id_default = (
                await conn.execute(
                    text(
                        "SELECT column_default FROM information_schema.columns "
                        "WHERE table_name = 'trades' AND column_name = 'id'"
                    )
                )
            ).scalar_one()
    finally:
        await engine.dispose()

    kinds = {(table, name): kind for table, name, kind, _ in schema["constraints"]}
    assert kinds == {
        ("api_key_changes", "ck_api_key_changes_single_row"): "c",
        ("api_key_changes", "pk_api_key_changes"): "p",
        ("api_keys", "ck_api_keys_key_hash_sha256"): "c",
        ("api_keys", "ck_api_keys_known_scopes"): "c",
        ("api_keys", "ck_api_keys_name_length"): "c",
        ("api_keys", "ck_api_keys_max_exports_not_negative"): "c",
        ("api_keys", "ck_api_keys_max_streams_not_negative"): "c",
        ("api_keys", "ck_api_keys_rate_limit_positive"): "c",
        ("api_keys", "ck_api_keys_rate_window"): "c",
        ("api_keys", "pk_api_keys"): "p",
        ("candles", "ck_candles_interval"): "c",
        ("candles", "fk_candles_symbol_symbols"): "f",
        ("candles", "pk_candles"): "p",
        ("candle_watermarks", "fk_candle_watermarks_symbol_symbols"): "f",
        ("candle_watermarks", "pk_candle_watermarks"): "p",
        ("feed_watermarks", "pk_feed_watermarks"): "p",
        ("ingestion_intervals", "ck_ingestion_intervals_ordered"): "c",
        ("ingestion_intervals", "pk_ingestion_intervals"): "p",
        ("ingestion_state", "ck_ingestion_state_single_row"): "c",
        ("ingestion_state", "pk_ingestion_state"): "p",
        ("live_batches", "ck_live_batches_id_range"): "c",
        ("live_batches", "pk_live_batches"): "p",
        ("symbols", "ck_symbols_symbol_upper"): "c",
        ("symbols", "pk_symbols"): "p",
        ("trades", "ck_trades_price_positive"): "c",
        ("trades", "ck_trades_side"): "c",
        ("trades", "ck_trades_volume_positive"): "c",
        ("trades", "pk_trades"): "p",
        ("trades_dropped_months", "pk_trades_dropped_months"): "p",
        ("alembic_version", "alembic_version_pkc"): "p",
    }
    definitions = {name: definition for _, name, _, definition in schema["constraints"]}
    assert definitions["fk_candles_symbol_symbols"] == (
        "FOREIGN KEY (symbol) REFERENCES symbols(symbol) ON DELETE CASCADE"
    )
    # Identity columns on partitioned tables need PostgreSQL 17: a sequence default instead.
    assert id_default == "nextval('trades_id_seq'::regclass)"


async def test_the_candles_interval_check_allows_exactly_the_intervals_the_service_knows(
    empty_database: URL,
) -> None:
    # Alembic's comparison of schema and models does not look at CHECK constraints.
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        schema = await _schema(engine)
    finally:
        await engine.dispose()

    definitions = {name: definition for _, name, _, definition in schema["constraints"]}
    assert set(re.findall(r"'(\w+)'", definitions["ck_candles_interval"])) == set(INTERVALS)


async def test_upgrade_records_head_revision_in_alembic_version(empty_database: URL) -> None:
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            versions = await _versions(conn)
    finally:
        await engine.dispose()

    assert HEAD is not None
    assert versions == [HEAD]


async def test_migrated_schema_matches_the_models(empty_database: URL) -> None:
    engine = open_test_engine(empty_database)

    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"include_name": include_name})
        return list(compare_metadata(context, metadata))

    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(differences)
    finally:
        await engine.dispose()

    assert diff == []


async def test_second_upgrade_is_a_no_op_and_keeps_data(empty_database: URL) -> None:
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO symbols (symbol, name) VALUES ('KEEP', 'Kept')"))
        before = await _schema(engine)

        await upgrade(engine)

        after = await _schema(engine)
        async with engine.connect() as conn:
            kept = (await conn.execute(text("SELECT symbol, name FROM symbols"))).all()
    finally:
        await engine.dispose()

    assert after == before
    assert [tuple(row) for row in kept] == [("KEEP", "Kept")]


async def test_concurrent_upgrades_in_one_process_both_succeed_with_one_head(
    make_database: MakeDatabase,
) -> None:
    # A few rounds: two upgrades started together must never both create the schema.
    for _ in range(3):
        url = await make_database(migrated=False)
        first, second = open_test_engine(url), open_test_engine(url)
        try:
            await asyncio.wait_for(asyncio.gather(upgrade(first), upgrade(second)), timeout=15)
            schema = await _schema(first)
        finally:
            await first.dispose()
            await second.dispose()

        assert schema["versions"] == [HEAD]
        _assert_head_schema(schema)


def _migration_lock_key() -> int:
    # env.py cannot be imported outside Alembic (it runs on import): read the constant.
    source = (files("persistence") / "migrations" / "env.py").read_text()
    match = re.search(r"^MIGRATION_LOCK_KEY = ([0-9_]+)$", source, re.MULTILINE)
    assert match is not None, "env.py no longer defines MIGRATION_LOCK_KEY"
    return int(match.group(1).replace("_", ""))


_WAITING_FOR_ADVISORY_LOCK = """
    SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND NOT granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def test_two_migrate_processes_serialise_on_advisory_lock_and_leave_one_head(
    empty_database: URL,
) -> None:
    # Two service instances are two processes: hold the migration lock until both are queued
    # behind it, so the run really overlaps, then let them race.
    dsn = empty_database.set(drivername="postgresql").render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": dsn}
    holder = await asyncpg.connect(dsn)
    processes = []
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", _migration_lock_key())
        for _ in range(2):
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "mdp.cli",
                    "migrate",
                    env=env,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
            )

        async def both_queued() -> bool:
            return await holder.fetchval(_WAITING_FOR_ADVISORY_LOCK) == 2

        await wait_until_async(both_queued, what="both migrations queued on the lock", timeout=30)
        await holder.execute("SELECT pg_advisory_unlock($1)", _migration_lock_key())
        outputs = [await asyncio.wait_for(p.communicate(), timeout=30) for p in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await holder.close()

    assert [p.returncode for p in processes] == [0, 0], [out for out, _ in outputs]
    engine = open_test_engine(empty_database)
    try:
        schema = await _schema(engine)
    finally:
        await engine.dispose()
    assert schema["versions"] == [HEAD]
    for table, expected in EXPECTED_COLUMNS.items():
        assert schema[f"{table}.columns"] == expected, table


async def test_months_retention_dropped_before_0014_are_recorded_by_their_candles(
    empty_database: URL,
) -> None:
    """A month with candles and no partition had its trades dropped by retention."""
    engine = open_test_engine(empty_database)
    try:
        await upgrade(engine, "0013")
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO symbols (symbol, name) VALUES ('OLD', 'Old')"))
            await conn.execute(
                text(
                    "SELECT mdp_ensure_trade_partitions("
                    "'2026-01-01T00:00:00Z', '2026-03-01T00:00:00Z')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO candles (symbol, interval, timestamp, open, high, low, close, "
                    "volume, notional, vwap, trade_count) "
                    "SELECT 'OLD', '1d', day, 1, 1, 1, 1, 1, 1, 1, 1 FROM unnest(CAST("
                    "'{2026-01-05T00:00:00Z,2026-01-20T00:00:00Z,2026-02-03T00:00:00Z,"
                    "2026-03-04T00:00:00Z}' AS timestamptz[])) AS day"
                )
            )
            # Retention dropped February (January stayed: a minute of it was not final).
            await conn.execute(text("ALTER TABLE trades DETACH PARTITION trades_y2026m02"))
            await conn.execute(text("DROP TABLE trades_y2026m02"))

        await upgrade(engine)

        async with engine.connect() as conn:
            months = (await conn.execute(text("SELECT month FROM trades_dropped_months"))).all()
    finally:
        await engine.dispose()
    assert months == [(datetime(2026, 2, 1, tzinfo=UTC),)]


async def test_trades_v2_keeps_every_row_and_id_of_a_populated_database(
    empty_database: URL,
) -> None:
    engine = open_test_engine(empty_database)
    rows = 3000
    try:
        await upgrade(engine, "0008")
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO symbols (symbol, name) VALUES ('OLD', 'Old')"))
            # Spread over three months, ids out of time order, as a backfill leaves them.
            await conn.execute(
                text(
                    "INSERT INTO trades (symbol, price, volume, timestamp) "
                    "SELECT 'OLD', 100 + n % 97 / 100.0, 1 + n % 13, "
                    "'2026-09-30T23:59:59.999999Z'::timestamptz - n * interval '43 minutes' "
                    "FROM generate_series(1, :rows) AS n"
                ),
                {"rows": rows},
            )
            before = (
                await conn.execute(
                    text("SELECT id, symbol, price, volume, timestamp FROM trades ORDER BY id")
                )
            ).all()

        await upgrade(engine)

        async with engine.begin() as conn:
            after = (
                await conn.execute(
                    text(
                        "SELECT id, symbol, price, volume, timestamp, venue_trade_id, side "
                        "FROM trades ORDER BY id"
                    )
                )
            ).all()
            partitions = (
                await conn.execute(
                    text(
                        "SELECT count(DISTINCT tableoid::regclass) FROM trades "
                        "WHERE tableoid <> 'trades'::regclass"
                    )
                )
            ).scalar_one()
            new_id = (
                await conn.execute(
                    text(
                        "INSERT INTO trades (symbol, price, volume, timestamp) "
                        "VALUES ('OLD', 1.123456789, 0.00012345, now()) RETURNING id"
                    )
                )
            ).scalar_one()
    finally:
        await engine.dispose()

    assert len(after) == rows
    assert [tuple(row[:5]) for row in after] == [tuple(row) for row in before]
    assert {(row.venue_trade_id, row.side) for row in after} == {(None, None)}
    # 3000 × 43 minutes back from the end of September: July, August and September.
    assert partitions == 3
    assert new_id == max(row.id for row in before) + 1


async def test_trades_refuse_one_venue_trade_twice_but_keep_trades_without_a_venue_id(
    empty_database: URL,
) -> None:
    engine = open_test_engine(empty_database)
    insert = text(
        "INSERT INTO trades (symbol, price, volume, timestamp, venue_trade_id, side) "
        "VALUES ('VEN', 10, 0.5, now(), :venue_id, 'buy') ON CONFLICT DO NOTHING"
    )
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            moment = (await conn.execute(text("SELECT now()"))).scalar_one()
            for venue_id in ("42", "42", None, None):
                await conn.execute(insert, {"venue_id": venue_id})
            stored = (
                await conn.execute(
                    text("SELECT venue_trade_id FROM trades WHERE timestamp = :t"), {"t": moment}
                )
            ).scalars()
            kept = sorted(stored, key=str)
    finally:
        await engine.dispose()

    assert kept == ["42", None, None]


async def _mdp_alembic(url: URL, *arguments: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mdp.cli",
        "alembic",
        *arguments,
        env={**os.environ, "DATABASE_URL": dsn(url), "LOG_LEVEL": "WARNING"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_alembic_commands_run_on_the_database_the_service_uses(
    empty_database: URL,
) -> None:
    # `mdp alembic` is Alembic's own command line with the service's connection, so that
    # `mdp alembic revision --autogenerate` (docs/architecture.md) compares against a real
    # database; `check` is the same comparison without writing a file (and refuses a
    # database that is not at head).
    assert await _mdp_alembic(empty_database, "upgrade", "head") == (0, "")
    code, output = await _mdp_alembic(empty_database, "check")
    assert (code, output.strip()) == (0, "No new upgrade operations detected.")
