"""Typed service settings, read once from the environment (the only module that reads it).

Each setting is declared once, as a field of `Settings`: its variable, type, default, meaning and
parser. `Settings.from_env` and the README's table (`python -m mdp.settings --markdown`) are
derived from those declarations.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from access.apikeys import AUTH_MODES, AuthMode
from ingestion.sources import FEEDS, VENUES
from persistence.trades import LIVE_RETENTION

__all__ = [
    "DEFAULT_SYMBOLS",
    "DRAIN_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "Declared",
    "Settings",
    "SettingsError",
    "SymbolSpec",
    "declared",
    "markdown_table",
    "normalise_database_url",
]

T = TypeVar("T")

SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# How reads reach the database: directly, or through a pooler in transaction mode.
READ_POOLERS = ("none", "transaction")
_SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# Cloud Run sends SIGTERM and kills the instance this many seconds later. uvicorn drains requests
# in flight for up to DRAIN_SECONDS of it; the lifespan's shutdown has what is left.
SHUTDOWN_GRACE_SECONDS = 10
DRAIN_SECONDS = 7


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

# A parser gets the variable's name (for its error message) and its value, stripped, never empty.
Parse = Callable[[str, str], T]


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


# Parsers, one per kind of value.


def _text(name: str, raw: str) -> str:
    return raw


def _database_url(name: str, raw: str) -> URL:
    return normalise_database_url(raw, name)


def _path(name: str, raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def _bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


_DURATION = re.compile(r"^([0-9]+)\s*(d|h)$")
_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1)}


def _retention(name: str, raw: str) -> timedelta | None:
    if raw.lower() == "off":
        return None
    match = _DURATION.match(raw.lower())
    if match is None:
        raise SettingsError(f"{name} must be `off` or a duration such as 400d or 36h, got {raw!r}")
    value = int(match.group(1)) * _UNITS[match.group(2)]
    if value < timedelta(days=1):
        raise SettingsError(f"{name} must be at least a day (1d or 24h), got {raw!r}")
    return value


def _whole(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


def _int(minimum: int, maximum: int) -> Parse[int]:
    def parse(name: str, raw: str) -> int:
        value = _whole(name, raw)
        if not minimum <= value <= maximum:
            raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {raw!r}")
        return value

    return parse


def _float(minimum: float, maximum: float | None = None) -> Parse[float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
        if not value >= minimum or value == float("inf"):
            raise SettingsError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name} must be at most {maximum:g}, got {value:g}")
        return value

    return parse


def _choice(choices: tuple[str, ...], *, case: Callable[[str], str] = str.lower) -> Parse[str]:
    def parse(name: str, raw: str) -> str:
        value = case(raw)
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _url(*schemes: str) -> Parse[str]:
    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw)
        try:
            parts.port  # noqa: B018 - reading it is the check
        except ValueError:
            raise SettingsError(f"{name} has an invalid port, got {raw!r}") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise SettingsError(
                f"{name} must be a {' or '.join(schemes)} URL with a host, got {raw!r}"
            )
        return raw

    return parse


def _symbols(name: str, raw: str) -> tuple[SymbolSpec, ...]:
    defaults = {spec.symbol: spec for spec in DEFAULT_SYMBOLS}
    specs: dict[str, SymbolSpec] = {}
    for item in raw.split(","):
        code, _, label = item.strip().partition(":")
        code = code.strip()
        if not SYMBOL_PATTERN.match(code):
            raise SettingsError(
                f"{name} entries must match {SYMBOL_PATTERN.pattern} (optionally CODE:Name), "
                f"got {item.strip()!r}"
            )
        code = code.upper()
        known = defaults.get(code)
        specs[code] = SymbolSpec(
            code,
            label.strip() or (known.name if known else code),
            known.start_price if known else DEFAULT_START_PRICE,
        )
    return tuple(specs.values())


@dataclass(frozen=True, slots=True)
class Declared:
    """What the environment side of a setting is: its variable, parser and documentation."""

    env: str
    parse: Parse[Any]
    doc: str
    # The README's default column; None: the default itself, in backticks.
    shown: str | None = None
    # True: a variable set but empty means None (turns the thing off); else it means unset.
    empty_is_none: bool = False


# An origin as browsers send it: scheme, host and port only.
_ORIGIN = re.compile(r"^https?://[a-z0-9.-]+(?::\d{1,5})?$|^https?://\[[0-9a-f:.]+\](?::\d{1,5})?$")


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = [part.strip().rstrip("/").lower() for part in raw.split(",") if part.strip()]
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise SettingsError(
                f"{name}: {origin!r} is not an origin like https://dash.example.com:8443"
                " (scheme, host and port; no path, no `*`)"
            )
    return tuple(dict.fromkeys(origins))


def setting(
    env: str,
    default: T,
    parse: Parse[T],
    doc: str,
    *,
    shown: str | None = None,
    empty_is_none: bool = False,
    factory: Callable[[], T] | None = None,
) -> T:
    """Declare a field of `Settings`, read from the variable `env` by `parse`."""
    metadata = {"setting": Declared(env, parse, doc, shown, empty_is_none)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class Settings:
    # None means: start the embedded PostgreSQL under data_dir.
    database_url: URL | None = setting(
        "DATABASE_URL",
        None,
        _database_url,
        "`postgresql://user:pw@host:5432/db`; also `postgres://…`, `?sslmode=require`, and Cloud"
        " SQL's `postgresql://user:pw@/db?host=/cloudsql/PROJECT:REGION:INSTANCE`",
        shown="unset: embedded PostgreSQL",
    )
    host: str = setting("HOST", "127.0.0.1", _text, "bind address (`0.0.0.0` in a container)")
    port: int = setting("PORT", 8000, _int(1, 65535), "listen port (Cloud Run sets it)")
    log_level: str = setting(
        "LOG_LEVEL",
        "INFO",
        _choice(LOG_LEVELS, case=str.upper),
        "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`; logs are JSON lines unless stdout is"
        " a terminal",
    )
    database_read_url: URL | None = setting(
        "DATABASE_READ_URL",
        None,
        _database_url,
        "every read goes here: a read replica, or a pooler; same forms as `DATABASE_URL`."
        " Writes, migrations, leadership and ingestion stay on `DATABASE_URL`",
        shown="unset: reads use `DATABASE_URL`",
    )
    database_read_pooler: str = setting(
        "DATABASE_READ_POOLER",
        "none",
        _choice(READ_POOLERS),
        "`transaction` when `DATABASE_READ_URL` is a transaction-mode pooler (PgBouncer, Cloud"
        " SQL managed connection pooling): no prepared statements across transactions, no"
        " session settings at connect"
        " ([docs/deploy.md](docs/deploy.md#managed-connection-pooling-or-pgbouncer))",
    )
    db_pool_size: int = setting(
        "DB_POOL_SIZE",
        10,
        _int(1, 200),
        "read connections per instance (plus a write, a leader and a listener connection:"
        " [connection budget](docs/deploy.md#connection-budget))",
    )
    db_max_waiting: int = setting(
        "DB_MAX_WAITING",
        100,
        _int(0, 10_000),
        "requests that may wait for a read connection (in arrival order); beyond it, or when"
        " the wait would exceed half the connect timeout, a request is refused at once with"
        " `503 overloaded`",
    )
    db_connect_timeout_seconds: float = setting(
        "DB_CONNECT_TIMEOUT_SECONDS", 5.0, _float(0.1), "connect and pool-wait timeout"
    )
    db_query_timeout_seconds: float = setting(
        "DB_QUERY_TIMEOUT_SECONDS",
        10.0,
        _float(0.1),
        "per-statement timeout (client and server side)",
    )
    ingestion_enabled: bool = setting("INGESTION_ENABLED", True, _bool, "`false` serves reads only")
    ingestion_interval_seconds: float = setting(
        "INGESTION_INTERVAL_SECONDS",
        1.0,
        _float(0.01),
        "one batch per interval; fractions allowed; stale after 3 × interval",
    )
    ingestion_seed: int | None = setting(
        "INGESTION_SEED", None, _whole, "makes the random walk deterministic", shown="random"
    )
    ingestion_max_trades_per_symbol: int = setting(
        "INGESTION_MAX_TRADES_PER_SYMBOL",
        3,
        _int(1, 1000),
        "each batch prints 1..N trades per symbol",
    )
    symbols: tuple[SymbolSpec, ...] = setting(
        "SYMBOLS",
        DEFAULT_SYMBOLS,
        _symbols,
        "comma-separated `CODE` or `CODE:Name`; with a venue `FEED`, required: its products as"
        " it spells them (`BTC-USD` on Coinbase, `BTCUSDT` on Binance)",
        shown=f"`{','.join(spec.symbol for spec in DEFAULT_SYMBOLS)}` (synthetic only)",
    )
    feed: str = setting(
        "FEED",
        "synthetic",
        _choice(FEEDS),
        "where trades come from: `synthetic` (a random walk), or a venue's public market data:"
        " `coinbase` (Exchange `matches` channel), `binance` (Spot `<symbol>@trade`)",
    )
    feed_url: str | None = setting(
        "FEED_URL",
        None,
        _url("ws", "wss"),
        "the venue's WebSocket endpoint (a proxy, a regional endpoint, a test server)",
        shown="the venue's documented public one",
    )
    feed_rest_url: str | None = setting(
        "FEED_REST_URL",
        None,
        _url("http", "https"),
        "the venue's REST endpoint, for recovering gaps from its trade history",
        shown="the venue's documented public one",
    )
    feed_stall_seconds: float = setting(
        "FEED_STALL_SECONDS",
        10.0,
        _float(0.1),
        "a venue connection with no message and no heartbeat for this long is stalled:"
        " replaced, and the gap recovered",
    )
    feed_lateness_seconds: float = setting(
        "FEED_LATENESS_SECONDS",
        2.0,
        _float(0),
        "lateness allowance: a venue symbol is complete through the venue's clock less this",
    )
    feed_settlement_seconds: float = setting(
        "FEED_SETTLEMENT_SECONDS",
        3600.0,
        _float(0),
        "settlement horizon: a venue symbol's answers are cached as `immutable` only once they"
        " ended this long before its watermark (a late print may still revise a final candle)",
    )
    trades_retention: timedelta | None = setting(
        "TRADES_RETENTION",
        None,
        _retention,
        "raw trades older than this (`400d`, `36h`) are dropped by the ingestion leader, a whole "
        "month at a time once the month is past it and every trade in it is in a stored candle "
        "(a minute that never became final keeps its month: the last one of a venue symbol no "
        "longer fed, say); candles are kept for ever. `/trades` and `/export/trades` answer "
        "what is left. A month dropped takes no trade again (its candles could not be "
        "recomputed): `mdp import` refuses a file with trades in it, a venue print stamped in "
        "it is skipped and counted (`expired_total`)",
        shown="`off`",
    )
    stream_max_clients: int = setting(
        "STREAM_MAX_CLIENTS",
        2000,
        _int(0, 100_000),
        "open event streams per instance; beyond it `503` with `Retry-After`",
    )
    stream_queue_batches: int = setting(
        "STREAM_QUEUE_BATCHES",
        100,
        _int(1, 100_000),
        "batches buffered per stream; a client further behind gets `overflow` and is closed"
        " (only once its socket buffers, up to a few MB, are full too)",
    )
    stream_heartbeat_seconds: float = setting(
        "STREAM_HEARTBEAT_SECONDS",
        15.0,
        _float(0.1),
        "a comment line on idle streams, so proxies keep them open",
    )
    # Live batches are kept for LIVE_RETENTION: a longer replay could not be exact.
    stream_replay_seconds: float = setting(
        "STREAM_REPLAY_SECONDS",
        300.0,
        _float(0, LIVE_RETENTION.total_seconds()),
        "how old a `Last-Event-ID` may be and still be replayed exactly (at most"
        f" {LIVE_RETENTION.total_seconds():g})",
    )
    export_max_rows: int = setting(
        "EXPORT_MAX_ROWS",
        50_000_000,
        _int(1, 10**12),
        "larger exports are refused up front (`400 export_too_large`)",
    )
    export_max_days: int = setting(
        "EXPORT_MAX_DAYS", 366, _int(1, 100_000), "longer export windows are refused up front"
    )
    export_timeout_seconds: float = setting(
        "EXPORT_TIMEOUT_SECONDS",
        3600.0,
        _float(1.0),
        "an export still running after this is cut off (truncated)",
    )
    # Fair shares (README "Limits"): no client, key or slow reader takes the service away.
    export_max_concurrent: int = setting(
        "EXPORT_MAX_CONCURRENT",
        4,
        _int(0, 1000),
        "exports running at once per instance, each on a connection of its own, never one of"
        " `DB_POOL_SIZE`'s ([connection budget](docs/deploy.md#connection-budget)); beyond it"
        " `503 exports_at_capacity`",
    )
    export_max_per_key: int = setting(
        "EXPORT_MAX_PER_KEY",
        2,
        _int(0, 1000),
        "exports one API key may run at once per instance (`mdp keys caps` sets a key's own);"
        " beyond it `429 key_exports_at_capacity`",
    )
    stream_max_per_key: int = setting(
        "STREAM_MAX_PER_KEY",
        100,
        _int(0, 100_000),
        "streams one API key may hold open at once per instance (`mdp keys caps` sets a key's"
        " own); beyond it `429 key_streams_at_capacity`",
    )
    slow_client_seconds: float = setting(
        "SLOW_CLIENT_SECONDS",
        30.0,
        _float(0.1),
        "a stream or export whose client accepts no data for this long is cut off, freeing its"
        " slot",
    )
    http_max_url_bytes: int = setting(
        "HTTP_MAX_URL_BYTES",
        8192,
        _int(256, 2**20),
        "longest request target; beyond it `414` and the connection is closed",
    )
    http_max_head_bytes: int = setting(
        "HTTP_MAX_HEAD_BYTES",
        16384,
        _int(1024, 2**20),
        "largest request line and headers together; beyond it `431` and the connection is closed",
    )
    http_head_timeout_seconds: float = setting(
        "HTTP_HEAD_TIMEOUT_SECONDS",
        10.0,
        _float(0.1),
        "time for a request's line and headers to arrive, from the connection opening or the"
        " request's first byte; then `408` (or just the close)",
    )
    forwarded_allow_ips: str = setting(
        "FORWARDED_ALLOW_IPS",
        "127.0.0.1,::1,169.254.0.0/16",
        _text,
        "addresses or networks whose `X-Forwarded-*` headers are believed: loopback, and"
        " link-local, where Cloud Run's front end connects from"
        " ([docs/deploy.md](docs/deploy.md#limits-in-front-of-and-in-the-service))",
    )
    data_dir: Path = setting(
        "MDP_DATA_DIR",
        Path(".mdp"),
        _path,
        "where the embedded PostgreSQL keeps its data",
        shown="`./.mdp`",
        factory=lambda: Path.cwd() / ".mdp",
    )
    redoc_script_url: str = setting(
        "REDOC_SCRIPT_URL",
        "https://cdn.jsdelivr.net/npm/redoc@2.5.0/bundles/redoc.standalone.js",
        _text,
        "the `/redoc` page's script",
        shown="pinned ReDoc 2.5.0 on a CDN",
    )
    redoc_script_integrity: str | None = setting(
        "REDOC_SCRIPT_INTEGRITY",
        "sha384-4vOjrBu7SuDWXcAw1qFznVLA/sKL+0l4nn+J1HY8w7cpa6twQEYuh4b0Cwuo7CyX",
        _text,
        "subresource integrity; empty turns it off",
        shown="its SHA-384",
        # For a self-hosted script.
        empty_is_none=True,
    )
    # None: `required` with DATABASE_URL (real data), `off` on the embedded database.
    auth_mode: AuthMode | None = setting(
        "AUTH_MODE",
        None,
        cast(Parse[AuthMode], _choice(AUTH_MODES)),
        "`required`: data operations need an API key; `off`: open to anyone who reaches the port",
        shown="`required` with `DATABASE_URL`, else `off`",
    )
    cors_allow_origins: tuple[str, ...] = setting(
        "CORS_ALLOW_ORIGINS",
        (),
        _origins,
        "comma-separated origins (`https://dash.example.com`) whose pages may call the API"
        " (CORS); preflights need no key",
        shown="empty: no CORS",
    )
    gcp_project: str | None = setting(
        "GOOGLE_CLOUD_PROJECT",
        None,
        _text,
        "names the Cloud Trace resource in JSON logs (`logging.googleapis.com/trace`)",
        shown="unset",
    )

    @property
    def auth(self) -> AuthMode:
        if self.auth_mode is not None:
            return self.auth_mode
        return "required" if self.database_url is not None else "off"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, declaration in declared():
            raw = env.get(declaration.env)
            if raw is None:
                continue
            if raw.strip():
                values[name] = declaration.parse(declaration.env, raw.strip())
            elif declaration.empty_is_none:
                values[name] = None
        settings = cls(**values)
        settings._check_read_database()
        settings._check_feed(symbols_given="symbols" in values)
        return settings

    def _check_feed(self, *, symbols_given: bool) -> None:
        if self.feed == "synthetic":
            for name, value in (("FEED_URL", self.feed_url), ("FEED_REST_URL", self.feed_rest_url)):
                if value is not None:
                    raise SettingsError(f"{name} needs FEED to name a venue ({', '.join(VENUES)})")
            return
        if not symbols_given:
            raise SettingsError(f"SYMBOLS is required with FEED={self.feed}: the venue's products")
        pattern = VENUES[self.feed].product_pattern
        for spec in self.symbols:
            if not pattern.match(spec.symbol):
                # Syntax only: whether the venue lists it shows when subscribing (a feed state).
                raise SettingsError(
                    f"SYMBOLS entry {spec.symbol!r} is not a {self.feed} product name"
                    f" (as the venue spells it: {pattern.pattern})"
                )

    def _check_read_database(self) -> None:
        if self.database_read_url is not None and self.database_url is None:
            # The embedded server has no replica; a read URL beside it would split the data.
            raise SettingsError("DATABASE_READ_URL needs DATABASE_URL (the primary) to be set too")
        if self.database_read_pooler != "none" and self.database_read_url is None:
            # Leadership and migrations hold session state: they cannot go through the pooler.
            raise SettingsError(
                "DATABASE_READ_POOLER needs DATABASE_READ_URL: only reads may go through a pooler"
            )


def declared() -> list[tuple[str, Declared]]:
    """Each setting's field name and declaration, in declaration order."""
    return [(f.name, f.metadata["setting"]) for f in fields(Settings)]


def _shown_default(f: Field[Any]) -> str:
    value = f.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's table of settings, derived from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        declaration: Declared = f.metadata["setting"]
        shown = declaration.shown if declaration.shown is not None else _shown_default(f)
        rows.append(f"| `{declaration.env}` | {shown} | {declaration.doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m mdp.settings --markdown  (prints the README's settings table)")
    sys.stdout.write(markdown_table())
