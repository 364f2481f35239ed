"""Alembic environment: runs on a connection handed over by `persistence.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from persistence.models import metadata
from persistence.partitions import include_name

# Any constant works; it only has to be the same for every instance of the service.
MIGRATION_LOCK_KEY = 7_262_023_001


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, include_name=include_name)
    with context.begin_transaction():
        # Two instances starting together: the second waits here, then finds nothing to do.
        # A transaction-level lock is released by the commit, whatever pool the connection is in.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "Run Alembic as `mdp alembic …` and migrations with `mdp migrate`: they supply the"
        " connection (DATABASE_URL, or the embedded PostgreSQL)."
    )
run_migrations(connection)
