"""Ingestion state: the newest batch written, which makes batch writes idempotent.

A batch is written only if its timestamp is newer than the last one (and only by the holder
of the leader lock): a retried or raced batch can never be stored twice, and batch
timestamps in `trades` only ever increase.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingestion_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("last_batch_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ingestion_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingestion_state")),
    )
    op.execute(
        "INSERT INTO ingestion_state (id, last_batch_at) "
        "SELECT 1, coalesce(max(timestamp), '-infinity') FROM trades"
    )


def downgrade() -> None:
    op.drop_table("ingestion_state")
