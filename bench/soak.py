"""Soak test: hold load on every read endpoint, with ingestion running, and report over time.

    .venv/bin/python -m bench.soak                      # 10 minutes, own server, embedded DB
    .venv/bin/python -m bench.soak --minutes 2 --url http://127.0.0.1:8000   # a running one

Not part of `make test`. Every `--report-seconds` it prints requests, errors, p50/p99 and the
server's RSS and ingestion heartbeat; at the end a summary, and exit status 1 if any request
failed (a 5xx, a transport error, or an unexpected 4xx) or RSS grew by more than 20%.
Traffic goes to loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import psutil

# The test suite's one way to launch `mdp serve` on a free port and wait for it.
from tests.support import serve


def _paths() -> list[str]:
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    return [
        "/price/latest?symbol=AAPL",
        "/symbols",
        f"/trades?symbol=MSFT&start={hour_ago}&limit=100",
        "/trades?symbol=TSLA&order=asc&limit=50",
        "/candles?symbol=AAPL&interval=1m",
        "/candles?symbol=GOOGL&interval=5m&limit=100",
        "/candles?symbol=AMZN&interval=1h&limit=24",
        "/health",
        "/status/ingestion",
        "/metrics",
    ]


@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _worker(
    client: httpx.AsyncClient, paths: list[str], stop: float, box: list[Window]
) -> None:
    index = 0
    while time.monotonic() < stop:
        path = paths[index % len(paths)]
        index += 1
        started = time.perf_counter()
        try:
            response = await client.get(path)
        except httpx.HTTPError as exc:
            box[0].error(type(exc).__name__)
            continue
        box[0].latencies.append((time.perf_counter() - started) * 1000)
        if response.status_code >= 400:
            box[0].error(f"{response.status_code} {path.split('?')[0]}")


async def soak(base: str, pid: int | None, minutes: float, workers: int, every: float) -> int:
    process = psutil.Process(pid) if pid else None
    rss_start = process.memory_info().rss if process else None
    stop = time.monotonic() + minutes * 60
    box = [Window()]
    totals: list[float] = []
    failures: dict[str, int] = {}
    worst_heartbeat = 0.0
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        tasks = [asyncio.create_task(_worker(client, _paths(), stop, box)) for _ in range(workers)]
        print(
            f"{'elapsed':>8} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'rss MiB':>8} {'heartbeat s':>11}"
        )
        started = time.monotonic()
        while time.monotonic() < stop:
            await asyncio.sleep(min(every, max(0.0, stop - time.monotonic())))
            window, box[0] = box[0], Window()
            totals.extend(window.latencies)
            for what, count in window.errors.items():
                failures[what] = failures.get(what, 0) + count
            status = (await client.get("/status/ingestion")).json()
            heartbeat = status.get("seconds_since_last_batch") or 0.0
            worst_heartbeat = max(worst_heartbeat, heartbeat)
            rss = process.memory_info().rss / 2**20 if process else float("nan")
            print(
                f"{time.monotonic() - started:8.0f} {len(window.latencies):9d} "
                f"{sum(window.errors.values()):7d} {_percentile(window.latencies, 0.5):8.2f} "
                f"{_percentile(window.latencies, 0.99):8.2f} {rss:8.1f} {heartbeat:11.2f}",
                flush=True,
            )
        await asyncio.gather(*tasks)
    growth = None
    if process and rss_start:
        growth = process.memory_info().rss / rss_start - 1
    print()
    print(f"requests: {len(totals)}, errors: {sum(failures.values())} {failures or ''}")
    print(
        f"latency ms: p50 {_percentile(totals, 0.5):.2f}, p99 {_percentile(totals, 0.99):.2f}, "
        f"mean {statistics.fmean(totals) if totals else 0:.2f}"
    )
    print(f"worst ingestion heartbeat age: {worst_heartbeat:.2f}s")
    if growth is not None:
        print(f"server RSS growth: {growth:+.1%}")
    return 1 if failures or (growth is not None and growth > 0.20) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=16, help="concurrent clients")
    parser.add_argument("--report-seconds", type=float, default=30.0)
    parser.add_argument("--url", help="soak a running server instead of starting one")
    args = parser.parse_args()
    if args.url:
        if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
            parser.error("--url must be a loopback address")
        return asyncio.run(soak(args.url, None, args.minutes, args.workers, args.report_seconds))

    data_dir = Path(tempfile.mkdtemp(prefix="mdp-soak-"))
    try:
        with serve(None, {"MDP_DATA_DIR": str(data_dir)}, ready=None) as service:
            try:
                service.wait_ready("/symbols")
            except AssertionError as exc:
                print(f"soak: the server did not start: {exc}", file=sys.stderr)
                return 2
            time.sleep(3)  # a few batches, so every endpoint has data
            return asyncio.run(
                soak(
                    service.base,
                    service.process.pid,
                    args.minutes,
                    args.workers,
                    args.report_seconds,
                )
            )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
