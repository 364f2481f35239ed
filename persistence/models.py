"""Typed table definitions; the migrations in `migrations/` are the schema's source of truth."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    Sequence,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from persistence.finality import INTERVALS

__all__ = [
    "ApiKey",
    "ApiKeyChanges",
    "Base",
    "Candle",
    "CandleWatermark",
    "FeedWatermark",
    "IngestionInterval",
    "IngestionProgress",
    "LiveBatch",
    "Symbol",
    "Trade",
    "VWAP_SCALE",
    "metadata",
]

# Predictable constraint names, so migrations can refer to them.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Prices and sizes are exact decimals with every digit a venue gives (18 decimals, 20 integer
# digits: Arrow's decimal128(38, 18) in exports); the API promises them back as stored.
PRICE = Numeric(38, 18)
VOLUME = Numeric(38, 18)
# Decimals a vwap (Σ price × volume / Σ volume) is rounded to (half away from zero).
VWAP_SCALE = 12


class Base(DeclarativeBase):
    metadata = metadata


class Symbol(Base):
    __tablename__ = "symbols"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (CheckConstraint("symbol = upper(symbol)", name="symbol_upper"),)


_TRADE_ID = Sequence("trades_id_seq", data_type=BigInteger)


class Trade(Base):
    """Partitioned by RANGE (timestamp), a partition per UTC month (migration 0009): writers
    create the partitions their rows need first (`persistence.partitions`)."""

    __tablename__ = "trades"

    # A sequence, not an identity: identity columns on partitioned tables need PostgreSQL 17.
    # Every unique key of a partitioned table holds the partition column, the primary key too.
    id: Mapped[int] = mapped_column(
        BigInteger, _TRADE_ID, server_default=_TRADE_ID.next_value(), primary_key=True
    )
    # No foreign key to symbols: its per-row check halved bulk-load speed (migration 0003);
    # the writers (ingestion, backfill, import) create their symbols first.
    symbol: Mapped[str] = mapped_column(String(16))
    price: Mapped[Decimal] = mapped_column(PRICE)
    volume: Mapped[Decimal] = mapped_column(VOLUME)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    # The venue's own id of the trade; NULL for synthetic and backfilled trades.
    venue_trade_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The aggressor's side (`buy`: the buyer took the offer); NULL where unknown.
    side: Mapped[str | None] = mapped_column(Text, nullable=True)
    # TRUE for a trade a live batch stored (what streams send), NULL for history (backfill,
    # import): history takes ids from the same sequence while a batch is written, so a
    # batch's id range alone does not say which rows are its own (migration 0013).
    live: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    __table_args__ = (
        CheckConstraint("price > 0 AND price <> 'NaN'", name="price_positive"),
        CheckConstraint("volume > 0 AND volume <> 'NaN'", name="volume_positive"),
        CheckConstraint("side IN ('buy', 'sell')", name="side"),
        # One venue trade is stored once: writers insert ON CONFLICT DO NOTHING.
        Index(
            "uq_trades_symbol_venue_trade_id_timestamp",
            "symbol",
            "venue_trade_id",
            "timestamp",
            unique=True,
            postgresql_where=text("venue_trade_id IS NOT NULL"),
        ),
        # Every read is "one symbol, a time range, ordered by (timestamp, id)"; the INCLUDE
        # columns let latest-price, trade pages and candle aggregation run as index-only scans.
        Index(
            None,
            "symbol",
            "timestamp",
            "id",
            postgresql_include=["price", "volume"],
        ),
        {"postgresql_partition_by": 'RANGE ("timestamp")'},
    )


class Candle(Base):
    __tablename__ = "candles"

    symbol: Mapped[str] = mapped_column(
        String(16), ForeignKey("symbols.symbol", ondelete="CASCADE"), primary_key=True
    )
    interval: Mapped[str] = mapped_column(String(4), primary_key=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    open: Mapped[Decimal] = mapped_column(PRICE)
    high: Mapped[Decimal] = mapped_column(PRICE)
    low: Mapped[Decimal] = mapped_column(PRICE)
    close: Mapped[Decimal] = mapped_column(PRICE)
    volume: Mapped[Decimal] = mapped_column(VOLUME)
    # Rounded to VWAP_SCALE decimals; `notional` keeps the exact sum.
    vwap: Mapped[Decimal] = mapped_column(PRICE)
    trade_count: Mapped[int] = mapped_column(Integer)
    # Σ price × volume, exact: longer candles roll up from 1m ones with an exact vwap.
    notional: Mapped[Decimal] = mapped_column(Numeric())
    # 0 when materialised as final; +1 each time a late print changes it afterwards.
    revision: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (
        # The intervals the service knows (persistence.finality), and no other.
        CheckConstraint(
            f"interval IN ({', '.join(repr(name) for name in INTERVALS)})", name="interval"
        ),
    )


class CandleWatermark(Base):
    """How far a symbol's candles are materialised (persistence.finality); no row until the
    first writer sets it."""

    __tablename__ = "candle_watermarks"

    symbol: Mapped[str] = mapped_column(
        String(16), ForeignKey("symbols.symbol", ondelete="CASCADE"), primary_key=True
    )
    candles_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DroppedMonth(Base):
    """A month whose raw trades `TRADES_RETENTION` dropped (its candles stay): nothing is
    written into it again, as its candles could only be recomputed from what is left."""

    __tablename__ = "trades_dropped_months"

    month: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    dropped_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IngestionProgress(Base):
    """The `ingestion_state` row: the newest batch written (batches are idempotent and only
    move forward)."""

    __tablename__ = "ingestion_state"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    last_batch_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class ApiKey(Base):
    """An API key: only the SHA-256 of the key is stored; the key itself is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[bytes] = mapped_column(BYTEA)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # A token bucket of `rate_limit` requests refilled over `rate_window_seconds`.
    rate_limit: Mapped[int] = mapped_column(Integer)
    rate_window_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The key's own caps on concurrent exports and streams; NULL: the instance's settings
    # (EXPORT_MAX_PER_KEY, STREAM_MAX_PER_KEY).
    max_exports: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_streams: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (
        CheckConstraint("length(key_hash) = 32", name="key_hash_sha256"),
        CheckConstraint("max_exports >= 0", name="max_exports_not_negative"),
        CheckConstraint("max_streams >= 0", name="max_streams_not_negative"),
        CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'stream', 'export', 'ops']",
            name="known_scopes",
        ),
        CheckConstraint("rate_limit > 0", name="rate_limit_positive"),
        CheckConstraint("rate_window_seconds IN (1, 60, 3600)", name="rate_window"),
        CheckConstraint("length(name) BETWEEN 1 AND 100", name="name_length"),
    )


