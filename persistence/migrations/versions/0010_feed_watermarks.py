"""Feed watermarks: per symbol, how far a venue feed is complete, and when it was ingesting.

- `feed_watermarks`: one row per symbol a venue feed writes. `last_trade_id` is the venue
  trade id up to which every trade is stored (where a new leader resumes), `complete_through`
  the time up to which every trade is stored (NULL: not known yet). Written in the same
  transaction as the trades it covers; read by the same statement that judges `closed`
  (`persistence.finality`). Symbols without a row (the synthetic walk) keep the clock rule.
- `ingestion_intervals`: each unbroken stretch [started_at, complete_through] during which a
  symbol's feed stored everything; a new stretch starts where history could not bridge a
  break (a first start, a venue that restarted its ids). `fill` marks the rest as gaps.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feed_watermarks",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("feed", sa.String(16), nullable=False),
        sa.Column("last_trade_id", sa.BigInteger(), nullable=False),
        sa.Column("complete_through", sa.DateTime(timezone=True), nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_feed_watermarks")),
    )
    op.create_table(
        "ingestion_intervals",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("feed", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("complete_through", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "started_at <= complete_through", name=op.f("ck_ingestion_intervals_ordered")
        ),
        sa.PrimaryKeyConstraint("symbol", "started_at", name=op.f("pk_ingestion_intervals")),
    )


def downgrade() -> None:
    op.drop_table("ingestion_intervals")
    op.drop_table("feed_watermarks")
