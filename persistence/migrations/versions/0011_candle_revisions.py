"""Candle revisions: how many times a final candle was changed after it was materialised.

A late print (a venue trade for a bucket already materialised as final) revises the candle in
the transaction that stores it (`persistence.materialise`); `revision` tells consumers it did.
Existing rows start at 0: nothing recorded a revision before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "candles",
        sa.Column("revision", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("candles", "revision")
