"""Helpers for the contract-tooling tests: the spec, the repository's npm tools, extra servers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

__all__ = [
    "REPOSITORY",
    "SPEC_PATH",
    "free_port",
    "load_spec",
    "node_tool",
    "operations",
    "require_executable",
    "resolve",
    "run_tool",
    "running_service",
    "static_files",
]

REPOSITORY = Path(__file__).resolve().parents[2]
SPEC_PATH = REPOSITORY / "openapi" / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return spec


def operations(spec: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) for every operation of the spec."""
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def resolve(spec: Mapping[str, Any], node: Any) -> Any:
    """`node` with local `$ref`s followed, recursively (the spec has no recursive schemas)."""
    if isinstance(node, Mapping):
        if "$ref" in node:
            target: Any = spec
            for token in node["$ref"].removeprefix("#/").split("/"):
                target = target[token.replace("~1", "/").replace("~0", "~")]
            return resolve(spec, target)
        return {key: resolve(spec, value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(spec, item) for item in node]
    return node


def node_tool(name: str) -> Path:
    """An executable from the pinned npm install (`npm ci`, done by `make test`)."""
    path = REPOSITORY / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `npm ci` (make test does) first")
    return path


def run_tool(
    command: list[str | Path], *, timeout: float = 120, cwd: Path = REPOSITORY
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _CorsHandler(http.server.SimpleHTTPRequestHandler):
    # The ReDoc page loads its script with `integrity` and `crossorigin="anonymous"`, which
    # makes it a CORS request: without this header Chromium refuses the script.
    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_files(directory: Path) -> Iterator[str]:
    """Serve `directory` on a free loopback port; yields the base URL."""
    handler = functools.partial(_CorsHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def running_service(database_url: str, extra_env: Mapping[str, str]) -> Iterator[str]:
    """`mdp serve` with live ingestion and `extra_env`; yields its base URL once a trade of
    AAPL exists."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "INGESTION_INTERVAL_SECONDS": "0.2",
        "INGESTION_SEED": "11",
        "LOG_LEVEL": "WARNING",
        **extra_env,
    }
    process = subprocess.Popen([sys.executable, "-m", "mdp.cli", "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/price/latest?symbol=AAPL", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not serve a price within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def require_executable(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        pytest.fail(f"{path} is missing (make test installs it through tools/system-deps.sh)")
    return found
