"""Server CPU per request of the HTTP protocols mdp serve could use, on a trivial app.

    .venv/bin/python -m bench.protocols [--requests 5000] [--rounds 3]

uvicorn's httptools protocol (no limit on a request head's size or time), mdp's bounded
subclass of it (mdp/http_protocol.py) and h11 with `h11_max_incomplete_event_size` (a size
bound only): each served by a process of its own, one keep-alive client sending a request the
size of a real one; the figure is the server process's user + system CPU time per request, so
the client's own cost is left out. Rounds alternate the protocols.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys

import psutil

from tests.support import free_port, wait_until

_SERVER = r"""
import sys, uvicorn
from mdp.http_protocol import Limits, bounded_protocol
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
kind, port = sys.argv[1], int(sys.argv[2])
options = {"host": "127.0.0.1", "port": port, "log_config": None, "access_log": False}
if kind == "httptools":
    options["http"] = "httptools"
elif kind == "bounded":
    options["http"] = bounded_protocol(Limits(8192, 16384, 10.0, 30.0))
else:
    options.update(http="h11", h11_max_incomplete_event_size=16384)
uvicorn.run(app, loop="uvloop", **options)
"""
_REQUEST = (
    b"GET /price/latest?symbol=AAPL HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n"
    b"X-API-Key: mdp_0123456789ab_" + b"s" * 43 + b"\r\n\r\n"
)
PROTOCOLS = ("httptools", "bounded", "h11")


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port))
    except OSError:
        return None


def cpu_per_request(kind: str, requests: int) -> float:
    """Microseconds of the server's CPU per request."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVER, kind, str(port)])
    try:
        sock = wait_until(lambda: _connect(port), what=f"{kind} server listening")
        assert sock is not None

        def send(count: int) -> None:
            for _ in range(count):
                sock.sendall(_REQUEST)
                answer = b""
                while not answer.endswith(b'{"ok":true}'):
                    answer += sock.recv(4096)

        send(1000)  # warm
        process = psutil.Process(server.pid)
        before = sum(process.cpu_times()[:2])
        send(requests)
        used = sum(process.cpu_times()[:2]) - before
        sock.close()
        return used / requests * 1e6
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {kind: [] for kind in PROTOCOLS}
    for _ in range(args.rounds):
        for kind in PROTOCOLS:
            runs[kind].append(cpu_per_request(kind, args.requests))
    for kind, values in runs.items():
        shown = ", ".join(f"{value:.0f}" for value in values)
        print(f"{kind:10} {statistics.median(values):5.0f} µs per request (runs: {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
