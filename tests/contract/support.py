"""Helpers for the contract-tooling tests: the spec, the repository's npm tools, extra servers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = [
    "REPOSITORY",
    "SPEC_PATH",
    "load_spec",
    "node_tool",
    "operations",
    "require_executable",
    "resolve",
    "run_tool",
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


def require_executable(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        pytest.fail(f"{path} is missing (make test installs it through tools/system-deps.sh)")
    return found
