"""wrk: installed when missing, run against 127.0.0.1 only, its report parsed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

from bench.clients import AUTH_HEADERS
from bench.support import HOST, log


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is not installed: installing it with `apt-get install -y wrk`")
    if shutil.which("apt-get") is None:
        raise SystemExit("bench: wrk is missing and apt-get is not available: install wrk")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*prefix, "apt-get", "install", "-y", "wrk"], check=False)
    found = shutil.which("wrk")
    if not found:
        subprocess.run([*prefix, "apt-get", "update"], check=False)
        subprocess.run([*prefix, "apt-get", "install", "-y", "wrk"], check=False)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: could not install wrk (apt-get install -y wrk failed)")
    return found


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(text)
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, output, re.MULTILINE)

    percentiles = {
        int(m[1]): _ms(m[2]) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M)
    }
    rps = find(r"^Requests/sec:\s+([\d.]+)")
    total = find(r"^\s+(\d+) requests in ([\d.]+)(\w+)")
    non2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    errors = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    return {
        "requests_per_second": float(rps[1]) if rps else 0.0,
        "requests": int(total[1]) if total else 0,
        "p50_ms": percentiles.get(50),
        "p75_ms": percentiles.get(75),
        "p90_ms": percentiles.get(90),
        "p99_ms": percentiles.get(99),
        "raw": output if len(percentiles) < 4 else None,
        "non_2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def run_wrk(url: str, *, seconds: float, connections: int, threads: int = 2) -> dict[str, Any]:
    assert url.startswith(f"http://{HOST}:"), url
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        *(f"--header={name}: {value}" for name, value in AUTH_HEADERS.items()),
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)
