"""Trades v2: partitioned by month, exact decimal prices and sizes, venue trade ids and sides.

One rewrite of `trades` for two needs (issues 21 and 22):
- real venues print fractional sizes and prices with more than 6 decimals: `price` and
  `volume` become numeric(38, 18) (every venue's digits: 18 decimals hold even ERC-20 base
  units; 20 integer digits; the same as Arrow's decimal128(38, 18) in exports), and the
  candles follow, the vwap rounded to 12 decimals where it is computed;
- history for years: `trades` becomes a table partitioned by RANGE (timestamp), one partition
  per UTC month, so old raw trades can be detached and dropped while their candles stay.
  No default partition: `DETACH ... CONCURRENTLY` cannot run beside one. Writers create the
  partitions they need first, with `mdp_ensure_trade_partitions(lo, hi)` defined here.
- `venue_trade_id` and `side` (the aggressor's) for venue trades; a unique key on (symbol,
  venue_trade_id, timestamp), the partition column included as PostgreSQL requires, makes
  storing one venue trade twice impossible. Trades without a venue id (synthetic, backfill)
  are not in it, so they cost that index nothing.

The id keeps its values and comes from a plain sequence: identity columns on partitioned
tables need PostgreSQL 17, and CI also runs 15. The primary key is (id, timestamp) for the
same reason (every unique key of a partitioned table holds the partition column).

The rows are copied into the new table before its indexes exist (one index build per
partition afterwards is much cheaper than maintaining them row by row).
Measured: 3,000,000 rows over four months migrate in 7 s (PostgreSQL 15, two shared
cores, `mdp migrate`); 30,000,000 rows over 36 months in 232 s on the same two cores while
other work kept them busy (`bench.plans`, bench/plans/README.md). It takes an exclusive lock
on `trades` for that long: plan on a few minutes without writes at 30M rows.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DECIMAL = "numeric(38, 18)"
_CANDLE_DECIMALS = ("open", "high", "low", "close", "volume", "vwap")

# How far ahead of the newest trade (or now) the migration creates partitions; the
# ingestion leader keeps them ahead from then on.
_AHEAD = "interval '3 months'"

# One partition per UTC month, named trades_yYYYYmMM. Created standalone and then attached:
# ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on `trades`, so reads and writes go on
# (CREATE TABLE ... PARTITION OF would lock them out). Creation is serialised by an advisory
# lock, so concurrent writers never race on one month; the lock and the attach are held until
# the caller's transaction ends, so long writers ensure partitions in a transaction of their own.
_ENSURE_PARTITIONS = """
CREATE FUNCTION mdp_ensure_trade_partitions(lo timestamptz, hi timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month timestamp := date_trunc('month', lo AT TIME ZONE 'UTC');
    part text;
    created integer := 0;
BEGIN
    WHILE month AT TIME ZONE 'UTC' <= hi LOOP
        part := 'trades_' || to_char(month, '"y"YYYY"m"MM');
        IF to_regclass(part) IS NULL THEN
            -- Only a writer that has to create one waits for the others.
            PERFORM pg_advisory_xact_lock(hashtext('mdp.trade_partitions'));
        END IF;
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I (LIKE trades INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part
            );
            EXECUTE format(
                'ALTER TABLE trades ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                part, month AT TIME ZONE 'UTC', (month + interval '1 month') AT TIME ZONE 'UTC'
            );
            created := created + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN created;
END
$$
"""

# Numeric also takes 'NaN' (it sorts above every number): positive and not NaN.
_POSITIVE = "{column} > 0 AND {column} <> 'NaN'"


def upgrade() -> None:
    # The old table steps aside; its index names would collide with the new ones.
    op.execute("ALTER TABLE trades RENAME TO trades_v1")
    op.execute("ALTER TABLE trades_v1 RENAME CONSTRAINT pk_trades TO pk_trades_v1")
    op.execute("ALTER INDEX ix_trades_symbol_timestamp_id RENAME TO ix_trades_v1_symbol")
    op.execute("ALTER SEQUENCE trades_id_seq RENAME TO trades_v1_id_seq")

    op.execute("CREATE SEQUENCE trades_id_seq AS bigint")
    op.execute(
        f"""
        CREATE TABLE trades (
            id bigint NOT NULL DEFAULT nextval('trades_id_seq'),
            symbol varchar(16) NOT NULL,
            price {_DECIMAL} NOT NULL,
            volume {_DECIMAL} NOT NULL,
            "timestamp" timestamptz NOT NULL,
            venue_trade_id text,
            side text,
            CONSTRAINT ck_trades_price_positive CHECK ({_POSITIVE.format(column="price")}),
            CONSTRAINT ck_trades_volume_positive CHECK ({_POSITIVE.format(column="volume")}),
            CONSTRAINT ck_trades_side CHECK (side IN ('buy', 'sell'))
        ) PARTITION BY RANGE ("timestamp")
        """
    )
    op.execute("ALTER SEQUENCE trades_id_seq OWNED BY trades.id")
    op.execute(_ENSURE_PARTITIONS)
    op.execute(
        f"""
        SELECT mdp_ensure_trade_partitions(
            coalesce(min("timestamp"), now()), greatest(max("timestamp"), now()) + {_AHEAD}
        ) FROM trades_v1
        """
    )
    op.execute(
        """
        INSERT INTO trades (id, symbol, price, volume, "timestamp")
        SELECT id, symbol, price, volume, "timestamp" FROM trades_v1
        """
    )
    op.execute("SELECT setval('trades_id_seq', max(id)) FROM trades_v1 HAVING count(*) > 0")
    op.execute("DROP TABLE trades_v1")

    op.execute('ALTER TABLE trades ADD CONSTRAINT pk_trades PRIMARY KEY (id, "timestamp")')
    op.execute(
        """
        CREATE INDEX ix_trades_symbol_timestamp_id ON trades (symbol, "timestamp", id)
        INCLUDE (price, volume)
        """
    )
    op.execute(
        """
        CREATE UNIQUE INDEX uq_trades_symbol_venue_trade_id_timestamp
        ON trades (symbol, venue_trade_id, "timestamp") WHERE venue_trade_id IS NOT NULL
        """
    )

    # Candles follow: exact prices, sizes and sums; the vwap is rounded where it is computed.
    op.execute(
        f"""
        ALTER TABLE candles
            {", ".join(f"ALTER COLUMN {c} TYPE {_DECIMAL}" for c in _CANDLE_DECIMALS)}
        """
    )


def downgrade() -> None:
    # Back to one heap with 0001's types: prices round to 6 decimals, sizes to whole units;
    # venue ids and sides are lost.
    op.execute(
        """
        ALTER TABLE candles
            ALTER COLUMN open TYPE numeric(18, 6), ALTER COLUMN high TYPE numeric(18, 6),
            ALTER COLUMN low TYPE numeric(18, 6), ALTER COLUMN close TYPE numeric(18, 6),
            ALTER COLUMN volume TYPE bigint, ALTER COLUMN vwap TYPE numeric(24, 6)
        """
    )
    op.execute("ALTER TABLE trades RENAME TO trades_v2")
    op.execute("ALTER TABLE trades_v2 RENAME CONSTRAINT pk_trades TO pk_trades_v2")
    op.execute("ALTER INDEX ix_trades_symbol_timestamp_id RENAME TO ix_trades_v2_symbol")
    op.execute("ALTER INDEX uq_trades_symbol_venue_trade_id_timestamp RENAME TO uq_trades_v2")
    op.execute("ALTER SEQUENCE trades_id_seq RENAME TO trades_v2_id_seq")
    op.execute(
        """
        CREATE TABLE trades (
            id bigint GENERATED ALWAYS AS IDENTITY,
            symbol varchar(16) NOT NULL,
            price numeric(18, 6) NOT NULL,
            volume bigint NOT NULL,
            "timestamp" timestamptz NOT NULL,
            CONSTRAINT ck_trades_price_positive CHECK (price > 0),
            CONSTRAINT ck_trades_volume_positive CHECK (volume > 0),
            CONSTRAINT pk_trades PRIMARY KEY (id)
        )
        """
    )
    op.execute(
        """
        INSERT INTO trades (id, symbol, price, volume, "timestamp") OVERRIDING SYSTEM VALUE
        SELECT id, symbol, price, greatest(round(volume), 1), "timestamp" FROM trades_v2
        """
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('trades', 'id'), max(id)) FROM trades "
        "HAVING count(*) > 0"
    )
    op.execute(
        """
        CREATE INDEX ix_trades_symbol_timestamp_id ON trades (symbol, "timestamp", id)
        INCLUDE (price, volume)
        """
    )
    op.execute("DROP TABLE trades_v2")
    op.execute("DROP FUNCTION mdp_ensure_trade_partitions(timestamptz, timestamptz)")
