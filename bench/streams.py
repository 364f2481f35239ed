"""Many `/stream/trades` clients on one instance: commit-to-client latency, heartbeat, RSS.

    .venv/bin/python -m bench.streams                      # 1,000 clients for 30 s
    .venv/bin/python -m bench.streams --clients 200 --duration 10 --database-url postgresql://…

Commit-to-client is measured from the moment a batch's NOTIFY reaches a LISTEN connection of
this script (PostgreSQL sends it at commit) to the moment each client has read that batch's
first trade. The clients share this process and its core budget with the service: each is a
bare protocol that parses only timestamps, so that their own cost stays out of the figures.
Writes bench/results/streams-<commit>-<timestamp>.json (under .mdp/bench/uncommitted/ instead
when the tree has uncommitted changes). Everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/streams.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import psutil  # noqa: E402

from bench.clients import AUTH_HEADERS, HeartbeatPoller  # noqa: E402
from bench.run import _mdp  # noqa: E402
from bench.support import (  # noqa: E402
    BENCH,
    HOST,
    WORK,
    EmbeddedServer,
    Processes,
    Server,
    as_asyncpg_dsn,
    git_revision,
    log,
    machine,
    recreate_database,
    results_directory,
    terminate_on_sigterm,
    wait_http,
)
from persistence.trades import LIVE_CHANNEL  # noqa: E402
from tests.support import free_port  # noqa: E402

RESULTS = BENCH / "results"


_STAMP = b'"timestamp":"'


class _Stream(asyncio.Protocol):
    """One SSE client that costs as little as a client can, so that what is measured is the
    service: a protocol, not a task reading lines, notes when the first trade of each batch
    arrives (the moment its bytes are handed over) and parses nothing but its timestamp."""

    def __init__(self, request: bytes, arrivals: dict[str, list[float]]) -> None:
        self.request = request
        self.arrivals = arrivals
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._rest = b""
        self._last = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.opened.done():
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            self.opened.set_result(b" 200 " in head.split(b"\r\n", 1)[0])
        # Whole events only: a read may end inside one.
        events, separator, self._rest = (self._rest + data).rpartition(b"\n\n")
        if not separator:
            self._rest = events
            return
        at = events.find(_STAMP)
        while at >= 0:
            start = at + len(_STAMP)
            end = events.index(b'"', start)
            # Every trade of a batch has the batch's stamp as its timestamp.
            stamp = events[start:end]
            if stamp != self._last:
                self._last = stamp
                self.arrivals.setdefault(stamp.decode(), []).append(now)
            at = events.find(_STAMP, end)


async def _client(port: int, symbol: str, arrivals: dict[str, list[float]], ready: Any) -> None:
    """One stream, opened again (as EventSource would) while the instance refuses it."""
    request = (
        f"GET /stream/trades?symbols={symbol} HTTP/1.0\r\nHost: {HOST}\r\n"
        f"X-API-Key: {AUTH_HEADERS['X-API-Key']}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    while True:
        _, stream = await loop.create_connection(lambda: _Stream(request, arrivals), HOST, port)
        if await stream.opened:
            break
        assert stream.transport is not None
        stream.transport.close()
        await asyncio.sleep(0.5)
    ready()
    try:
        await asyncio.Event().wait()  # until cancelled
    finally:
        assert stream.transport is not None
        stream.transport.close()


async def _measure(dsn: str, port: int, clients: int, duration: float) -> dict[str, Any]:
    notices: dict[str, float] = {}
    listener = await asyncpg.connect(dsn)

    def heard(*args: Any) -> None:
        stamp = datetime.fromisoformat(args[-1].split(" ")[0])
        notices[stamp.isoformat().replace("+00:00", "Z")] = time.perf_counter()

    await listener.add_listener(LIVE_CHANNEL, heard)
    arrivals: dict[str, list[float]] = {}
    opened = 0

    def ready() -> None:
        nonlocal opened
        opened += 1

    tasks = [asyncio.create_task(_client(port, "AAPL", arrivals, ready)) for _ in range(clients)]
    while opened < clients:
        await asyncio.sleep(0.05)
    log(f"{clients} streams open")
    started = time.perf_counter()
    await asyncio.sleep(duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await listener.close()
    latencies = [
        (arrival - notices[stamp]) * 1000
        for stamp, times in arrivals.items()
        if stamp in notices and notices[stamp] >= started
        for arrival in times
    ]
    batches = [s for s, t in notices.items() if t >= started]
    delivered = [len(arrivals.get(s, [])) for s in batches[:-1]]  # the last may be in flight
    return {
        "clients": clients,
        "batches": len(batches),
        "deliveries_per_batch_min": min(delivered) if delivered else 0,
        "latency_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p99": round(statistics.quantiles(latencies, n=100)[98], 1),
            "max": round(max(latencies), 1),
            "count": len(latencies),
        },
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000, help="stream clients (1000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured (30)")
    parser.add_argument("--database-url", help="a server to use instead of the embedded one")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    processes = Processes()
    embedded = None if args.database_url else EmbeddedServer()
    poller: HeartbeatPoller | None = None
    with terminate_on_sigterm():
        try:
            server = embedded.start() if embedded is not None else Server(args.database_url)
            dsn = asyncio.run(recreate_database(server, "mdp_bench_streams"))
            port = free_port()
            env = {
                **os.environ,
                "DATABASE_URL": dsn,
                "HOST": HOST,
                "PORT": str(port),
                "LOG_LEVEL": "WARNING",
                "INGESTION_INTERVAL_SECONDS": "1",
                "STREAM_MAX_CLIENTS": str(args.clients + 10),
            }
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            # AUTH_MODE=required, as deployed: a key for the streams and the status polls.
            _mdp(env, "migrate")
            scopes = ("--scopes", "stream,ops", "--rate-limit", "1000000/s")
            AUTH_HEADERS["X-API-Key"] = _mdp(env, "keys", "create", "--name", "bench", *scopes)
            service = processes.start(
                "service",
                [sys.executable, "-m", "mdp.cli", "serve"],
                env,
                WORK / "logs" / stamp / "streams-service.log",
            )
            wait_http(f"http://{HOST}:{port}/health", service)
            poller = HeartbeatPoller(port, phase="streams")
            poller.start()
            rss_before = psutil.Process(service.pid).memory_info().rss
            log(f"{args.clients} stream clients for {args.duration:g} s")
            figures = asyncio.run(_measure(as_asyncpg_dsn(dsn), port, args.clients, args.duration))
            rss_after = psutil.Process(service.pid).memory_info().rss
            poller.phase = "done"
            result = {
                "commit": git_revision(),
                "machine": machine(),
                **figures,
                "heartbeat_worst_seconds": poller.worst("streams"),
                "rss_mib": {
                    "before": round(rss_before / 2**20, 1),
                    "after": round(rss_after / 2**20, 1),
                    "growth_percent": round(100 * (rss_after - rss_before) / rss_before, 1),
                },
            }
        finally:
            if poller is not None:
                poller.stop()
            processes.stop_all()
            if embedded is not None:
                embedded.stop()
    results = results_directory(args.results)
    results.mkdir(parents=True, exist_ok=True)
    # Several runs of one commit sit side by side; runs of other commits go, never left stale.
    commit = result["commit"]
    for stale in results.glob("streams-*.json"):
        if not stale.name.startswith(f"streams-{commit}-"):
            stale.unlink()
    path = results / f"streams-{commit}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {path}\n{json.dumps(result, indent=2)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
