"""The one way to open the database: its server (DATABASE_URL or embedded), engines, pools."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mdp.embedded import EmbeddedPostgres
from mdp.settings import Settings
from persistence.connections import create_engine
from persistence.pool import ReadPool, read_connection

__all__ = ["Use", "database_server", "open_engine", "open_read_pool"]

logger = logging.getLogger(__name__)

Use = Literal["ingestion", "migrate", "backfill", "keys", "tests", "bench"]

# The CLI's commands migrate and load in bulk: not the request path's statement timeout.
_LONG_STATEMENT_SECONDS = 24 * 3600


@asynccontextmanager
async def database_server(settings: Settings) -> AsyncIterator[URL]:
    """DATABASE_URL, or the embedded PostgreSQL under the data directory, started here and
    stopped on the way out (not left to atexit, which uvicorn skips on SIGTERM)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir / "postgres")
    url = await asyncio.to_thread(embedded.start)
    logger.info(
        "DATABASE_URL not set: using the embedded PostgreSQL in %s (data kept across restarts)",
        embedded.pgdata,
    )
    try:
        yield url
    finally:
        if await asyncio.to_thread(embedded.stop):
            logger.info("embedded PostgreSQL stopped")


def open_read_pool(settings: Settings, url: URL, *, exports: bool = False) -> ReadPool:
    """The API's read connections, on DATABASE_READ_URL when set; `mdp-api` on the server.

    Reads are single statements in autocommit (no BEGIN/ROLLBACK round trip). They may go to
    a read replica or through a pooler; everything else needs the primary, directly. They
    never write (the write path materialises candles): the server holds them to it.
    `exports`: the export pool instead (EXPORT_MAX_CONCURRENT connections, `mdp-export`).
    """
    connect = read_connection(
        settings.database_read_url or url,
        connect_timeout=settings.db_connect_timeout_seconds,
        query_timeout=settings.db_query_timeout_seconds,
        application_name="mdp-export" if exports else "mdp-api",
        pooled=settings.database_read_pooler == "transaction",
    )
    return ReadPool(connect, settings.export_max_concurrent if exports else settings.db_pool_size)


def open_engine(settings: Settings, url: URL, use: Use) -> AsyncEngine:
    """An engine on `url` sized and timed for `use`; it shows as `mdp-<use>` on the server."""
    long_running = use in ("migrate", "backfill", "keys", "bench")
    query_timeout = _LONG_STATEMENT_SECONDS if long_running else settings.db_query_timeout_seconds
    return create_engine(
        url,
        # Ingestion has a connection of its own, so read load can never starve it, and a
        # second for the API keys' refresh and last-used writes; tests sometimes hold one
        # connection while a second one checks.
        pool_size=2 if use in ("tests", "ingestion") else 1,
        connect_timeout=settings.db_connect_timeout_seconds,
        query_timeout=query_timeout,
        application_name=f"mdp-{use}",
    )
