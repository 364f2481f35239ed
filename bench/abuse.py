"""Hostile mix: attackers at every limit while a well-behaved client keeps reading.

    .venv/bin/python -m bench.abuse --url http://127.0.0.1:8000 --pid PID \\
        --key WELL_BEHAVED --attacker KEY_A --attacker KEY_B --limited SLOW_KEY --seconds 300

Runs the well-behaved client alone (its unloaded latencies), then again while attackers hold
never-reading exports and streams at every cap, slowloris connections, 64 MiB headers and a
key over its rate limit; then stops the attack and waits for the server's RSS and open
connections to come back. Prints the figures and exits 1 if the well-behaved client saw a
non-2xx answer, its p99 exceeded 3 x unloaded, or RSS and connections did not come back.
`tests/e2e/test_hostile_mix.py` runs the same attackers for a few seconds. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import httpx
import psutil

__all__ = [
    "Attack",
    "Figures",
    "READS",
    "connections_of",
    "percentile",
    "well_behaved",
]

# What the well-behaved client reads, round robin.
READS = (
    "/price/latest?symbol=AAPL",
    "/symbols",
    "/trades?symbol=AAPL&limit=20",
    "/candles?symbol=AAPL&interval=1m&limit=20",
)
_HUGE_HEADER = 64 * 2**20
_CHUNK = b"a" * 65536


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@dataclass
class Figures:
    """What the well-behaved client saw."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    @property
    def only_2xx(self) -> bool:
        return all(200 <= status < 300 for status in self.statuses)


def well_behaved(base: str, key: str, requests: int) -> Figures:
    """`requests` reads over one keep-alive connection, each timed."""
    figures = Figures()
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as client:
        for n in range(requests):
            started = time.perf_counter()
            status = client.get(READS[n % len(READS)]).status_code
            figures.latencies.append(time.perf_counter() - started)
            figures.statuses[status] = figures.statuses.get(status, 0) + 1
    return figures


def connections_of(pid: int, port: int) -> int:
    """TCP connections the server holds on its port (established or closing), by the kernel."""
    return sum(
        1
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.laddr and conn.laddr.port == port and conn.status != psutil.CONN_LISTEN
    )


