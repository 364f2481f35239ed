"""Settings: the database URL forms users paste, defaults, and errors that name the variable."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from mdp.settings import (
    DEFAULT_SYMBOLS,
    Settings,
    SettingsError,
    SymbolSpec,
    declared,
    markdown_table,
    normalise_database_url,
)
from persistence.trades import LIVE_RETENTION

CLOUD_SQL_SOCKET = "/cloudsql/my-project:europe-west1:market-db"


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://mdp:secret@db.internal:5432/market",
        "postgres://mdp:secret@db.internal:5432/market",
        "postgresql+asyncpg://mdp:secret@db.internal:5432/market",
        "  postgresql://mdp:secret@db.internal:5432/market\n",
    ],
)
def test_database_url_forms_become_asyncpg_urls(raw: str) -> None:
    url = normalise_database_url(raw)
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password) == ("mdp", "secret")
    assert (url.host, url.port, url.database) == ("db.internal", 5432, "market")
    assert dict(url.query) == {}


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_database_url_sslmode_becomes_asyncpg_ssl(mode: str) -> None:
    url = normalise_database_url(f"postgresql://mdp:secret@db.internal/market?sslmode={mode}")
    assert dict(url.query) == {"ssl": mode}


def test_database_url_keeps_other_query_options_beside_ssl() -> None:
    url = normalise_database_url(
        "postgres://mdp:secret@db.internal/market?sslmode=require&application_name=x"
    )
    assert dict(url.query) == {"ssl": "require", "application_name": "x"}


def test_database_url_rejects_an_unknown_sslmode() -> None:
    with pytest.raises(SettingsError, match=r"DATABASE_URL.*sslmode.*'sometimes'"):
        normalise_database_url("postgresql://mdp:secret@db.internal/market?sslmode=sometimes")


def test_database_url_keeps_a_cloud_sql_socket_as_the_host_query() -> None:
    url = normalise_database_url(f"postgresql://mdp:secret@/market?host={CLOUD_SQL_SOCKET}")
    assert url.drivername == "postgresql+asyncpg"
    assert url.host is None
    assert url.database == "market"
    assert dict(url.query) == {"host": CLOUD_SQL_SOCKET}


@pytest.mark.parametrize(
    ("encoded", "password"),
    [
        ("p%40ss%3Aw%2Frd%25", "p@ss:w/rd%"),
        ("%3F%23%5B%5D%20%2B%26", "?#[] +&"),
        ("%C3%A9t%C3%A9", "été"),
    ],
)
def test_database_url_password_with_special_characters_survives(
    encoded: str, password: str
) -> None:
    url = normalise_database_url(f"postgresql://mdp:{encoded}@db.internal:5432/market")
    assert url.password == password
    # The URL is rendered back to a string for asyncpg and tools: the password must round-trip.
    rendered = url.render_as_string(hide_password=False)
    assert make_url(rendered).password == password
    assert normalise_database_url(rendered) == url


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://mdp:secret@db.internal:3306/market",
        "postgresql+psycopg2://mdp:secret@db.internal/market",
        "sqlite:///market.db",
        "postgresql://mdp:secret@db.internal:5432",
        "postgresql://mdp:secret@db.internal:5432/",
        "postgresql://mdp:secret@/market",
        "postgresql:///market",
        f"postgresql:///market?host={CLOUD_SQL_SOCKET}&host=/tmp",
        "not a url",
        "",
        "://",
    ],
)
def test_database_url_rejects_what_asyncpg_cannot_use(raw: str) -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        normalise_database_url(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://mdp:secret@db.internal:abc/market",
        "postgresql://mdp:secret@[::1/market",
    ],
)
def test_database_url_with_an_unparseable_port_is_a_settings_error(raw: str) -> None:
    # Fails today: SQLAlchemy's make_url raises a bare ValueError from int(port), which
    # normalise_database_url does not catch (it only catches ArgumentError).
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        normalise_database_url(raw)


def test_settings_defaults_when_nothing_is_set() -> None:
    settings = Settings.from_env({})
    assert settings.port == 8000
    assert settings.host == "127.0.0.1"
    assert settings.log_level == "INFO"
    assert settings.database_url is None
    assert settings.ingestion_enabled is True
    assert settings.ingestion_interval_seconds == 1.0
    assert settings.ingestion_seed is None
    assert settings.ingestion_max_trades_per_symbol == 3
    assert settings.symbols == DEFAULT_SYMBOLS
    assert [(s.symbol, s.name) for s in settings.symbols] == [
        ("AAPL", "Apple Inc."),
        ("GOOGL", "Alphabet Inc. Class A"),
        ("MSFT", "Microsoft Corporation"),
        ("TSLA", "Tesla, Inc."),
        ("AMZN", "Amazon.com, Inc."),
    ]


def test_settings_treat_empty_values_as_unset() -> None:
    empty = {
        name: ""
        for name in (
            "PORT",
            "HOST",
            "DATABASE_URL",
            "INGESTION_ENABLED",
            "INGESTION_INTERVAL_SECONDS",
            "INGESTION_SEED",
            "SYMBOLS",
        )
    }
    assert Settings.from_env(empty) == Settings.from_env({})


def test_settings_read_every_value_that_is_set() -> None:
    settings = Settings.from_env(
        {
            "HOST": "0.0.0.0",
            "PORT": "8080",
            "LOG_LEVEL": "debug",
            "DATABASE_URL": "postgres://mdp:secret@db.internal/market?sslmode=require",
            "INGESTION_ENABLED": "false",
            "INGESTION_SEED": "42",
            "INGESTION_MAX_TRADES_PER_SYMBOL": "7",
        }
    )
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 8080, "DEBUG")
    assert settings.database_url == normalise_database_url(
        "postgresql+asyncpg://mdp:secret@db.internal/market?ssl=require"
    )
    assert settings.ingestion_enabled is False
    assert settings.ingestion_seed == 42
    assert settings.ingestion_max_trades_per_symbol == 7


@pytest.mark.parametrize(("raw", "expected"), [("0.25", 0.25), ("0.01", 0.01), ("2.5", 2.5)])
def test_settings_accept_a_fractional_ingestion_interval(raw: str, expected: float) -> None:
    settings = Settings.from_env({"INGESTION_INTERVAL_SECONDS": raw})
    assert settings.ingestion_interval_seconds == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" On ", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_settings_read_ingestion_enabled_as_a_boolean(raw: str, expected: bool) -> None:
    assert Settings.from_env({"INGESTION_ENABLED": raw}).ingestion_enabled is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "0"),
        ("PORT", "80.5"),
        ("INGESTION_INTERVAL_SECONDS", "0"),
        ("INGESTION_INTERVAL_SECONDS", "-1"),
        ("INGESTION_INTERVAL_SECONDS", "0.001"),
        ("INGESTION_INTERVAL_SECONDS", "nan"),
        ("INGESTION_INTERVAL_SECONDS", "inf"),
        ("INGESTION_INTERVAL_SECONDS", "1e400"),
        ("INGESTION_INTERVAL_SECONDS", "soon"),
        ("INGESTION_ENABLED", "maybe"),
        ("LOG_LEVEL", "LOUD"),
        ("INGESTION_SEED", "lucky"),
        ("INGESTION_MAX_TRADES_PER_SYMBOL", "0"),
        ("DB_POOL_SIZE", "0"),
        ("DB_CONNECT_TIMEOUT_SECONDS", "nan"),
        ("SYMBOLS", "AAPL,NOT A CODE"),
        ("SYMBOLS", "AAPL,A/B"),
        ("SYMBOLS", "AAPL,,MSFT"),
        ("SYMBOLS", "ABCDEFGHIJKLMNOPQ"),
        ("SYMBOLS", ":Nameless"),
        ("DATABASE_URL", "mysql://mdp:secret@db.internal/market"),
        ("AUTH_MODE", "optional"),
        ("CORS_ALLOW_ORIGINS", "*"),
        ("CORS_ALLOW_ORIGINS", "https://dash.example.com/app"),
        ("CORS_ALLOW_ORIGINS", "dash.example.com"),
        ("CORS_ALLOW_ORIGINS", "ftp://dash.example.com"),
        ("TRADES_RETENTION", "400"),
        ("TRADES_RETENTION", "1y"),
        ("TRADES_RETENTION", "12h"),
        ("TRADES_RETENTION", "-3d"),
    ],
)
def test_settings_reject_a_bad_value_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=name) as caught:
        Settings.from_env({name: raw})
    assert str(caught.value).startswith(name)


def test_symbols_are_upper_cased_keeping_known_names_and_custom_ones() -> None:
    settings = Settings.from_env({"SYMBOLS": "aapl,xyz:Xyz Corp"})
    assert settings.symbols == (
        SymbolSpec("AAPL", "Apple Inc.", 190.00),
        SymbolSpec("XYZ", "Xyz Corp", 100.00),
    )


def test_symbols_custom_name_overrides_the_known_one() -> None:
    settings = Settings.from_env({"SYMBOLS": " msft : Microsoft , new"})
    assert settings.symbols == (
        SymbolSpec("MSFT", "Microsoft", 410.00),
        SymbolSpec("NEW", "NEW", 100.00),
    )


def test_symbols_named_twice_appear_once() -> None:
    settings = Settings.from_env({"SYMBOLS": "TSLA,tsla:Tesla Motors"})
    assert settings.symbols == (SymbolSpec("TSLA", "Tesla Motors", 240.00),)


PRIMARY = "postgresql://mdp:secret@primary.internal/market"


def test_read_url_takes_the_same_forms_as_database_url() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": PRIMARY,
            "DATABASE_READ_URL": f"postgres://mdp:secret@/market?host={CLOUD_SQL_SOCKET}-replica",
        }
    )

    assert settings.database_read_url is not None
    assert settings.database_read_url.drivername == "postgresql+asyncpg"
    assert dict(settings.database_read_url.query) == {"host": f"{CLOUD_SQL_SOCKET}-replica"}
    assert settings.database_read_pooler == "none"


def test_read_url_defaults_to_none_and_reads_go_to_the_one_database() -> None:
    settings = Settings.from_env({"DATABASE_URL": PRIMARY})

    assert settings.database_read_url is None
    assert settings.database_read_pooler == "none"


def test_read_pooler_transaction_is_read() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": PRIMARY,
            "DATABASE_READ_URL": "postgresql://mdp:secret@pooler.internal:6432/market",
            "DATABASE_READ_POOLER": " Transaction ",
        }
    )

    assert settings.database_read_pooler == "transaction"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DATABASE_URL": PRIMARY, "DATABASE_READ_URL": "mysql://mdp@replica/market"},
            r"DATABASE_READ_URL must be a postgresql:// URL",
        ),
        (
            {"DATABASE_URL": PRIMARY, "DATABASE_READ_URL": "postgresql://mdp@replica"},
            r"DATABASE_READ_URL must name a database",
        ),
        (
            {"DATABASE_READ_URL": "postgresql://mdp@replica/market"},
            r"DATABASE_READ_URL needs DATABASE_URL",
        ),
        (
            {"DATABASE_URL": PRIMARY, "DATABASE_READ_POOLER": "transaction"},
            r"DATABASE_READ_POOLER needs DATABASE_READ_URL",
        ),
        (
            {
                "DATABASE_URL": PRIMARY,
                "DATABASE_READ_URL": "postgresql://mdp@replica/market",
                "DATABASE_READ_POOLER": "statement",
            },
            r"DATABASE_READ_POOLER must be one of none, transaction, got 'statement'",
        ),
    ],
    ids=["driver", "no-database", "no-primary", "pooler-without-read-url", "unknown-pooler"],
)
def test_read_database_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "off"),
        ({"DATABASE_URL": "postgresql://db/market"}, "required"),
        ({"DATABASE_URL": "postgresql://db/market", "AUTH_MODE": "off"}, "off"),
        ({"AUTH_MODE": "Required"}, "required"),
        ({"AUTH_MODE": " "}, "off"),
    ],
)
def test_auth_is_required_with_a_database_url_and_off_on_the_embedded_one(
    env: dict[str, str], expected: str
) -> None:
    assert Settings.from_env(env).auth == expected


README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_settings_table_is_the_one_the_declarations_print() -> None:
    text = README.read_text()
    begin = text.index("\n", text.index("<!-- settings table")) + 1
    end = text.index("<!-- end of settings table -->")
    assert text[begin:end] == markdown_table(), (
        "README.md's settings table drifted: paste `python -m mdp.settings --markdown` over it"
    )


def test_every_settings_field_is_read_from_a_variable_of_its_own() -> None:
    variables = [declaration.env for _, declaration in declared()]
    assert len(variables) == len(fields(Settings))
    assert len(set(variables)) == len(variables)


def test_stream_replay_is_bounded_by_how_long_live_batches_are_kept() -> None:
    kept = LIVE_RETENTION.total_seconds()
    assert Settings.from_env({"STREAM_REPLAY_SECONDS": f"{kept:g}"}).stream_replay_seconds == kept
    with pytest.raises(SettingsError, match=r"^STREAM_REPLAY_SECONDS must be at most 3600, got"):
        Settings.from_env({"STREAM_REPLAY_SECONDS": f"{kept + 1:g}"})


def test_an_empty_redoc_integrity_turns_the_check_off() -> None:
    assert Settings.from_env({"REDOC_SCRIPT_INTEGRITY": ""}).redoc_script_integrity is None
    assert Settings.from_env({}).redoc_script_integrity == Settings().redoc_script_integrity


def test_a_venue_feed_takes_its_products_and_the_documented_endpoints_by_default() -> None:
    settings = Settings.from_env({"FEED": "Coinbase", "SYMBOLS": "BTC-USD,eth-usd"})
    assert settings.feed == "coinbase"
    assert [spec.symbol for spec in settings.symbols] == ["BTC-USD", "ETH-USD"]
    assert (settings.feed_url, settings.feed_rest_url) == (None, None)
    binance = Settings.from_env(
        {"FEED": "binance", "SYMBOLS": "BTCUSDT", "FEED_URL": "ws://127.0.0.1:9000"}
    )
    assert binance.feed_url == "ws://127.0.0.1:9000"
    assert Settings.from_env({}).feed == "synthetic"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"FEED": "kraken", "SYMBOLS": "XBTUSD"}, "FEED"),
        ({"FEED": "coinbase"}, "SYMBOLS"),
        ({"FEED": "coinbase", "SYMBOLS": "BTCUSD"}, "SYMBOLS"),
        ({"FEED": "binance", "SYMBOLS": "BTC-USDT"}, "SYMBOLS"),
        ({"FEED": "coinbase", "SYMBOLS": "BTC-USD", "FEED_URL": "https://ws-feed"}, "FEED_URL"),
        ({"FEED": "coinbase", "SYMBOLS": "BTC-USD", "FEED_URL": "wss://"}, "FEED_URL"),
        ({"FEED": "coinbase", "SYMBOLS": "BTC-USD", "FEED_URL": "ws://h:99999"}, "FEED_URL"),
        ({"FEED": "binance", "SYMBOLS": "BTCUSDT", "FEED_REST_URL": "ws://api"}, "FEED_REST_URL"),
        ({"FEED_URL": "wss://ws-feed.exchange.coinbase.com"}, "FEED_URL"),
        ({"FEED": "binance", "SYMBOLS": "BTCUSDT", "FEED_STALL_SECONDS": "0"}, "FEED_STALL"),
    ],
)
def test_a_misconfigured_feed_stops_start_up_naming_the_setting(
    env: dict[str, str], name: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(name)
    assert "\n" not in str(caught.value)


def test_cors_origins_are_read_as_browsers_send_them() -> None:
    settings = Settings.from_env(
        {
            "CORS_ALLOW_ORIGINS": " https://Dash.example.com/ , http://127.0.0.1:5173,https://dash.example.com"
        }
    )
    assert settings.cors_allow_origins == ("https://dash.example.com", "http://127.0.0.1:5173")
    assert Settings.from_env({}).cors_allow_origins == ()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("400d", timedelta(days=400)), ("36h", timedelta(hours=36)), ("off", None), ("OFF", None)],
)
def test_trades_retention_is_off_by_default_or_days_or_hours(
    raw: str, expected: timedelta | None
) -> None:
    assert Settings().trades_retention is None
    assert Settings.from_env({"TRADES_RETENTION": raw}).trades_retention == expected
