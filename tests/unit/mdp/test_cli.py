"""The `mdp` command reports a bad setting in one line and exits 2, before touching a database."""

from __future__ import annotations

import pytest

from mdp.cli import main
from mdp.spec import load_contract

# Variables Settings.from_env reads before or beside the one under test: unset them so the
# machine's own environment cannot change which error comes first.
SETTINGS_VARIABLES = (
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "DATABASE_URL",
    "MDP_DATA_DIR",
    "DB_POOL_SIZE",
    "DB_CONNECT_TIMEOUT_SECONDS",
    "DB_QUERY_TIMEOUT_SECONDS",
    "INGESTION_ENABLED",
    "INGESTION_INTERVAL_SECONDS",
    "INGESTION_SEED",
    "INGESTION_MAX_TRADES_PER_SYMBOL",
    "SYMBOLS",
    "REDOC_SCRIPT_URL",
    "REDOC_SCRIPT_INTEGRITY",
    "AUTH_MODE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("command", ["migrate", "serve"])
@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("PORT", "abc"),
        ("LOG_LEVEL", "LOUD"),
        ("DATABASE_URL", "mysql://mdp:secret@db.internal/market"),
    ],
)
def test_cli_reports_a_configuration_error_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    name: str,
    raw: str,
) -> None:
    monkeypatch.setenv(name, raw)
    assert main([command]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("mdp: configuration error:")
    assert name in line
    assert captured.out == ""


def test_cli_reports_a_database_url_with_a_bad_port_as_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Fails today: the ValueError from SQLAlchemy's port parsing escapes as a traceback.
    monkeypatch.setenv("DATABASE_URL", "postgresql://mdp:secret@db.internal:abc/market")
    assert main(["migrate"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("mdp: configuration error:")
    assert "DATABASE_URL" in line


def test_cli_rejects_an_unknown_command_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["launch"])
    assert caught.value.code == 2
    assert "usage: mdp" in capsys.readouterr().err


def test_cli_prints_its_version_which_is_the_contracts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"mdp {load_contract().document['info']['version']}\n"
