"""A page on another origin calls the API in headless Chromium: with CORS_ALLOW_ORIGINS listing
it, the browser lets it send its key, read answers, problems, headers and a stream; a page on an
unlisted origin cannot read anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.contract.support import REPOSITORY, require_executable, run_tool, static_files
from tests.support import serve_live

pytestmark = pytest.mark.slow

CHECK_CORS = REPOSITORY / "tools" / "browser" / "check_cors.mjs"


def test_a_page_on_a_listed_origin_reads_answers_problems_and_streams(
    module_database: URL, tmp_path: Path
) -> None:
    node = require_executable("node")
    require_executable("/usr/bin/chromium")
    (tmp_path / "index.html").write_text("<!doctype html><title>dashboard</title>\n")
    # Two more origins on loopback: the API's page servers differ from it by port.
    with (
        static_files(tmp_path) as dashboard,
        static_files(tmp_path) as stranger,
        serve_live(module_database, {"CORS_ALLOW_ORIGINS": dashboard}) as service,
        pytest.MonkeyPatch.context() as patch,
    ):
        # The key travels in the environment, so it never shows in a process list.
        patch.setenv("MDP_API_KEY", str(service.api_key))
        result = run_tool([node, CHECK_CORS, service.base, dashboard, stranger], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)

    symbols = report["symbols"]
    assert symbols["status"] == 200 and symbols["count"] == 2
    assert symbols["etag"] and symbols["rateLimitPolicy"] and symbols["rateLimit"]
    assert report["notModified"] == 304
    assert report["missing"] == {"status": 404, "code": "symbol_not_found"}
    assert report["anonymous"] == {"status": 401, "code": "unauthenticated"}
    export = report["export"]
    assert export["status"] == 200
    assert int(export["rowCount"]) == export["lines"] - 1  # the header line
    stream = report["stream"]
    assert stream["status"] == 200 and len(stream["trades"]) == 2
    assert len(stream["resumed"]) == 1 and stream["resumed"][0] > stream["trades"][-1]
    assert report["otherOrigin"] == "TypeError"
    # The dashboard's console has the 404 and 401 it asked for, and no CORS refusal.
    assert [error for error in report["consoleErrors"] if "CORS" in error] == []