class ApiKeyChanges(Base):
    """One row: bumped by a trigger on every change to `api_keys` that instances must see."""

    __tablename__ = "api_key_changes"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class LiveBatch(Base):
    """A batch the ingestion leader wrote live: its trades (`trades.live`) have ids in range."""

    __tablename__ = "live_batches"

    stamped: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    first_id: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[int] = mapped_column(BigInteger)
    # Its trades carry `trades.live`; false for a batch a revision before migration 0013
    # wrote (during a deploy), whose trades are found by its stamp and venue ids instead.
    rows_marked: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))

    __table_args__ = (CheckConstraint("first_id <= last_id", name="id_range"),)


class FeedWatermark(Base):
    """How far a venue feed has stored a symbol (see migration 0010 and persistence.feeds)."""

    __tablename__ = "feed_watermarks"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    feed: Mapped[str] = mapped_column(String(16))
    last_trade_id: Mapped[int] = mapped_column(BigInteger)
    complete_through: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IngestionInterval(Base):
    """An unbroken stretch during which a venue feed stored every trade of a symbol."""

    __tablename__ = "ingestion_intervals"

    symbol: Mapped[str] = mapped_column(String(16), primary_key=True)
    feed: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    complete_through: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (CheckConstraint("started_at <= complete_through", name="ordered"),)
