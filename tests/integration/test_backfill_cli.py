"""`mdp backfill` as a user runs it: a subprocess on a private database named by DATABASE_URL."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import struct
import sys
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from ingestion.backfill import CHUNK_ROWS
from tests.support import open_test_engine

ROOT = Path(__file__).resolve().parents[2]
# 0.01 days at the default one trade per second, less the 2 s a first backfill leaves to
# live batches that may still be committing (persistence.finality.VISIBILITY_DEADLINE).
ROWS = 864 - 2
# TSLA's walk (base 240.00) moves at most 0.2 % of the base per trade.
TSLA_MAX_STEP = Decimal("0.48")


class Outcome(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def _env(url: URL, log_level: str, **settings: str) -> dict[str, str]:
    """Only what a user would set: no SYMBOLS, so the default symbols apply."""
    kept = {
        name: os.environ[name] for name in ("PATH", "HOME", "LANG", "TMPDIR") if name in os.environ
    }
    return {
        **kept,
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "LOG_LEVEL": log_level,
        **settings,
    }


async def _start(
    url: URL, *args: str, log_level: str, **settings: str
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mdp.cli",
        "backfill",
        *args,
        cwd=ROOT,
        env=_env(url, log_level, **settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _finish(process: asyncio.subprocess.Process) -> Outcome:
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    outcome = Outcome(process.returncode or 0, stdout.decode(), (stderr or b"").decode())
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome
    return outcome


async def _backfill(url: URL, *args: str, log_level: str = "INFO", **settings: str) -> Outcome:
    return await _finish(await _start(url, *args, log_level=log_level, **settings))


def _progress(stdout: str) -> list[str]:
    """Messages of the JSON log lines that report progress."""
    entries = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [entry["message"] for entry in entries if entry["message"].startswith("backfill:")]


def _printed(stdout: str) -> list[str]:
    """What the command printed, without its log lines."""
    return [line for line in stdout.splitlines() if not line.startswith("{")]


async def _stamps(url: URL) -> dict[str, list[datetime]]:
    engine = open_test_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text('SELECT symbol, "timestamp" FROM trades ORDER BY symbol, "timestamp", id')
            )
            stamps: dict[str, list[datetime]] = {}
            for symbol, stamp in rows:
                stamps.setdefault(symbol, []).append(stamp)
            return stamps
    finally:
        await engine.dispose()


async def _symbols(url: URL) -> list[str]:
    engine = open_test_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT symbol FROM symbols ORDER BY symbol"))
            return list(result.scalars())
    finally:
        await engine.dispose()


def _evenly_spaced(stamps: list[datetime], spacing: timedelta) -> bool:
    return all(b - a == spacing for a, b in zip(stamps, stamps[1:], strict=False))


async def test_backfill_writes_the_chosen_symbols_and_prints_what_it_wrote(
    empty_database: URL,
) -> None:
    before = datetime.now(UTC)
    outcome = await _backfill(
        empty_database, "--days", "0.01", "--seed", "3", "--symbols", "aapl,msft"
    )
    after = datetime.now(UTC)

    assert outcome.returncode == 0, outcome
    printed = _printed(outcome.stdout)
    assert re.fullmatch(rf"AAPL: {ROWS} of {ROWS} trades in \S+ \.\. \S+", printed[0]), printed
    assert re.fullmatch(rf"MSFT: {ROWS} of {ROWS} trades in \S+ \.\. \S+", printed[1]), printed
    assert printed[2].startswith(f"mdp backfill: wrote {2 * ROWS} trades in "), printed
    assert len(printed) == 3
    stamps = await _stamps(empty_database)
    assert {code: len(times) for code, times in stamps.items()} == {"AAPL": ROWS, "MSFT": ROWS}
    for times in stamps.values():
        assert before - timedelta(days=0.01) <= times[0] and times[-1] < after
        assert _evenly_spaced(times, timedelta(seconds=1))
    # The symbols are registered, so the API lists and serves them.
    assert await _symbols(empty_database) == ["AAPL", "MSFT"]


async def test_backfill_rerun_has_nothing_to_do(empty_database: URL) -> None:
    first = await _backfill(
        empty_database, "--days", "0.01", "--seed", "3", "--symbols", "aapl,msft"
    )
    assert first.returncode == 0, first
    stored = await _stamps(empty_database)

    again = await _backfill(
        empty_database, "--days", "0.01", "--seed", "3", "--symbols", "aapl,msft"
    )

    assert again.returncode == 0, again
    assert _printed(again.stdout) == [
        "mdp backfill: nothing to do: history already reaches back far enough"
    ]
    assert await _stamps(empty_database) == stored


async def test_backfill_logs_progress_lines_when_stderr_is_not_a_terminal(
    empty_database: URL,
) -> None:
    outcome = await _backfill(empty_database, "--days", "0.01", "--symbols", "aapl,msft")

    assert outcome.returncode == 0, outcome
    progress = _progress(outcome.stdout)
    # One line per chunk (one chunk per symbol here), and no progress bar on stderr.
    assert len(progress) == 2, outcome.stdout
    assert progress[0].startswith(f"backfill: {ROWS}/{2 * ROWS} rows (")
    assert "AAPL back to " in progress[0]
    assert progress[1].startswith(f"backfill: {2 * ROWS}/{2 * ROWS} rows (")
    assert "MSFT back to " in progress[1]
    assert all(re.search(r"\(\d+ rows/s, ETA \d+s\)", line) for line in progress)
    assert outcome.stderr == ""


def _read_terminal(master: int) -> str:
    """Everything written to a pseudo-terminal, until its last writer has gone."""
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


async def test_backfill_shows_a_progress_bar_instead_of_log_lines_on_a_terminal(
    empty_database: URL,
) -> None:
    master, terminal = os.openpty()
    # A terminal has a size (a fresh pseudo-terminal has 0 columns, where tqdm draws nothing).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "mdp.cli", "backfill", "--days", "0.01", "--symbols", "aapl,msft"),
            cwd=ROOT,
            env=_env(empty_database, "INFO"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
        )
    finally:
        os.close(terminal)
    try:
        screen = asyncio.create_task(asyncio.to_thread(_read_terminal, master))
        outcome = await _finish(process)
        bar = await screen
    finally:
        os.close(master)

    assert outcome.returncode == 0, outcome
    assert _progress(outcome.stdout) == []
    # tqdm's bar: rows done of the total, the rate, and the time left.
    assert re.search(r"1\.72k/1\.72k \[[0-9:]+<[0-9:]+, +[0-9.]+k?rows/s\]", bar), bar
    assert "Traceback" not in bar


async def test_backfill_logs_no_progress_below_info(empty_database: URL) -> None:
    outcome = await _backfill(
        empty_database, "--days", "0.01", "--symbols", "aapl", log_level="WARNING"
    )

    assert outcome.returncode == 0, outcome
    assert _progress(outcome.stdout) == []
    assert _printed(outcome.stdout)[-1].startswith(f"mdp backfill: wrote {ROWS} trades in ")


@pytest.fixture
def unused_database(server_url: URL) -> URL:
    """For commands that must stop before they touch the database: it does not exist."""
    return server_url.set(database="mdp_never_created")


async def test_backfill_refuses_a_symbol_not_in_symbols(unused_database: URL) -> None:
    outcome = await _backfill(unused_database, "--days", "0.01", "--symbols", "aapl,NOPE")

    assert outcome.returncode != 0
    assert "not in SYMBOLS: NOPE" in outcome.stderr
    assert "AAPL" not in outcome.stderr
    assert "wrote" not in outcome.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--days", "-1"), id="negative-days"),
        pytest.param(("--days", "0"), id="zero-days"),
        pytest.param(("--days", "soon"), id="days-not-a-number"),
        pytest.param(("--days", "nan"), id="days-nan"),
        pytest.param(("--days", "1", "--trades-per-second", "0"), id="zero-rate"),
        pytest.param(("--symbols", "aapl"), id="days-missing"),
    ],
)
async def test_backfill_rejects_bad_arguments_as_a_usage_error(
    unused_database: URL, args: tuple[str, ...]
) -> None:
    outcome = await _backfill(unused_database, *args)

    assert outcome.returncode == 2, outcome
    assert outcome.stderr.startswith("usage: mdp backfill")
    assert "error: argument --" in outcome.stderr or "required: --days" in outcome.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--days", "1e6"), id="days-before-year-one"),
        pytest.param(("--days", "1", "--trades-per-second", "1e-300"), id="rate-too-slow"),
    ],
)
async def test_backfill_rejects_a_range_the_calendar_cannot_hold(
    empty_database: URL, args: tuple[str, ...]
) -> None:
    outcome = await _backfill(empty_database, *args, "--symbols", "aapl")

    # A clear message naming the option (checked by `_backfill`: no traceback).
    assert outcome.returncode != 0, outcome
    assert args[-2] in outcome.stderr, outcome


@contextmanager
def _sigint_reaches_children() -> Iterator[None]:
    """A shell's background job ignores SIGINT, and children inherit that: undo it here."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_ctrl_c_leaves_whole_chunks_and_a_rerun_carries_on(empty_database: URL) -> None:
    # 518,390 rows (1.2 days at 5/s, less 2 s): three COPY chunks, so Ctrl-C after the first
    # lands well before the end.
    args = ("--days", "1.2", "--trades-per-second", "5", "--seed", "9", "--symbols", "tsla")
    with _sigint_reaches_children():
        process = await _start(empty_database, *args, log_level="INFO")
    try:
        assert process.stdout is not None
        first_line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        assert b"backfill: " in first_line
        process.send_signal(signal.SIGINT)
    finally:
        interrupted = await _finish(process)

    assert interrupted.returncode == 130, interrupted
    assert "interrupted; rerun the same command to carry on" in interrupted.stderr
    kept = len((await _stamps(empty_database))["TSLA"])
    assert kept % CHUNK_ROWS == 0 and 0 < kept < 518_390
    assert _printed(interrupted.stdout)[0].startswith(f"TSLA: {kept} of 518390 trades in ")
    assert f"mdp backfill: wrote {kept} trades in " in interrupted.stdout

    rerun = await _backfill(empty_database, *args)

    assert rerun.returncode == 0, rerun
    wrote = re.search(r"mdp backfill: wrote (\d+) trades", rerun.stdout)
    assert wrote is not None, rerun.stdout
    stamps = (await _stamps(empty_database))["TSLA"]
    assert len(stamps) == kept + int(wrote.group(1))
    # One history: no duplicate, no gap at the seam, and continuous in price across it.
    assert _evenly_spaced(stamps, timedelta(milliseconds=200))
    assert await _largest_step(empty_database, "TSLA") <= TSLA_MAX_STEP


async def _largest_step(url: URL, symbol: str) -> Decimal:
    engine = open_test_engine(url)
    try:
        async with engine.connect() as conn:
            query = text(
                """
                SELECT max(abs(price - previous)) FROM (
                    SELECT price, lag(price) OVER (ORDER BY "timestamp", id) AS previous
                    FROM trades WHERE symbol = :symbol
                ) AS steps
                """
            )
            step = (await conn.execute(query, {"symbol": symbol})).scalar_one()
            assert isinstance(step, Decimal)
            return step
    finally:
        await engine.dispose()


async def test_backfill_refuses_to_reach_past_trades_retention(unused_database: URL) -> None:
    # Past retention only candles are left: synthetic trades there would replace them.
    outcome = await _backfill(unused_database, "--days", "31", TRADES_RETENTION="30d")

    assert outcome.returncode != 0
    assert "reaches past TRADES_RETENTION (30 days)" in outcome.stderr
    assert "wrote" not in outcome.stdout
