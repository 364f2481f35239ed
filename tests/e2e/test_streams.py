"""Server-Sent Event streams from a real `mdp serve` process with live ingestion."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from handlers.sse import encode_id
from persistence.symbols import ensure_symbols
from persistence.trades import NewTrade
from tests.e2e.sse import TRADES_AFTER, consuming, fetch, read_events, stream_data
from tests.support import metric_value, open_test_engine, seed_trades, serve_live, wait_until


async def _write(
    url: URL, write: Callable[[AsyncConnection, Any], Awaitable[None]], rows: Any
) -> None:
    """One of the service's write paths (history, symbols), committed in a transaction."""
    engine = open_test_engine(url)
    try:
        async with engine.begin() as conn:
            await write(conn, rows)
    finally:
        await engine.dispose()


def _batches(base: str) -> int:
    batches: int = httpx.get(f"{base}/status/ingestion").json()["batches_total"]
    return batches


def stream(
    base: str, path: str, params: dict[str, Any], headers: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[httpx.Response]:
    return httpx.stream("GET", f"{base}{path}", params=params, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def service(module_database: URL) -> Iterator[str]:
    # Stream behaviour, not access: served with AUTH_MODE=off (tests/api/test_access.py and
    # the e2e instances test cover keys on streams).
    env = {"STREAM_HEARTBEAT_SECONDS": "0.3", "STREAM_MAX_CLIENTS": "3", "AUTH_MODE": "off"}
    with serve_live(module_database, env) as live:
        yield live.base


async def test_trade_stream_carries_every_live_trade_of_its_symbols_in_order(
    service: str, module_database: URL
) -> None:
    with stream(service, "/stream/trades", {"symbols": "aapl,MSFT,aapl", "limit": 12}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(read_events(r))
    assert [e.kind for e in events] == ["trade"] * 12
    first = events[0].data
    stored = await fetch(
        module_database,
        TRADES_AFTER,
        ["AAPL", "MSFT"],
        datetime.fromisoformat(first["timestamp"]),
        first["id"] - 1,
        12,
    )
    assert [e.data for e in events] == [stream_data(row) for row in stored]
    assert [e.id for e in events] == [encode_id(row["timestamp"], row["id"]) for row in stored]


async def test_trade_stream_resumes_exactly_after_last_event_id_without_backfill(
    service: str, module_database: URL
) -> None:
    with stream(service, "/stream/trades", {"symbols": "AAPL,TSLA", "limit": 3}) as r:
        seen = list(read_events(r))
    last = seen[-1]
    away_from = _batches(service)
    # Backfill while the client is away: old timestamps, new ids, never live.
    day_ago = datetime.now(UTC) - timedelta(days=1)
    await _write(module_database, seed_trades, [NewTrade("AAPL", Decimal(1), 1, day_ago)])
    # Away for a few batches, so the resumed stream has live trades to replay too.
    wait_until(lambda: _batches(service) >= away_from + 3, what="three more batches")
    headers = {"Last-Event-ID": last.id or ""}
    with stream(service, "/stream/trades", {"symbols": "AAPL,TSLA", "limit": 20}, headers) as r:
        resumed = list(read_events(r))
    stored = await fetch(
        module_database,
        TRADES_AFTER,
        ["AAPL", "TSLA"],
        datetime.fromisoformat(last.data["timestamp"]),
        last.data["id"],
        20,
    )
    assert [e.data for e in resumed] == [stream_data(row) for row in stored]


def test_a_stale_last_event_id_gets_a_reset_and_then_live_trades(service: str) -> None:
    old = encode_id(datetime.now(UTC) - timedelta(hours=2), 1)
    with stream(
        service, "/stream/trades", {"symbols": "AAPL", "limit": 2}, {"Last-Event-ID": old}
    ) as r:
        events = list(read_events(r))
    assert [e.kind for e in events] == ["reset", "trade", "trade"]
    assert events[0].data["reason"] == "too_old"
    assert events[0].data["resumes_after"] < events[1].data["timestamp"]


@pytest.mark.parametrize("never", ["0", "not-an-id", "fffffffffffffff-1", "future"])
def test_a_last_event_id_never_issued_gets_a_reset(service: str, never: str) -> None:
    if never == "future":
        never = encode_id(datetime.now(UTC) + timedelta(days=1), 1)
    params = {"symbols": "AAPL", "limit": 1}
    with stream(service, "/stream/trades", params, {"Last-Event-ID": never}) as r:
        events = list(read_events(r))
    assert [(e.kind, e.data.get("reason")) for e in events] == [
        ("reset", "not_issued"),
        ("trade", None),
    ]


async def test_a_quiet_stream_sends_heartbeats_and_ends_after_its_duration(
    service: str, module_database: URL
) -> None:
    await _write(module_database, ensure_symbols, [("QUIET", "Quiet")])
    comments: list[str] = []
    started = time.monotonic()
    with stream(service, "/stream/trades", {"symbols": "quiet", "duration": 1}) as r:
        events = list(read_events(r, comments=comments))
    assert events == []
    assert ": heartbeat" in comments
    assert 0.9 <= time.monotonic() - started < 10


def test_unknown_symbols_are_named_before_the_stream_starts(service: str) -> None:
    response = httpx.get(f"{service}/stream/trades", params={"symbols": "AAPL,NOPE1,NOPE2"})
    assert response.status_code == 404
    assert "'NOPE1'" in response.json()["detail"] and "'NOPE2'" in response.json()["detail"]


def test_streams_beyond_the_cap_get_503_and_a_closed_one_frees_its_place(service: str) -> None:
    with contextlib.ExitStack() as stack:
        opened = [
            stack.enter_context(stream(service, "/stream/trades", {"symbols": "AAPL"}))
            for _ in range(3)
        ]
        assert [r.status_code for r in opened] == [200] * 3
        refused = httpx.get(f"{service}/stream/trades", params={"symbols": "AAPL", "limit": 1})
        assert refused.status_code == 503
        assert refused.json()["code"] == "streams_at_capacity"
        assert int(refused.headers["retry-after"]) >= 1
        opened[0].close()  # the client goes away: its place is freed
        again = wait_until(
            lambda: httpx.get(f"{service}/stream/trades", params={"symbols": "AAPL", "limit": 1}),
            lambda response: response.status_code == 200,
            what="a stream admitted again",
            timeout=10,
            every=0.05,
        )
        assert again.status_code == 200


async def test_candle_stream_sends_the_open_candle_and_resumed_ones_final(
    service: str, module_database: URL
) -> None:
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    past = minute - timedelta(minutes=3)
    # History written as `mdp backfill` writes it: with its candles, in one transaction (the
    # leader has already materialised that minute, as empty).
    moment = past + timedelta(seconds=1)
    await _write(module_database, seed_trades, [NewTrade("GOOGL", Decimal("140.5"), 7, moment)])
    params = {"symbol": "googl", "interval": "1m", "limit": 3}
    with stream(service, "/stream/candles", params, {"Last-Event-ID": encode_id(past, 0)}) as r:
        events = list(read_events(r))
    assert [e.kind for e in events] == ["candle"] * 3
    first = events[0].data
    assert first["timestamp"] == past.isoformat().replace("+00:00", "Z")
    candle = (first["open"], first["volume"], first["trade_count"], first["closed"])
    assert (*candle, first["revision"]) == (140.5, 7, 1, True, 0)
    assert events[0].id == encode_id(past, 1)
    # Then the open candle (maybe after the one that just closed), changing batch by batch.
    assert (events[-1].data["closed"], events[-1].data["revision"]) == (False, 0)
    assert events[-1].data["timestamp"] >= minute.isoformat().replace("+00:00", "Z")


def test_candle_streams_of_one_symbol_and_interval_share_one_read_per_batch(
    service: str,
) -> None:
    def counters() -> tuple[float, float]:
        metrics = httpx.get(f"{service}/metrics", headers={"Accept": "text/plain"}).text
        reads = metric_value(metrics, "mdp_candle_stream_reads_total", {"interval": "5m"})
        return reads, metric_value(metrics, "mdp_ingestion_batches_total")

    url = f"{service}/stream/candles"
    params = {"symbol": "MSFT", "interval": "5m"}
    # As many streams as the instance admits: unshared, each would read once per batch.
    with (
        consuming(url, params) as first,
        consuming(url, params) as second,
        consuming(url, params) as third,
    ):
        streams = (first, second, third)
        wait_until(lambda: all(streams), what="every stream's first candle")
        reads, batches = counters()
        seen = [len(events) for events in streams]
        later_reads, later_batches = wait_until(
            counters,
            lambda now: now[1] >= batches + 15,
            what="15 more batches",
        )
        wait_until(
            lambda: all(len(e) > n for e, n in zip(streams, seen, strict=True)),
            what="every stream sending candles meanwhile",
        )
    # One read per batch, where unshared reads would be three per batch (45 here). The slack:
    # batches committed before the first sample but heard after it, and a read per stream
    # when time alone makes a candle final.
    assert 0 < later_reads - reads <= later_batches - batches + 2 * len(streams)
