"""The embedded server reports one outcome when this process lets go of it: stopped, or left
running for another process that still uses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mdp.embedded import EmbeddedPostgres


def test_a_server_nobody_else_uses_counts_as_stopped(tmp_path: Path) -> None:
    assert EmbeddedPostgres(tmp_path / "postgres").stop() is True


def test_a_server_another_live_process_uses_is_left_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pgdata = tmp_path / "postgres"
    pgdata.mkdir()
    # The postmaster's pid file, naming a process that is alive (this one).
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n")
    with caplog.at_level("INFO", logger="mdp.embedded"):
        assert EmbeddedPostgres(pgdata).stop() is False
    assert [record.getMessage() for record in caplog.records] == [
        f"embedded PostgreSQL in {pgdata} left running: another uses it"
    ]
