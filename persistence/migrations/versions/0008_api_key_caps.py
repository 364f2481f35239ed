"""API keys get their own caps on concurrent exports and streams.

NULL keeps the instance's settings (EXPORT_MAX_PER_KEY, STREAM_MAX_PER_KEY). The change trigger
lists the columns instances must see change: it now names these two as well.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "id, name, key_hash, scopes, rate_limit, rate_window_seconds, revoked_at"


def _trigger(columns: str) -> None:
    op.execute("DROP TRIGGER api_keys_changed ON api_keys")
    op.execute(
        "CREATE TRIGGER api_keys_changed AFTER INSERT OR DELETE OR TRUNCATE "
        f"OR UPDATE OF {columns} "
        "ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION api_keys_changed()"
    )


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("max_exports", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("max_streams", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_api_keys_max_exports_not_negative"), "api_keys", "max_exports >= 0"
    )
    op.create_check_constraint(
        op.f("ck_api_keys_max_streams_not_negative"), "api_keys", "max_streams >= 0"
    )
    _trigger(f"{_COLUMNS}, max_exports, max_streams")


def downgrade() -> None:
    _trigger(_COLUMNS)
    op.drop_column("api_keys", "max_streams")
    op.drop_column("api_keys", "max_exports")
