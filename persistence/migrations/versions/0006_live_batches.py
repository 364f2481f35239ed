"""Live batches: which trades the ingestion leader wrote live, kept for a bounded time.

Streams replay what a client missed from here: a live batch is exactly the trades whose
timestamp is the batch's stamp and whose id lies in [first_id, last_id]. Backfill writes
old-timestamped trades with new ids and no row here, so a replay can never pick them up.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "live_batches",
        sa.Column("stamped", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("first_id <= last_id", name=op.f("ck_live_batches_id_range")),
        sa.PrimaryKeyConstraint("stamped", name=op.f("pk_live_batches")),
    )


def downgrade() -> None:
    op.drop_table("live_batches")
