"""Months whose raw trades retention dropped, so that nothing is written into them again.

A late print or an import into a month `TRADES_RETENTION` had dropped recreated its
partition and recomputed the candles of the buckets it touched from the trades left, none:
stored candles were overwritten by the new trades alone. Retention now records each month it
drops, and writers refuse (imports) or skip (venue prints) trades stamped in one. Months
dropped before this revision are found by their candles: a month with stored candles and no
partition had its trades dropped (a bucket has a candle only when it had trades).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trades_dropped_months",
        sa.Column("month", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "dropped_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("month", name=op.f("pk_trades_dropped_months")),
    )
    # Daily candles: a row per symbol and day, and a day never spans two months.
    op.execute(
        """
        INSERT INTO trades_dropped_months (month)
        SELECT DISTINCT date_trunc('month', timestamp, 'UTC')
        FROM candles
        WHERE interval = '1d'
          AND to_regclass('trades_' || to_char(timestamp AT TIME ZONE 'UTC', '"y"YYYY"m"MM'))
              IS NULL
        """
    )


def downgrade() -> None:
    op.drop_table("trades_dropped_months")
