"""GET /chart in headless Chromium against a service that needs a key: it asks for the key,
draws candles and volume with the vendored lightweight-charts, updates the open candle when new
trades arrive, and pages back through /candles when scrolled to its oldest candle."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy.engine import URL

from tests.contract.support import REPOSITORY, require_executable, run_tool
from tests.support import serve_live

pytestmark = pytest.mark.slow

CHECK_CHART = REPOSITORY / "tools" / "browser" / "check_chart.mjs"


def test_the_chart_draws_updates_live_and_pages_back(module_database: URL) -> None:
    node = require_executable("node")
    require_executable("/usr/bin/chromium")
    # 72 minutes of AAPL history: more 1m candles than the page's first request (20) holds.
    url = module_database.render_as_string(hide_password=False)
    subprocess.run(
        [sys.executable, "-m", "mdp.cli", "backfill", "--days", "0.05", "--symbols", "AAPL"],
        env={**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
        capture_output=True,
        timeout=120,
        check=True,
    )
    with serve_live(module_database) as service, pytest.MonkeyPatch.context() as patch:
        # The key travels in the environment, so it never shows in a process list.
        patch.setenv("MDP_API_KEY", str(service.api_key))
        result = run_tool([node, CHECK_CHART, service.base], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)

    assert "API key" in report["askedFor"]
    drawn = report["drawn"]
    assert drawn["symbol"] == "AAPL" and drawn["bars"] >= 20
    assert drawn["up"] + drawn["down"] > 100, drawn  # candle bodies and volume bars
    before, after = report["before"], report["after"]
    assert (after["utc"], after["close"], after["volume"]) != (
        before["utc"],
        before["close"],
        before["volume"],
    )
    assert report["paged"]["oldest"] < report["oldest"]
    assert report["paged"]["bars"] > drawn["bars"]
    assert report["offline"] == []  # no CDN: everything from the service
    # The page's own 401s (before the key) are the only errors it logs.
    assert all("401" in error for error in report["consoleErrors"]), report["consoleErrors"]
