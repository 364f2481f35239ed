"""A browser's own EventSource receives live trades from /stream/trades in headless Chromium,
and resumes by itself with Last-Event-ID when the server ends a stream, without a gap."""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg
import pytest
from sqlalchemy.engine import URL

from tests.contract.support import REPOSITORY, require_executable, run_tool
from tests.support import dsn, serve_live

pytestmark = pytest.mark.slow

CHECK_EVENT_SOURCE = REPOSITORY / "tools" / "browser" / "check_event_source.mjs"
EVENTS = 8


async def test_event_source_receives_live_trades_across_reconnects(module_database: URL) -> None:
    node = require_executable("node")
    require_executable("/usr/bin/chromium")
    # AUTH_MODE=off: a browser's EventSource cannot send a header, so it cannot carry an API
    # key (browser clients use a fetch-based SSE client that can; see the README).
    with serve_live(module_database, {"AUTH_MODE": "off"}) as service:
        result = run_tool([node, CHECK_EVENT_SOURCE, service.base, str(EVENTS)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    trades = [trade["data"] for trade in report["trades"]]

    assert len(trades) == EVENTS
    # Three events per connection: the browser reconnected twice on its own.
    assert report["opened"] >= 3
    assert report["consoleErrors"] == []
    conn = await asyncpg.connect(dsn(module_database))
    try:
        stored = await conn.fetch(
            "SELECT id FROM trades WHERE symbol IN ('AAPL', 'MSFT') "
            "AND (timestamp, id) >= ($1, $2) ORDER BY timestamp, id LIMIT $3",
            datetime.fromisoformat(trades[0]["timestamp"]),
            trades[0]["id"],
            EVENTS,
        )
    finally:
        await conn.close()
    assert [t["id"] for t in trades] == [row["id"] for row in stored]
