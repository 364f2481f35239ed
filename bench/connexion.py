"""What each adaptation of Connexion in mdp/connexion_adaptations.py saves per request.

The app is built as `mdp serve` builds it and, beside it, once without each adaptation (the
stock Connexion class in its place) and once with none. Requests are ASGI calls in this
process, with no socket and no server, so the figures are the stack's own CPU time per
request (process time: what other work on the machine takes does not count): medians of
`--repeat` rounds of `--requests` each, the variants interleaved. AUTH_MODE is `required`, as
deployed, with a real key.

    .venv/bin/python -m bench.connexion                       # the bench's embedded PostgreSQL
    .venv/bin/python -m bench.connexion --database-url postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

if __package__ in (None, ""):  # `python bench/connexion.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402
from connexion.middleware.request_validation import RequestValidationMiddleware  # noqa: E402
from connexion.middleware.routing import RoutingMiddleware  # noqa: E402
from connexion.middleware.security import SecurityMiddleware  # noqa: E402
from connexion.middleware.swagger_ui import SwaggerUIMiddleware  # noqa: E402
from starlette.types import ASGIApp, Message  # noqa: E402

from bench.support import (  # noqa: E402
    EmbeddedServer,
    Server,
    as_asyncpg_dsn,
    log,
    recreate_database,
)
from mdp import connexion_adaptations as adapted  # noqa: E402
from mdp.app import create_app  # noqa: E402
from mdp.settings import Settings, normalise_database_url  # noqa: E402
from tests.support import wait_until_async  # noqa: E402
from tests.support.keys import provision_key  # noqa: E402

DATABASE = "mdp_bench_connexion"
# A secured operation and a public one (the bench's thinnest margins; no database read).
PATHS = ("/metrics", "/health")

# Each variant: the adaptations left out (module attribute -> what takes its place).
_STOCK: dict[str, Any] = {
    "SwaggerUIMiddleware": SwaggerUIMiddleware,
    "RoutingMiddleware": RoutingMiddleware,
    "SecurityMiddleware": SecurityMiddleware,
    "RequestValidationMiddleware": RequestValidationMiddleware,
    "install": lambda app: None,
}
VARIANTS: dict[str, tuple[str, ...]] = {
    "as served": (),
    **{f"without {name}": (name,) for name in _STOCK},
    "stock Connexion": tuple(_STOCK),
}


@contextlib.contextmanager
def _without(names: tuple[str, ...]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(mock.patch.object(adapted, name, _STOCK[name]))
        yield


@contextlib.asynccontextmanager
async def _running(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """The app's lifespan, started and stopped; yields the state requests get a copy of."""
    state: dict[str, Any] = {}
    messages: asyncio.Queue[Message] = asyncio.Queue()
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()
        elif message["type"].startswith("lifespan.shutdown"):
            stopped.set()

    await messages.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, messages.get, send)
    )
    await started.wait()
    try:
        yield state
    finally:
        await messages.put({"type": "lifespan.shutdown"})
        await stopped.wait()
        await task


def _caller(app: ASGIApp, state: dict[str, Any], key: str) -> Callable[[str], Any]:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def call(target: str) -> int:
        path, _, query = target.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000"), (b"x-api-key", key.encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": state.copy(),
        }
        received = False
        status = 0

        async def receive() -> Message:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    return call


async def _measure(dsn: str, requests: int, repeat: int) -> dict[str, dict[str, float]]:
    url = normalise_database_url(dsn)
    key = await provision_key(url)
    settings = Settings(database_url=url, ingestion_enabled=False, log_level="WARNING")
    async with contextlib.AsyncExitStack() as stack:
        callers = {}
        for variant, names in VARIANTS.items():
            with _without(names):
                app = create_app(settings)
            state = await stack.enter_async_context(_running(app))
            callers[variant] = _caller(app, state, key)
        for call in callers.values():
            # The key ring loads once the app has reached its database.
            ready = functools.partial(call, "/metrics")
            await wait_until_async(ready, lambda status: status == 200, what="the key ring")
            for path in PATHS:
                for _ in range(200):
                    await call(path)
        rounds: dict[str, dict[str, list[float]]] = {v: {p: [] for p in PATHS} for v in VARIANTS}
        for _ in range(repeat):
            for variant, call in callers.items():
                for path in PATHS:
                    started = time.process_time()
                    for _ in range(requests):
                        await call(path)
                    elapsed = time.process_time() - started
                    rounds[variant][path].append(elapsed / requests * 1e6)
    return {
        variant: {path: statistics.median(times) for path, times in paths.items()}
        for variant, paths in rounds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="a PostgreSQL server (default: the embedded one)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds per variant and path")
    args = parser.parse_args()
    embedded = None if args.database_url else EmbeddedServer()
    try:
        server = (
            embedded.start() if embedded is not None else Server(as_asyncpg_dsn(args.database_url))
        )
        dsn = asyncio.run(recreate_database(server, DATABASE))
        log(f"{len(VARIANTS)} variants x {len(PATHS)} paths x {args.repeat} rounds")
        # The event loop `mdp serve` runs on.
        results = uvloop.run(_measure(dsn, args.requests, args.repeat))
    finally:
        if embedded is not None:
            embedded.stop()
    served = results["as served"]
    print("| variant | " + " | ".join(f"`{p}` CPU µs/request (Δ)" for p in PATHS) + " |")
    print("|---|" + "---:|" * len(PATHS))
    for variant, paths in results.items():
        cells = (f"{paths[p]:.1f} ({paths[p] - served[p]:+.1f})" for p in PATHS)
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
