"""Swagger UI (/docs) and ReDoc (/redoc) render the contract in headless Chromium: every operation,
a working "Try it out", no console errors, nothing fetched from outside the machine. The
screenshots land in docs/ for the README (with MDP_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from mdp.settings import Settings
from tests.contract.support import (
    REPOSITORY,
    load_spec,
    operations,
    require_executable,
    run_tool,
    static_files,
)
from tests.support import serve_live

pytestmark = pytest.mark.slow

REDOC_BUNDLES = REPOSITORY / "node_modules" / "redoc" / "bundles"
REDOC_SCRIPT = REDOC_BUNDLES / "redoc.standalone.js"
CHECK_DOCS = REPOSITORY / "tools" / "browser" / "check_docs.mjs"
DOCS = REPOSITORY / "docs"
# ReDoc 2.5.0 always shows Redocly's logo from its CDN; the browser script answers that one
# request locally (see check_docs.mjs) instead of letting it fail as a console error.
STUBBED_THIRD_PARTY = {"https://cdn.redoc.ly/redoc/logo-mini.svg"}


def _sri(path: Any) -> str:
    digest = hashlib.sha384(path.read_bytes()).digest()
    return f"sha384-{base64.b64encode(digest).decode()}"


def test_pinned_redoc_integrity_matches_the_npm_bundle() -> None:
    # The service's default REDOC_SCRIPT_INTEGRITY pins the CDN copy of redoc@2.5.0; package.json
    # pins the same release, so the browser test exercises exactly what production serves.
    assert REDOC_SCRIPT.exists(), "run `npm ci` (make test does) first"
    assert Settings().redoc_script_integrity == _sri(REDOC_SCRIPT)
    assert "redoc@2.5.0" in Settings().redoc_script_url


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/ when MDP_UPDATE_SCREENSHOTS=1 (to refresh the README's pictures), else a temp
    dir: the pictures show live prices, and a test run must not dirty the work tree."""
    if os.environ.get("MDP_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser_report(module_database: URL, screenshots: Path) -> Iterator[dict[str, Any]]:
    """Run tools/browser/check_docs.mjs against a service whose /redoc loads a local ReDoc."""
    node = require_executable("node")
    require_executable("/usr/bin/chromium")
    with static_files(REDOC_BUNDLES) as bundles:
        env = {
            "REDOC_SCRIPT_URL": f"{bundles}/redoc.standalone.js",
            "REDOC_SCRIPT_INTEGRITY": _sri(REDOC_SCRIPT),
        }
        with serve_live(module_database, env) as service:
            # The key reaches the script through its environment, never its command line.
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MDP_DOCS_API_KEY", str(service.api_key))
                result = run_tool([node, CHECK_DOCS, service.base, screenshots], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    yield json.loads(result.stdout)


def _expected_operations() -> list[tuple[str, str, dict[str, Any]]]:
    spec = load_spec()
    found = list(operations(spec))
    # One GET per path: counted from the spec, so adding an operation needs no edit here.
    assert len(found) == len(spec["paths"])
    return found


def test_swagger_ui_renders_every_operation(browser_report: dict[str, Any]) -> None:
    swagger = browser_report["swagger"]
    assert "error" not in swagger, swagger
    expected = sorted(f"{method} {path}" for method, path, _ in _expected_operations())
    assert sorted(swagger["operations"]) == expected


def test_swagger_ui_try_it_out_returns_the_latest_price(browser_report: dict[str, Any]) -> None:
    # The service requires a key: a 200 means the one entered in "Authorize" was sent.
    swagger = browser_report["swagger"]
    assert swagger["authorized"] is True
    assert swagger["tryItOutStatus"] == "200"
    body = json.loads(swagger["tryItOutBody"])
    assert body["symbol"] == "AAPL"
    assert set(body) == {"symbol", "price", "volume", "timestamp"}


def test_redoc_renders_every_operation(browser_report: dict[str, Any]) -> None:
    redoc = browser_report["redoc"]
    assert "error" not in redoc, redoc
    expected = _expected_operations()
    assert sorted(redoc["operations"]) == sorted(op["operationId"] for _, _, op in expected)
    assert sorted(redoc["headings"]) == sorted(op["summary"] for _, _, op in expected)


@pytest.mark.parametrize("page", ["swagger", "redoc"])
def test_page_has_no_console_errors(browser_report: dict[str, Any], page: str) -> None:
    seen = browser_report[page]
    assert seen["consoleErrors"] == []
    assert seen["pageErrors"] == []
    assert seen["failedRequests"] == []


def test_nothing_is_fetched_from_outside_the_machine(browser_report: dict[str, Any]) -> None:
    assert browser_report["blockedRequests"] == []
    assert set(browser_report["stubbedRequests"]) <= STUBBED_THIRD_PARTY


@pytest.mark.parametrize("name", ["swagger-ui.png", "redoc.png"])
def test_screenshot_is_saved(browser_report: dict[str, Any], screenshots: Path, name: str) -> None:
    screenshot = screenshots / name
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert screenshot.stat().st_size > 20_000
