"""Typed service settings, read once from the environment (the only module that reads it)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "DEFAULT_SYMBOLS",
    "AuthMode",
    "Settings",
    "SettingsError",
    "SymbolSpec",
    "normalise_database_url",
]

SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
AuthMode = Literal["required", "off"]
AUTH_MODES: tuple[AuthMode, ...] = ("required", "off")


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    symbol: str
    name: str
    start_price: float


DEFAULT_SYMBOLS: tuple[SymbolSpec, ...] = (
    SymbolSpec("AAPL", "Apple Inc.", 190.00),
    SymbolSpec("GOOGL", "Alphabet Inc. Class A", 140.00),
    SymbolSpec("MSFT", "Microsoft Corporation", 410.00),
    SymbolSpec("TSLA", "Tesla, Inc.", 240.00),
    SymbolSpec("AMZN", "Amazon.com, Inc.", 180.00),
)
# Symbols named in SYMBOLS that are not defaults start their walk here.
DEFAULT_START_PRICE = 100.00

# How reads reach the database: directly, or through a pooler in transaction mode.
READ_POOLERS = ("none", "transaction")

_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}


def normalise_database_url(raw: str, name: str = "DATABASE_URL") -> URL:
    """Turn the URL forms users paste (postgres://, sslmode=, Cloud SQL socket) into asyncpg's;
    errors name the variable `name`."""
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        # SQLAlchemy raises a bare ValueError for e.g. a non-numeric port.
        raise SettingsError(f"{name} is not a valid database URL: {exc}") from None
    if url.port is not None and not 1 <= url.port <= 65535:
        raise SettingsError(f"{name} has an invalid port {url.port}")
    if url.drivername not in {"postgres", "postgresql", "postgresql+asyncpg"}:
        raise SettingsError(
            f"{name} must be a postgresql:// URL (asyncpg driver), got {url.drivername!r}"
        )
    if not url.database:
        raise SettingsError(f"{name} must name a database (…/dbname)")
    query = dict(url.query)
    # libpq spells TLS as sslmode; asyncpg takes the same words as `ssl`.
    sslmode = query.pop("sslmode", None)
    if sslmode is not None:
        if sslmode not in _SSL_MODES:
            raise SettingsError(f"{name} has an unknown sslmode {sslmode!r}")
        query["ssl"] = sslmode
    host = query.get("host")
    if isinstance(host, tuple):
        raise SettingsError(f"{name} names more than one host")
    if url.host is None and host is None:
        raise SettingsError(f"{name} needs a host, or ?host=/socket/dir for a Unix socket")
    return url.set(drivername="postgresql+asyncpg", query=query)


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise SettingsError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _replay_seconds(env: Mapping[str, str], default: float) -> float:
    value = _float(env, "STREAM_REPLAY_SECONDS", default, minimum=0)
    if value > 3600:
        # Live batches are kept for an hour: a longer replay could not be exact.
        raise SettingsError(f"STREAM_REPLAY_SECONDS must be at most 3600, got {value:g}")
    return value


def _symbols(raw: str | None) -> tuple[SymbolSpec, ...]:
    if raw is None or raw.strip() == "":
        return DEFAULT_SYMBOLS
    defaults = {spec.symbol: spec for spec in DEFAULT_SYMBOLS}
    specs: dict[str, SymbolSpec] = {}
    for item in raw.split(","):
        code, _, name = item.strip().partition(":")
        code = code.strip()
        if not SYMBOL_PATTERN.match(code):
            raise SettingsError(
                f"SYMBOLS entries must match {SYMBOL_PATTERN.pattern} (optionally CODE:Name), "
                f"got {item.strip()!r}"
            )
        code = code.upper()
        known = defaults.get(code)
        specs[code] = SymbolSpec(
            code,
            name.strip() or (known.name if known else code),
            known.start_price if known else DEFAULT_START_PRICE,
        )
    return tuple(specs.values())


def _read_database(env: Mapping[str, str], raw_url: str) -> tuple[URL | None, str]:
    raw = env.get("DATABASE_READ_URL", "").strip()
    pooler = env.get("DATABASE_READ_POOLER", "").strip().lower() or "none"
    if pooler not in READ_POOLERS:
        raise SettingsError(
            f"DATABASE_READ_POOLER must be one of {', '.join(READ_POOLERS)}, got {pooler!r}"
        )
    if raw and not raw_url:
        # The embedded server has no replica; a read URL beside it would split the data.
        raise SettingsError("DATABASE_READ_URL needs DATABASE_URL (the primary) to be set too")
    if pooler != "none" and not raw:
        # Leadership and migrations hold session state: they cannot go through the pooler.
        raise SettingsError(
            "DATABASE_READ_POOLER needs DATABASE_READ_URL: only reads may go through a pooler"
        )
    return (normalise_database_url(raw, "DATABASE_READ_URL") if raw else None), pooler


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    # None means: start the embedded PostgreSQL under data_dir.
    database_url: URL | None = None
    # Every read goes here when set (a read replica, or a pooler); the rest stays on database_url.
    database_read_url: URL | None = None
    # "transaction": database_read_url is a transaction-mode pooler (PgBouncer, Cloud SQL managed
    # connection pooling), so reads use no server-side prepared statement across transactions.
    database_read_pooler: str = "none"
    data_dir: Path = field(default_factory=lambda: Path.cwd() / ".mdp")
    db_pool_size: int = 10
    # Requests that may queue for a read connection before new ones are refused (503).
    db_max_waiting: int = 100
    db_connect_timeout_seconds: float = 5.0
    db_query_timeout_seconds: float = 10.0
    ingestion_enabled: bool = True
    ingestion_interval_seconds: float = 1.0
    ingestion_seed: int | None = None
    ingestion_max_trades_per_symbol: int = 3
    symbols: tuple[SymbolSpec, ...] = DEFAULT_SYMBOLS
    # Server-Sent Event streams: at most this many per instance (503 beyond), each with a
    # queue of this many batches (a client further behind is sent `overflow` and closed).
    stream_max_clients: int = 2000
    stream_queue_batches: int = 100
    stream_heartbeat_seconds: float = 15.0
    # How far back a Last-Event-ID may resume (older gets a `reset` event); at most 1 hour,
    # the time live batches are kept.
    stream_replay_seconds: float = 300.0
    # Bulk exports: larger windows are refused up front; a longer export is cut off.
    export_max_rows: int = 50_000_000
    export_max_days: int = 366
    export_timeout_seconds: float = 3600.0
    # Fair shares: exports run on connections of their own (never the interactive read pool's),
    # at most this many per instance (503 beyond); per API key, at most this many exports and
    # streams at once (429 beyond), unless `mdp keys` gives the key its own caps.
    export_max_concurrent: int = 4
    export_max_per_key: int = 2
    stream_max_per_key: int = 100
    # A stream or export whose client has accepted no data for this long is closed.
    slow_client_seconds: float = 30.0
    # The request line and headers: at most this many bytes (414/431 beyond), arriving within
    # this many seconds of the first byte (or of the connection opening), else it is closed.
    http_max_url_bytes: int = 8192
    http_max_head_bytes: int = 16384
    http_head_timeout_seconds: float = 10.0
    # Whose X-Forwarded-* headers are believed (addresses or networks, or `*`): loopback and
    # link-local, where Cloud Run's front end connects from (docs/deploy.md).
    forwarded_allow_ips: str = "127.0.0.1,::1,169.254.0.0/16"
    # None: `required` with DATABASE_URL (real data), `off` on the embedded database.
    auth_mode: AuthMode | None = None
    # Names the Cloud Trace resource in JSON logs, so Cloud Logging groups a request's lines.
    gcp_project: str | None = None
    redoc_script_url: str = "https://cdn.jsdelivr.net/npm/redoc@2.5.0/bundles/redoc.standalone.js"
    redoc_script_integrity: str | None = (
        "sha384-4vOjrBu7SuDWXcAw1qFznVLA/sKL+0l4nn+J1HY8w7cpa6twQEYuh4b0Cwuo7CyX"
    )

    @property
    def auth(self) -> AuthMode:
        if self.auth_mode is not None:
            return self.auth_mode
        return "required" if self.database_url is not None else "off"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()
        raw_url = env.get("DATABASE_URL", "").strip()
        level = env.get("LOG_LEVEL", "INFO").strip().upper()
        if level not in LOG_LEVELS:
            raise SettingsError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        seed_raw = env.get("INGESTION_SEED", "").strip()
        try:
            seed = int(seed_raw) if seed_raw else None
        except ValueError:
            raise SettingsError(
                f"INGESTION_SEED must be a whole number, got {seed_raw!r}"
            ) from None
        read_url, pooler = _read_database(env, raw_url)
        data_dir = env.get("MDP_DATA_DIR", "").strip()
        auth_mode = env.get("AUTH_MODE", "").strip().lower() or None
        if auth_mode is not None and auth_mode not in AUTH_MODES:
            raise SettingsError(f"AUTH_MODE must be required or off, got {auth_mode!r}")
        integrity = env.get("REDOC_SCRIPT_INTEGRITY")
        return cls(
            host=env.get("HOST", "").strip() or defaults.host,
            port=_int(env, "PORT", defaults.port, minimum=1, maximum=65535),
            log_level=level,
            database_url=normalise_database_url(raw_url) if raw_url else None,
            database_read_url=read_url,
            database_read_pooler=pooler,
            data_dir=Path(data_dir).expanduser().resolve() if data_dir else Path.cwd() / ".mdp",
            db_pool_size=_int(env, "DB_POOL_SIZE", defaults.db_pool_size, minimum=1, maximum=200),
            db_max_waiting=_int(
                env, "DB_MAX_WAITING", defaults.db_max_waiting, minimum=0, maximum=10_000
            ),
            db_connect_timeout_seconds=_float(
                env, "DB_CONNECT_TIMEOUT_SECONDS", defaults.db_connect_timeout_seconds, minimum=0.1
            ),
            db_query_timeout_seconds=_float(
                env, "DB_QUERY_TIMEOUT_SECONDS", defaults.db_query_timeout_seconds, minimum=0.1
            ),
            ingestion_enabled=_bool(env, "INGESTION_ENABLED", defaults.ingestion_enabled),
            ingestion_interval_seconds=_float(
                env, "INGESTION_INTERVAL_SECONDS", defaults.ingestion_interval_seconds, minimum=0.01
            ),
            ingestion_seed=seed,
            ingestion_max_trades_per_symbol=_int(
                env,
                "INGESTION_MAX_TRADES_PER_SYMBOL",
                defaults.ingestion_max_trades_per_symbol,
                minimum=1,
                maximum=1000,
            ),
            symbols=_symbols(env.get("SYMBOLS")),
            stream_max_clients=_int(
                env, "STREAM_MAX_CLIENTS", defaults.stream_max_clients, minimum=0, maximum=100_000
            ),
            stream_queue_batches=_int(
                env,
                "STREAM_QUEUE_BATCHES",
                defaults.stream_queue_batches,
                minimum=1,
                maximum=100_000,
            ),
            stream_heartbeat_seconds=_float(
                env, "STREAM_HEARTBEAT_SECONDS", defaults.stream_heartbeat_seconds, minimum=0.1
            ),
            stream_replay_seconds=_replay_seconds(env, defaults.stream_replay_seconds),
            export_max_rows=_int(
                env, "EXPORT_MAX_ROWS", defaults.export_max_rows, minimum=1, maximum=10**12
            ),
            export_max_days=_int(
                env, "EXPORT_MAX_DAYS", defaults.export_max_days, minimum=1, maximum=100_000
            ),
            export_timeout_seconds=_float(
                env, "EXPORT_TIMEOUT_SECONDS", defaults.export_timeout_seconds, minimum=1.0
            ),
            export_max_concurrent=_int(
                env,
                "EXPORT_MAX_CONCURRENT",
                defaults.export_max_concurrent,
                minimum=0,
                maximum=1000,
            ),
            export_max_per_key=_int(
                env, "EXPORT_MAX_PER_KEY", defaults.export_max_per_key, minimum=0, maximum=1000
            ),
            stream_max_per_key=_int(
                env, "STREAM_MAX_PER_KEY", defaults.stream_max_per_key, minimum=0, maximum=100_000
            ),
            slow_client_seconds=_float(
                env, "SLOW_CLIENT_SECONDS", defaults.slow_client_seconds, minimum=0.1
            ),
            http_max_url_bytes=_int(
                env, "HTTP_MAX_URL_BYTES", defaults.http_max_url_bytes, minimum=256, maximum=2**20
            ),
            http_max_head_bytes=_int(
                env,
                "HTTP_MAX_HEAD_BYTES",
                defaults.http_max_head_bytes,
                minimum=1024,
                maximum=2**20,
            ),
            http_head_timeout_seconds=_float(
                env, "HTTP_HEAD_TIMEOUT_SECONDS", defaults.http_head_timeout_seconds, minimum=0.1
            ),
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "").strip()
            or defaults.forwarded_allow_ips,
            auth_mode=auth_mode,
            gcp_project=env.get("GOOGLE_CLOUD_PROJECT", "").strip() or None,
            redoc_script_url=env.get("REDOC_SCRIPT_URL", "").strip() or defaults.redoc_script_url,
            # An explicitly empty integrity turns the check off (for a self-hosted script).
            redoc_script_integrity=(
                defaults.redoc_script_integrity
                if integrity is None
                else (integrity.strip() or None)
            ),
        )
