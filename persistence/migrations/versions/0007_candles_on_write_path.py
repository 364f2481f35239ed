"""Candles on the write path: a materialisation watermark replaces the read path's coverage.

Reads no longer compute candles, so nothing records which ranges a read computed: the
ingestion leader and the backfill materialise final buckets, and `candles_until` says up to
where (see `persistence.finality`). NULL until the first writer sets it from the oldest trade;
the leader then catches up from there. Candles already stored are exact and stay.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSTZMULTIRANGE

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ingestion_state", sa.Column("candles_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.drop_table("candle_coverage")


def downgrade() -> None:
    # 0004's reads recompute what they need: an empty coverage is a correct one.
    op.create_table(
        "candle_coverage",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("interval", sa.String(4), nullable=False),
        sa.Column("covered", TSTZMULTIRANGE(), nullable=False),
        sa.ForeignKeyConstraint(
            ["symbol"],
            ["symbols.symbol"],
            name=op.f("fk_candle_coverage_symbol_symbols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("symbol", "interval", name=op.f("pk_candle_coverage")),
    )
    op.drop_column("ingestion_state", "candles_until")