class Attack:
    """Attackers in threads, until `stop()`; `refusals` counts the answers they got by status
    (0: the server closed the connection without one)."""

    def __init__(self, base: str) -> None:
        address = urlsplit(base)
        assert address.hostname is not None and address.port is not None
        self.base = base
        self.address = (address.hostname, address.port)
        self.stopping = threading.Event()
        self.refusals: dict[int, int] = {}
        self._held: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _count(self, status: int) -> None:
        with self._lock:
            self.refusals[status] = self.refusals.get(status, 0) + 1

    def _connect(self) -> socket.socket:
        sock = socket.socket()
        # A tiny window: whatever the server sends fills it at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(self.address)
        return sock

    def never_reading(self, path: str, key: str) -> int:
        """A GET whose client reads the status line and nothing more; kept open until stop()
        (or the server cuts it). Returns its status."""
        sock = self._connect()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
        status = int(sock.recv(64).split(b" ", 2)[1])
        self._count(status)
        with self._lock:
            self._held.append(sock)
        return status

    def _spawn(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._threads.append(thread)

    def slowloris(self, connections: int, every: float = 0.5) -> None:
        """`connections` clients sending a request head a byte at a time, reconnecting when
        the server closes them."""

        def one() -> None:
            while not self.stopping.is_set():
                with contextlib.suppress(OSError), self._connect() as sock:
                    sock.sendall(b"GET /symbols HTTP/1.1\r\nHost: x\r\n")
                    while not self.stopping.wait(every):
                        sock.sendall(b"X")
                self._count(0)

        for _ in range(connections):
            self._spawn(one)

    def oversized_headers(self, connections: int) -> None:
        """`connections` clients each sending a 64 MiB header, again and again."""

        def one() -> None:
            while not self.stopping.is_set():
                with contextlib.suppress(OSError), self._connect() as sock:
                    sock.sendall(b"GET /symbols HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    for _ in range(_HUGE_HEADER // len(_CHUNK)):
                        if self.stopping.is_set():
                            break
                        sock.sendall(_CHUNK)
                self._count(0)
                # Again soon, not in a hot loop that would measure this process, not the server.
                self.stopping.wait(0.1)

        for _ in range(connections):
            self._spawn(one)

    def over_rate_limit(self, key: str, per_second: float = 50) -> None:
        """A client asking `per_second` times a second with a key whose rate limit is
        smaller."""

        def run() -> None:
            with httpx.Client(base_url=self.base, headers={"X-API-Key": key}) as client:
                while not self.stopping.wait(1 / per_second):
                    with contextlib.suppress(httpx.TransportError):
                        self._count(client.get("/symbols").status_code)

        self._spawn(run)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(15)
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            sock.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Attack]:
        try:
            yield self
        finally:
            self.stop()


def at_every_cap(
    attack: Attack, attackers: list[str], *, exports: int, streams: int, export_path: str
) -> None:
    """Never-reading exports and streams by each attacker key until refused (each key to its
    own cap, together to the instance's): every refusal is counted."""
    for key in attackers:
        for _ in range(exports + 1):
            attack.never_reading(export_path, key)
        for _ in range(streams + 1):
            attack.never_reading("/stream/trades?symbols=AAPL", key)


def export_path(start: str, end: str) -> str:
    return "/export/trades?" + urlencode({"symbols": "AAPL", "start": start, "end": end})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--key", required=True, help="the well-behaved client's key")
    parser.add_argument("--attacker", action="append", required=True, help="attacker keys")
    parser.add_argument("--limited", required=True, help="a key with a small rate limit")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--export-per-key", type=int, default=2)
    parser.add_argument("--streams-per-key", type=int, default=100)
    parser.add_argument("--export-start", default="2026-01-01T00:00:00Z")
    parser.add_argument("--export-end", default="2026-01-02T00:00:00Z")
    args = parser.parse_args()
    port = urlsplit(args.url).port
    assert port is not None
    server = psutil.Process(args.pid)

    unloaded = well_behaved(args.url, args.key, 500)
    rss, held = server.memory_info().rss, connections_of(args.pid, port)
    attack = Attack(args.url)
    with attack.running():
        at_every_cap(
            attack,
            args.attacker,
            exports=args.export_per_key,
            streams=args.streams_per_key,
            export_path=export_path(args.export_start, args.export_end),
        )
        attack.slowloris(50)
        attack.oversized_headers(4)
        attack.over_rate_limit(args.limited)
        loaded = Figures()
        deadline = time.monotonic() + args.seconds
        peak = rss
        while time.monotonic() < deadline:
            window = well_behaved(args.url, args.key, 200)
            loaded.latencies += window.latencies
            for status, count in window.statuses.items():
                loaded.statuses[status] = loaded.statuses.get(status, 0) + count
            peak = max(peak, server.memory_info().rss)
    # The server's own timers (keep-alive, head timeout) close what is left.
    settled = time.monotonic() + 30
    while connections_of(args.pid, port) > held and time.monotonic() < settled:
        time.sleep(0.5)
    after_rss, after_held = server.memory_info().rss, connections_of(args.pid, port)
    print(
        f"unloaded p50 {statistics.median(unloaded.latencies) * 1000:.2f} ms, "
        f"p99 {unloaded.p99 * 1000:.2f} ms"
    )
    print(
        f"loaded   p50 {statistics.median(loaded.latencies) * 1000:.2f} ms, "
        f"p99 {loaded.p99 * 1000:.2f} ms, statuses {loaded.statuses}"
    )
    print(f"attackers got {attack.refusals}")
    print(f"RSS {rss / 2**20:.0f} MiB, peak {peak / 2**20:.0f}, after {after_rss / 2**20:.0f}")
    print(f"connections {held} before, {after_held} after")
    ok = (
        loaded.only_2xx
        and loaded.p99 <= 3 * unloaded.p99
        and after_rss <= rss * 1.2
        and after_held <= held
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
