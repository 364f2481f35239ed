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
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/feeds.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
from sqlalchemy import URL, make_url  # noqa: E402

from bench.support import EmbeddedServer, git_revision, recreate_database  # noqa: E402
from handlers.sse import decode_id  # noqa: E402
from tests.e2e.sse import parse_events  # noqa: E402
from tests.support import Service, serve, wait_until  # noqa: E402
from tests.support.venues import venue_server  # noqa: E402


def _status(service: Service) -> dict[str, Any]:
    # A generous timeout: a recovery's batches may hold the ingesting instance's loop a while,
    # which the figures show; the bench must not fail on it.
    response = httpx.get(f"{service.base}/status/ingestion", timeout=60)
    response.raise_for_status()
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


class Replay:
    """The local Binance (tests/support/venues.py) in a process of its own, printing `rate`
    trades a second in bursts every 50 ms (a burst that falls behind is made up by the next):
    a load generator sharing this process would take the GIL from the measuring threads and
    inflate every latency they see. Driven over a pipe."""

    def __init__(self, products: list[str]) -> None:
        self.products = products
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_replay, args=(child, products), daemon=True)
        self._process.start()
        self.url, self.rest_url = self._pipe.recv()

    def _ask(self, *command: Any) -> Any:
        self._pipe.send(command)
        answer = self._pipe.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def subscribed(self) -> int:
        count: int = self._ask("subscribed")
        return count

    def burst(self, count: int, *, publish: bool = True) -> int:
        printed: int = self._ask("burst", count, publish)
        return printed

    def go_offline(self, offline: bool = True) -> None:
        self._ask("offline", offline)

    def start_load(self, rate: int, duration: float) -> None:
        self._ask("load", rate, duration)

    def load_running(self) -> bool:
        running: bool = self._ask("running")
        return running

    def join_load(self) -> tuple[int, float]:
        """Trades printed and seconds the load lasted."""
        result: tuple[int, float] = self._ask("join")
        return result

    def close(self) -> None:
        self._ask("close")
        self._process.join(timeout=10)


def _replay(pipe: Connection, products: list[str]) -> None:
    with venue_server("binance", products) as venue:
        pipe.send((venue.url, venue.rest_url))
        load: threading.Thread | None = None
        paced: dict[str, Any] = {"printed": 0, "elapsed": 0.0}

        def pace(rate: int, duration: float) -> None:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < duration:
                due = int(rate * elapsed) - paced["printed"]
                if due > 0:
                    paced["printed"] += venue.burst(due)
                time.sleep(0.05)
            paced["elapsed"] = time.monotonic() - started

        while True:
            command, *args = pipe.recv()
            try:
                if command == "close":
                    pipe.send(None)
                    return
                if command == "subscribed":
                    pipe.send(venue.subscribed())
                elif command == "burst":
                    pipe.send(venue.burst(args[0], publish=args[1]))
                elif command == "offline":
                    venue.go_offline(args[0])
                    pipe.send(None)
                elif command == "load":
                    paced.update(printed=0, elapsed=0.0)
                    load = threading.Thread(target=pace, args=args, daemon=True)
                    load.start()
                    pipe.send(None)
                elif command == "running":
                    pipe.send(load is not None and load.is_alive())
                elif command == "join":
                    assert load is not None
                    load.join()
                    pipe.send((paced["printed"], paced["elapsed"]))
            except Exception as exc:  # noqa: BLE001 - handed to the bench, which raises it
                pipe.send(exc)


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _database_cpu_seconds(data_dir: str) -> float:
    """CPU seconds of the embedded PostgreSQL under `data_dir`: its postmaster and every
    backend and worker it started."""
    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        if data_dir in " ".join(process.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                total += _cpu_seconds(process.pid)
                for child in process.children():
                    total += _cpu_seconds(child.pid)
    return total


class StreamLatency:
    """A client of `/stream/trades?symbols=<symbol>` in a process of its own (parsing a
    thousand events a second on a thread here would take the GIL from the one timing
    `/price/latest`): print-to-receipt seconds of every trade event until `stop()`."""

    def __init__(self, service: Service, symbol: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results, results = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_stream_latency,
            args=(f"{service.base}/stream/trades", symbol, self._stop, results),
            daemon=True,
        )
        self._process.start()
        # Subscribed before the load starts, or it would miss the first batches.
        self._results.recv()

    def stop(self) -> list[tuple[float, float]]:
        """Per trade event, seconds from its print and from its batch's stamp to its receipt
        (the stream's heartbeat comments end the wait for the next event)."""
        self._stop.set()
        seconds: list[tuple[float, float]] = self._results.recv()
        self._process.join(timeout=10)
        return seconds


def _stream_latency(url: str, symbol: str, stop: Any, results: Connection) -> None:
    seconds: list[tuple[float, float]] = []
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
        client.stream("GET", url, params={"symbols": symbol}) as response,
    ):
        results.send("open")

        def lines() -> Iterator[str]:
            for line in response.iter_lines():
                if stop.is_set():
                    return
                yield line

        for event in parse_events(lines()):
            position = decode_id(event.id)
            if event.kind == "trade" and position is not None:
                now = datetime.now(UTC)
                printed = datetime.fromisoformat(event.data["timestamp"])
                seconds.append(
                    ((now - printed).total_seconds(), (now - position[0]).total_seconds())
                )
    results.send(seconds)


