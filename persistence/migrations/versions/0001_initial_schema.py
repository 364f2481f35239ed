"""Initial schema: symbols, trades, candles.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "symbols",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("symbol = upper(symbol)", name=op.f("ck_symbols_symbol_upper")),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_symbols")),
    )
    op.create_table(
        "trades",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("price", sa.Numeric(18, 6), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("price > 0", name=op.f("ck_trades_price_positive")),
        sa.CheckConstraint("volume > 0", name=op.f("ck_trades_volume_positive")),
        sa.ForeignKeyConstraint(
            ["symbol"],
            ["symbols.symbol"],
            name=op.f("fk_trades_symbol_symbols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trades")),
    )
    op.create_index(
        op.f("ix_trades_symbol_timestamp_id"),
        "trades",
        ["symbol", "timestamp", "id"],
        postgresql_include=["price", "volume"],
    )
    op.create_table(
        "candles",
        sa.Column("symbol", sa.String(16), nullable=False),
        sa.Column("interval", sa.String(4), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open", sa.Numeric(18, 6), nullable=False),
        sa.Column("high", sa.Numeric(18, 6), nullable=False),
        sa.Column("low", sa.Numeric(18, 6), nullable=False),
        sa.Column("close", sa.Numeric(18, 6), nullable=False),
        sa.Column("volume", sa.BigInteger(), nullable=False),
        sa.Column("vwap", sa.Numeric(24, 6), nullable=False),
        sa.Column("trade_count", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "interval IN ('1m', '5m', '15m', '1h', '4h', '1d')", name=op.f("ck_candles_interval")
        ),
        sa.ForeignKeyConstraint(
            ["symbol"],
            ["symbols.symbol"],
            name=op.f("fk_candles_symbol_symbols"),
            ondelete="CASCADE",
        ),
        # The primary key is the unique (symbol, interval, timestamp) the upserts conflict on,
        # and the index every candle read walks.
        sa.PrimaryKeyConstraint("symbol", "interval", "timestamp", name=op.f("pk_candles")),
    )


def downgrade() -> None:
    op.drop_table("candles")
    op.drop_index(op.f("ix_trades_symbol_timestamp_id"), table_name="trades")
    op.drop_table("trades")
    op.drop_table("symbols")
