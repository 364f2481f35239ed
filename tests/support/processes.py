"""Real processes for tests: a free port, and `mdp serve` launched, awaited and always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
from sqlalchemy.engine import URL

from mdp.settings import SHUTDOWN_GRACE_SECONDS
from tests.support.keys import provision_key_now
from tests.support.polling import wait_until

__all__ = ["Service", "free_port", "serve", "serve_live"]

MDP_SERVE: tuple[str, ...] = (sys.executable, "-m", "mdp.cli", "serve")
# A generous margin over Cloud Run's grace before the process is killed.
STOP_TIMEOUT_SECONDS = SHUTDOWN_GRACE_SECONDS + 5.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Service:
    """One running `mdp serve`: its base URL, its process, what it printed, and (under
    AUTH_MODE=required) a key with every scope that `get` sends."""

    def __init__(
        self, process: subprocess.Popen[bytes], base: str, output: int, api_key: str | None
    ) -> None:
        self.process = process
        self.base = base
        self._output = output
        self.api_key = api_key

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key} if self.api_key is not None else {}

    def output(self) -> str:
        """stdout and stderr so far (read without moving the process's file offset)."""
        size = os.fstat(self._output).st_size
        return os.pread(self._output, size, 0).decode(errors="replace")

    def get(self, path: str) -> httpx.Response | None:
        """GET `path`, or None while nothing answers; fails at once if the process ended."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"mdp serve exited with {self.process.returncode}:\n{self.output()[-4000:]}"
            )
        try:
            return httpx.get(f"{self.base}{path}", headers=self.headers, timeout=2)
        except httpx.TransportError:
            return None

    def wait_ready(self, path: str = "/health", *, timeout: float = 60) -> httpx.Response:
        """Until GET `path` answers 200; returns that response."""
        response = wait_until(
            lambda: self.get(path),
            lambda r: r is not None and r.status_code == 200,
            what=f"GET {path} answering 200",
            timeout=timeout,
            every=0.1,
        )
        assert response is not None
        return response

    def stop(self) -> int:
        """SIGTERM, as Cloud Run stops an instance; killed if it outlives the grace."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"mdp serve ignored SIGTERM for {STOP_TIMEOUT_SECONDS:g}s"
            ) from None


@contextlib.contextmanager
def serve(
    database_url: URL | None,
    env: Mapping[str, str] | None = None,
    *,
    command: Sequence[str | Path] = MDP_SERVE,
    inherit_env: bool = True,
    cwd: Path | None = None,
    ready: str | None = "/health",
) -> Iterator[Service]:
    """`mdp serve` on a free loopback port (LOG_LEVEL WARNING unless `env` says otherwise),
    returned once GET `ready` answers 200 (at once when `ready` is None); stopped on exit.

    `inherit_env=False` starts it with `env` and nothing of this test run's environment.
    With a database and AUTH_MODE not `off`, a real key is made there first (`Service.api_key`).
    """
    port = free_port()
    full_env = {
        **(os.environ if inherit_env else {}),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        **(
            {"DATABASE_URL": database_url.render_as_string(hide_password=False)}
            if database_url is not None
            else {}
        ),
        **(env or {}),
    }
    key = None
    if database_url is not None and full_env.get("AUTH_MODE", "").strip().lower() != "off":
        key = provision_key_now(database_url)
    # A file, not a pipe: nobody reads while it runs, and a full pipe would block it.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [str(part) for part in command],
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        service = Service(process, f"http://127.0.0.1:{port}", output.fileno(), key)
        try:
            if ready is not None:
                service.wait_ready(ready)
            yield service
        finally:
            service.stop()


@contextlib.contextmanager
def serve_live(database_url: URL, env: Mapping[str, str] | None = None) -> Iterator[Service]:
    """`serve()` ingesting every 0.2 s (seeded), returned once AAPL has a trade."""
    live = {"INGESTION_INTERVAL_SECONDS": "0.2", "INGESTION_SEED": "11", **(env or {})}
    with serve(database_url, live, ready="/price/latest?symbol=AAPL") as service:
        yield service
