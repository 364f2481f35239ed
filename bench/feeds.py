"""A venue feed replayed at a sustained rate: ingestion throughput, heartbeat, read latency,
and the speed of recovering missed trades from the venue's REST history.

    .venv/bin/python -m bench.feeds                                   # issue 21's figures
    .venv/bin/python -m bench.feeds --rate 500 --duration 3 --recover 2000   # a smoke run

A local Binance (tests/support/venues.py: its WebSocket and REST protocols) prints `--rate`
trades a second across `--symbols` products for `--duration` seconds to one `mdp serve`
(FEED=binance, embedded PostgreSQL in a temporary directory). Reported: the trades stored per
second while keeping up, the worst heartbeat age against the ingestion interval,
`/price/latest` p99 under load against its idle value, and the latency of the SSE trade stream
(`/stream/trades` of one symbol): from the venue's print to the client's receipt, which bounds
commit-to-client from above by the batching (at most one interval) and the venue hop. Then
the venue goes offline, prints `--recover` trades nobody hears, and comes back: the feed
recovers them page by page (1,000 a page), and the rate it stores them at is reported. Real
venues cap recovery far lower than a local one: Binance's `historicalTrades` costs weight 25 of
6,000 a minute (240 pages, 240,000 trades a minute, 4,000 a second), Coinbase allows about 10
requests (10,000 trades) a second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/feeds.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from tests.e2e.sse import read_events  # noqa: E402
from tests.support import Service, serve, wait_until  # noqa: E402
from tests.support.venues import VenueServer, venue_server  # noqa: E402

INTERVAL = 0.25


def _status(service: Service) -> dict[str, Any]:
    response = service.get("/status/ingestion")
    assert response is not None and response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _latencies(client: httpx.Client, symbol: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.get(f"/price/latest?symbol={symbol}").raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def _stored(service: Service, total: int, timeout: float) -> float:
    """Seconds until the service has stored `total` trades."""
    started = time.monotonic()
    wait_until(
        lambda: _status(service)["trades_total"],
        lambda n: n >= total,
        what=f"{total} trades stored",
        timeout=timeout,
        every=0.05,
    )
    return time.monotonic() - started


class Load:
    """Prints `rate` trades a second for `duration` seconds on a thread of its own, in bursts
    every 50 ms (a burst that falls behind is made up by the next)."""

    def __init__(self, venue: VenueServer, rate: int, duration: float) -> None:
        self.printed = 0
        self._venue, self._rate, self._duration = venue, rate, duration
        self._thread = threading.Thread(target=self._print, daemon=True)
        self._elapsed = 0.0

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> float:
        """Seconds the load lasted."""
        self._thread.join()
        return self._elapsed

    def _print(self) -> None:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < self._duration:
            due = int(self._rate * elapsed) - self.printed
            if due > 0:
                self.printed += self._venue.burst(due)
            time.sleep(0.05)
        self._elapsed = time.monotonic() - started


class StreamLatency:
    """A client of `/stream/trades?symbols=<symbol>` on a thread: print-to-receipt seconds of
    every trade event, from `start()` until `stop()`."""

    def __init__(self, service: Service, symbol: str) -> None:
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._url = f"{service.base}/stream/trades"
        self._symbol = symbol
        self._thread = threading.Thread(target=self._consume, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _consume(self) -> None:
        params = {"symbols": self._symbol}
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", self._url, params=params) as response,
        ):
            for event in read_events(response):
                if self._stop.is_set():
                    return
                if event.kind == "trade":
                    printed = datetime.fromisoformat(event.data["timestamp"])
                    self.seconds.append((datetime.now(UTC) - printed).total_seconds())


def run(venue: VenueServer, args: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    env = {
        "FEED": "binance",
        "SYMBOLS": ",".join(venue.products),
        "FEED_URL": venue.url,
        "FEED_REST_URL": venue.rest_url,
        "INGESTION_INTERVAL_SECONDS": str(INTERVAL),
        "MDP_DATA_DIR": data_dir,
    }
    with serve(None, env, ready="/status/ingestion") as service:
        wait_until(venue.subscribed, what="the feed subscribed", timeout=60)
        symbol = venue.products[0]
        printed = venue.burst(len(venue.products))
        _stored(service, printed, 60)
        with httpx.Client(base_url=service.base, timeout=10) as client:
            idle = _p99(_latencies(client, symbol, 200))
            stream = StreamLatency(service, symbol)
            stream.start()
            loaded: list[float] = []
            ages: list[float] = []
            load = Load(venue, args.rate, args.duration)
            load.start()
            # Sampled while the load runs, on this thread: the load keeps its own pace.
            while load.running():
                loaded.extend(_latencies(client, symbol, 1))
                age = _status(service)["seconds_since_last_batch"]
                if age is not None:
                    ages.append(age)
                time.sleep(0.05)
            elapsed = load.join()
            printed += load.printed
            drained = _stored(service, printed, 600)
            stream.stop()
        venue.go_offline()
        missed = venue.burst(args.recover, publish=False)
        venue.go_offline(False)
        recovery = _stored(service, printed + missed, 3600)
    return {
        "symbols": len(venue.products),
        "offered_trades_per_second": round((printed - len(venue.products)) / elapsed),
        "stored_trades_per_second": round((printed - len(venue.products)) / (elapsed + drained)),
        "heartbeat_age_max_seconds": round(max(ages, default=0.0), 3),
        "heartbeat_limit_seconds": 1.5 * INTERVAL,
        "price_latest_p99_idle_ms": round(idle * 1000, 2),
        "price_latest_p99_loaded_ms": round(_p99(loaded) * 1000, 2) if loaded else None,
        "stream_trade_events": len(stream.seconds),
        "stream_print_to_client_p50_ms": _ms(statistics.median(stream.seconds))
        if stream.seconds
        else None,
        "stream_print_to_client_p99_ms": _ms(_p99(stream.seconds)) if stream.seconds else None,
        "recovered_trades": missed,
        "recovered_trades_per_second": round(missed / recovery) if recovery else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--rate", type=int, default=20_000, help="trades a second, all symbols")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--recover", type=int, default=1_000_000, help="trades missed, then recovered"
    )
    args = parser.parse_args()
    products = [f"SYM{n:02d}USDT" for n in range(args.symbols)]
    with venue_server("binance", products) as venue, tempfile.TemporaryDirectory() as data:
        result = run(venue, args, data)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
