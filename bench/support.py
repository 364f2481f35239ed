"""What the benchmark scripts share: the bench PostgreSQL, bench databases, `mdp backfill`,
child processes that are always stopped, and the machine description."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from mdp.embedded import EmbeddedPostgres

# The test suite's polling loop: one for the whole tree.
from tests.support import wait_until

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = ROOT / ".mdp" / "bench"  # git-ignored: the bench server's data, logs, profiles
DEFAULT_SYMBOLS = ("AAPL", "GOOGL", "MSFT", "TSLA", "AMZN")
HOST = "127.0.0.1"  # the only address the benchmarks ever bind to or send load to


def symbol_codes(count: int) -> list[str]:
    """The first `count` default symbols, then made-up ones (SYM006, …)."""
    extra = [f"SYM{i:03d}" for i in range(len(DEFAULT_SYMBOLS) + 1, count + 1)]
    return [*DEFAULT_SYMBOLS, *extra][:count]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server: `dsn(db)` names a database on it, for asyncpg and `DATABASE_URL`."""

    base: str  # postgresql://user:pw@host:port/DB?query, with DB replaceable

    def dsn(self, database: str) -> str:
        head, _, query = self.base.partition("?")
        prefix = head.rsplit("/", 1)[0]
        return f"{prefix}/{database}" + (f"?{query}" if query else "")

    @property
    def database(self) -> str:
        return self.base.partition("?")[0].rsplit("/", 1)[1]


def as_asyncpg_dsn(url: str) -> str:
    """DATABASE_URL forms the service accepts, as asyncpg's DSN (plain postgresql://)."""
    return re.sub(r"^postgres(ql)?(\+asyncpg)?://", "postgresql://", url.strip())


class EmbeddedServer:
    """The bench's own embedded PostgreSQL in .mdp/bench/postgres (kept for reuse, stopped at
    the end of every run)."""

    def __init__(self, pgdata: Path = WORK / "postgres") -> None:
        self.pgdata = pgdata
        self._embedded = EmbeddedPostgres(pgdata)

    def start(self) -> Server:
        url = self._embedded.start()
        return Server(url.set(drivername="postgresql").render_as_string(hide_password=False))

    def stop(self) -> None:
        self._embedded.stop()


async def recreate_database(server: Server, name: str) -> str:
    admin = await asyncpg.connect(server.dsn(server.database))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.dsn(name)


async def ensure_database(server: Server, name: str) -> tuple[str, bool]:
    """The DSN of database `name`, created if missing; and whether it already existed."""
    admin = await asyncpg.connect(server.dsn(server.database))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.dsn(name), bool(exists)


@dataclass(frozen=True)
class Backfill:
    rows: int  # written by this call (0: history already there)
    seconds: float
    rows_per_second: float | None
    output: str


_WROTE = re.compile(r"wrote (\d+) trades in ([\d.]+)s \((\d+) trades/s\)")


def backfill(
    dsn: str,
    *,
    days: float,
    symbols: Sequence[str],
    trades_per_second: float,
    seed: int = 1,
) -> Backfill:
    """Run `mdp backfill` (progress on our stderr); what it wrote and how fast."""
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "SYMBOLS": ",".join(symbols),
        "LOG_LEVEL": "INFO",
    }
    command = [
        sys.executable,
        "-m",
        "mdp.cli",
        "backfill",
        "--days",
        f"{days:g}",
        "--symbols",
        ",".join(symbols),
        "--trades-per-second",
        f"{trades_per_second:g}",
        "--seed",
        str(seed),
    ]
    lines = []
    # Its logs (JSON lines, progress every chunk) and its summary both go to stdout: show the
    # progress as it comes, keep everything for the summary.
    with subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            _show_progress(line)
    output = "".join(lines)
    if process.returncode != 0:
        raise RuntimeError(f"mdp backfill failed ({process.returncode}):\n{output}")
    match = _WROTE.search(output)
    if match is None:
        return Backfill(0, 0.0, None, output)
    rows, seconds, speed = int(match[1]), float(match[2]), float(match[3])
    return Backfill(rows, seconds, speed if rows else None, output)


_last_progress = [0.0]


def _show_progress(line: str) -> None:
    try:
        message = json.loads(line).get("message", "")
    except (ValueError, AttributeError):
        return
    # One progress line every 5 s is plenty.
    if message.startswith("backfill:") and time.monotonic() - _last_progress[0] > 5:
        _last_progress[0] = time.monotonic()
        log(message)


class Processes:
    """Child processes in their own sessions (Ctrl-C reaches only us), stopped in reverse order
    by `stop_all` — which the scripts call in `finally`."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, command: Sequence[str], env: dict[str, str], logfile: Path
    ) -> subprocess.Popen[bytes]:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with logfile.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children.append((name, process))
        return process

    def stop_all(self) -> None:
        while self._children:
            name, process = self._children.pop()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    log(f"{name} ignored SIGTERM for 20 s: killing it")
                    process.kill()
                    process.wait(timeout=5)


def wait_http(url: str, process: subprocess.Popen[bytes], *, timeout: float = 90) -> None:
    """Until `url` answers 200, or fail if the process dies or time runs out."""

    def answered() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(answered, what=f"{url} answering 200", timeout=timeout, every=0.3)


@contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` runs and nothing is left behind."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model[1].strip() if model else platform.processor(),
        "memory_gib": round(int(total[1]) / 2**20, 1) if total else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{'+dirty' if dirty else ''}"


def results_directory(committed: Path) -> Path:
    """Where a run writes results meant for `committed` (a folder under bench/): there when the
    tree is a clean commit, else the same folder under .mdp/bench/uncommitted/ (git-ignored), so
    a result measured on uncommitted changes is never committed beside the others."""
    committed = committed.resolve()
    revision = git_revision()
    if committed.is_relative_to(BENCH) and (revision.endswith("+dirty") or revision == "unknown"):
        where = WORK / "uncommitted" / committed.relative_to(BENCH)
        log(f"uncommitted changes: results go to {where.relative_to(ROOT)}, not {committed.name}/")
        return where
    return committed