@contextlib.contextmanager
def instances(
    venue: Replay, url: URL, *, interval: float, split: bool, pin: bool
) -> Iterator[tuple[Service, Service]]:
    """The ingesting instance and the one reads are measured on: with `split`, a second
    instance with ingestion off (docs/deploy.md: a heavy feed's leader apart from the readers),
    else the ingesting instance itself."""
    env = {
        "FEED": "binance",
        "SYMBOLS": ",".join(venue.products),
        "FEED_URL": venue.url,
        "FEED_REST_URL": venue.rest_url,
        "INGESTION_INTERVAL_SECONDS": str(interval),
        # Idle streams send a comment a second: the latency client notices its stop in time.
        "STREAM_HEARTBEAT_SECONDS": "1",
        "AUTH_MODE": "off",
    }
    with serve(url, env, ready="/status/ingestion") as ingester:
        if not split:
            yield ingester, ingester
            return
        with serve(url, {**env, "INGESTION_ENABLED": "false"}) as reader:
            if pin:
                # The reader on a core of its own, as an instance of its own would be; the
                # venue, the ingesting instance and PostgreSQL stay on the others, which they
                # inherited from this process.
                os.sched_setaffinity(reader.process.pid, {0})
            yield ingester, reader


def run(venue: Replay, args: argparse.Namespace, url: URL, data_dir: str) -> dict[str, Any]:
    with instances(venue, url, interval=args.interval, split=not args.single, pin=args.pin) as (
        service,
        reader,
    ):
        wait_until(venue.subscribed, what="the feed subscribed", timeout=60)
        symbol = venue.products[0]
        printed = venue.burst(len(venue.products))
        _stored(service, printed, 60)
        with httpx.Client(base_url=reader.base, timeout=10) as client:
            wait_until(
                lambda: client.get(f"/price/latest?symbol={symbol}").status_code,
                lambda status: status == 200,
                what="the reader knows a price",
            )
            stream = StreamLatency(reader, symbol)
            if args.pin:
                # Every other process started: this one, whose requests are timed, joins the
                # reader, as a client elsewhere would not queue behind the venue's CPU.
                os.sched_setaffinity(0, {0})
            # Idle sampled as loaded is: one request, one status poll, 50 ms apart, for as
            # long as the load will last (up to 20 s), the feed quiet. 200 requests back to
            # back gave a p99 eight times lower than this same pattern with no load at all.
            idle_samples: list[float] = []
            quiet = time.monotonic() + min(args.duration, 20.0)
            while time.monotonic() < quiet:
                idle_samples.extend(_latencies(client, symbol, 1))
                _status(service)
                time.sleep(0.05)
            idle = _p99(idle_samples)
            loaded: list[float] = []
            ages: list[float] = []
            cpu = (
                _cpu_seconds(service.process.pid),
                _cpu_seconds(reader.process.pid),
                _database_cpu_seconds(data_dir),
            )
            venue.start_load(args.rate, args.duration)
            # Sampled while the load runs, on this thread: the load keeps its own pace.
            while venue.load_running():
                loaded.extend(_latencies(client, symbol, 1))
                age = _status(service)["seconds_since_last_batch"]
                if age is not None:
                    ages.append(age)
                time.sleep(0.05)
            offered, elapsed = venue.join_load()
            printed += offered
            drained = _stored(service, printed, 600)
            ingester_cpu = _cpu_seconds(service.process.pid) - cpu[0]
            reader_cpu = _cpu_seconds(reader.process.pid) - cpu[1]
            database_cpu = _database_cpu_seconds(data_dir) - cpu[2]
            streamed = stream.stop()
        venue.go_offline()
        missed = venue.burst(args.recover, publish=False)
        venue.go_offline(False)
        recovery = _stored(service, printed + missed, 3600)
    return {
        "commit": git_revision(),
        "instances": ("one" if args.single else "one ingesting, one reading")
        + (" (the reader alone on CPU 0)" if args.pin else ""),
        "symbols": len(venue.products),
        "offered_trades_per_second": round(offered / elapsed),
        "stored_trades_per_second": round(offered / (elapsed + drained)),
        "ingester_cpu_us_per_trade": round(ingester_cpu / offered * 1e6, 1),
        "reader_cpu_us_per_trade": round(reader_cpu / offered * 1e6, 1)
        if not args.single
        else None,
        "database_cpu_us_per_trade": round(database_cpu / offered * 1e6, 1),
        "heartbeat_age_max_seconds": round(max(ages, default=0.0), 3),
        "heartbeat_limit_seconds": 1.5 * args.interval,
        "price_latest_p99_idle_ms": round(idle * 1000, 2),
        "price_latest_p99_loaded_ms": round(_p99(loaded) * 1000, 2) if loaded else None,
        "stream_trade_events": len(streamed),
        "stream_print_to_client_p50_ms": _ms(statistics.median(p for p, _ in streamed))
        if streamed
        else None,
        "stream_print_to_client_p99_ms": _ms(_p99([p for p, _ in streamed])) if streamed else None,
        "stream_commit_to_client_p50_ms": _ms(statistics.median(c for _, c in streamed))
        if streamed
        else None,
        "stream_commit_to_client_p99_ms": _ms(_p99([c for _, c in streamed])) if streamed else None,
        "recovered_trades": missed,
        "recovered_trades_per_second": round(missed / recovery) if recovery else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--rate", type=int, default=20_000, help="trades a second, all symbols")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="INGESTION_INTERVAL_SECONDS (its default)"
    )
    parser.add_argument(
        "--single",
        action="store_true",
        help="read from the ingesting instance (default: a second instance, ingestion off)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the reader and the timed client on CPU 0, all else on the others (not --single)",
    )
    parser.add_argument(
        "--recover", type=int, default=1_000_000, help="trades missed, then recovered"
    )
    args = parser.parse_args()
    if args.pin:
        if args.single or len(os.sched_getaffinity(0)) < 2:
            parser.error("--pin needs a second instance and two CPUs")
        # Inherited by every process started from here: the venue, the services, PostgreSQL.
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {0})
    products = [f"SYM{n:02d}USDT" for n in range(args.symbols)]
    embedded = EmbeddedServer()
    server = embedded.start()
    venue = Replay(products)
    try:
        url = make_url(asyncio.run(recreate_database(server, "mdp_feeds")))
        result = run(venue, args, url, str(embedded.pgdata))
    finally:
        venue.close()
        embedded.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
