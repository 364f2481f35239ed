"""Candle watermarks per symbol: each symbol's candles are materialised as far as it is final.

One global `ingestion_state.candles_until` held every symbol back to the slowest feed: a
quiet or down venue symbol stopped all symbols' candles, and a late print into a bucket that
was final for its own symbol (but not for the slowest one) was not counted as a revision.
`candle_watermarks.candles_until` is the same watermark per symbol: every 1m bucket of the
symbol starting before it, and every longer bucket ending at or before it, is in `candles`.
Each symbol starts where the global one stood (the same promise held for every symbol).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "candle_watermarks",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("candles_until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["symbol"],
            ["symbols.symbol"],
            name=op.f("fk_candle_watermarks_symbol_symbols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_candle_watermarks")),
    )
    op.execute(
        """
        INSERT INTO candle_watermarks (symbol, candles_until)
        SELECT s.symbol, i.candles_until
        FROM symbols AS s, ingestion_state AS i
        WHERE i.id = 1 AND i.candles_until IS NOT NULL
        """
    )
    op.drop_column("ingestion_state", "candles_until")


def downgrade() -> None:
    op.add_column(
        "ingestion_state", sa.Column("candles_until", sa.DateTime(timezone=True), nullable=True)
    )
    # The global watermark holds for every symbol only up to the slowest one.
    op.execute(
        """
        UPDATE ingestion_state
        SET candles_until = (SELECT min(candles_until) FROM candle_watermarks)
        WHERE id = 1
        """
    )
    op.drop_table("candle_watermarks")
