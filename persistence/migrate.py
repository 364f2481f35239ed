"""Bring a database to the newest schema with Alembic, safely from several instances at once."""

from __future__ import annotations

import asyncio
import weakref
from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["alembic_config", "upgrade"]


def alembic_config() -> Config:
    # Built in code, not from an ini file: fileConfig() would reset the service's logging.
    config = Config()
    config.set_main_option("script_location", str(files("persistence") / "migrations"))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


# Alembic's `context` and `op` are process-wide: env.py's advisory lock serialises processes,
# this serialises the upgrades of one process (one lock per event loop).
_local_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Run pending migrations on `engine`; safe from several instances at once."""
    lock = _local_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, engine.connect() as conn:
        await conn.run_sync(_upgrade, revision)
        await conn.commit()
