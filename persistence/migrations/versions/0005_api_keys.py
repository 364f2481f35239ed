"""API keys: hashed secrets with scopes and a rate limit, plus a change counter.

Instances cache the keys in memory and poll `api_key_changes.version` (one row) to learn of a
new, changed or revoked key. A statement trigger bumps it, so any writer — the CLI or an
operator's own SQL — is seen; `last_used_at` is not a listed column, so the batched last-used
updates never make every instance reload. The bump takes a row lock, so versions are in
commit order and a poll can never see a newer version without the change that made it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = """
CREATE FUNCTION api_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api_key_changes (id, version) VALUES (1, 1)
    ON CONFLICT (id) DO UPDATE SET version = api_key_changes.version + 1;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_hash", postgresql.BYTEA(), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=False),
        sa.Column("rate_window_seconds", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("length(key_hash) = 32", name=op.f("ck_api_keys_key_hash_sha256")),
        sa.CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'stream', 'export', 'ops']",
            name=op.f("ck_api_keys_known_scopes"),
        ),
        sa.CheckConstraint("rate_limit > 0", name=op.f("ck_api_keys_rate_limit_positive")),
        sa.CheckConstraint(
            "rate_window_seconds IN (1, 60, 3600)", name=op.f("ck_api_keys_rate_window")
        ),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name=op.f("ck_api_keys_name_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_table(
        "api_key_changes",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_api_key_changes_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key_changes")),
    )
    op.execute("INSERT INTO api_key_changes (id, version) VALUES (1, 1)")
    op.execute(_BUMP)
    op.execute(
        "CREATE TRIGGER api_keys_changed AFTER INSERT OR DELETE OR TRUNCATE "
        "OR UPDATE OF id, name, key_hash, scopes, rate_limit, rate_window_seconds, revoked_at "
        "ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION api_keys_changed()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_keys_changed ON api_keys")
    op.execute("DROP FUNCTION api_keys_changed()")
    op.drop_table("api_key_changes")
    op.drop_table("api_keys")
