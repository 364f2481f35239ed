"""Clients beside wrk: single timed requests, and the ingestion heartbeat poller."""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench.support import HOST

# The service runs with AUTH_MODE=required, as deployed: start_servers puts its API key here
# and every request of the bench (these clients and wrk) sends it. The floor app ignores it.
AUTH_HEADERS: dict[str, str] = {}


class Client:
    """One keep-alive connection to 127.0.0.1: what a single request costs, nothing else."""

    def __init__(self, port: int, timeout: float = 30) -> None:
        self.port = port
        self.timeout = timeout
        self._conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def get(self, path: str) -> tuple[float, int, bytes]:
        started = time.perf_counter()
        try:
            self._conn.request("GET", path, headers=AUTH_HEADERS)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            raise
        return (time.perf_counter() - started) * 1000, response.status, body

    def json(self, path: str) -> Any:
        _, status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        self._conn.close()


@dataclass
class HeartbeatPoller:
    """Polls /status/ingestion twice a second from its own thread and connection; every
    sample is tagged with the phase (the wrk run) under way."""

    port: int
    phase: str = "idle"
    samples: list[tuple[str, float]] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = Client(self.port, timeout=10)
        try:
            while not self._stop.wait(0.5):
                phase = self.phase
                try:
                    age = client.json("/status/ingestion").get("seconds_since_last_batch")
                except (OSError, RuntimeError, ValueError, http.client.HTTPException):
                    self.failures += 1
                    continue
                if age is not None:
                    self.samples.append((phase, float(age)))
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def worst(self, prefix: str = "") -> float | None:
        ages = [age for phase, age in self.samples if phase.startswith(prefix)]
        return max(ages) if ages else None
