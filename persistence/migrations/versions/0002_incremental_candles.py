"""Incremental candles: exact notional per candle, and coverage of computed final buckets.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSTZMULTIRANGE

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Candles are derived data: drop what 0001 stored and let requests recompute it with
    # the new column, rather than back-filling notionals from trades here.
    op.execute("DELETE FROM candles")
    # Σ price × volume, exact: longer candles roll up from 1m ones with an exact vwap.
    op.add_column("candles", sa.Column("notional", sa.Numeric(), nullable=False))
    op.create_table(
        "candle_coverage",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("interval", sa.String(4), nullable=False),
        # The bucket-start ranges whose final candles are all in `candles` (a bucket without
        # trades has no row: coverage is what tells "computed, empty" from "not computed").
        sa.Column("covered", TSTZMULTIRANGE(), nullable=False),
        sa.ForeignKeyConstraint(
            ["symbol"],
            ["symbols.symbol"],
            name=op.f("fk_candle_coverage_symbol_symbols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("symbol", "interval", name=op.f("pk_candle_coverage")),
    )


def downgrade() -> None:
    op.drop_table("candle_coverage")
    op.drop_column("candles", "notional")
