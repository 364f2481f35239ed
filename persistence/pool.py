"""The read path's connections: plain asyncpg connections, kept open and reused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

__all__ = ["ReadPool", "read_connection", "session_settings"]

# A named prepared statement lives in one server connection, which a transaction-mode pooler
# may not hand back for the next statement: without a statement cache asyncpg sends unnamed
# statements, parsed again with every Bind in the same round trip.
_POOLED: dict[str, Any] = {"statement_cache_size": 0}
# How long a connection whose query was cut short may take to confirm the cancel.
_SETTLE_SECONDS = 1.0


def session_settings(query_timeout: float, *, read_only: bool = False) -> dict[str, str]:
    """The server settings every session of the service starts with."""
    return {
        "statement_timeout": str(int(query_timeout * 1000)),
        # Short index scans dominate; JIT and parallel plans only add latency here.
        "jit": "off",
        "max_parallel_workers_per_gather": "0",
        **({"default_transaction_read_only": "on"} if read_only else {}),
    }


def read_connection(
    url: URL,
    *,
    connect_timeout: float,
    query_timeout: float,
    application_name: str,
    pooled: bool = False,
) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """Opens one read connection on `url`: read-only sessions (the server refuses every write,
    whatever a statement tries) with the service's settings. `pooled`: `url` is a
    transaction-mode pooler, which hands each transaction to any server connection."""
    _, arguments = url.get_dialect()().create_connect_args(url)
    settings = session_settings(query_timeout, read_only=True)
    options = {
        **arguments,
        "timeout": connect_timeout,
        "command_timeout": query_timeout,
        # A pooler refuses other startup parameters, and a SET would not outlive the
        # transaction: behind one, the database role carries these (docs/deploy.md).
        "server_settings": {"application_name": application_name} | ({} if pooled else settings),
        **(_POOLED if pooled else {}),
    }

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**options)

    return connect


class ReadPool:
    """Up to `size` connections, opened on demand and kept for the next request.

    No waiting and no limit here: `persistence.admission.Admission` lets at most `size`
    requests in at a time, in arrival order, so a free connection (or room for a new one) is
    always there. Handing one out is a list pop — SQLAlchemy's pool costs ~100 µs a request
    on greenlet switches, and asyncpg's pool runs a reset round trip on every release.
    """

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], size: int) -> None:
        self.size = size
        self._connect = connect
        self._idle: list[asyncpg.Connection] = []
        self.in_use = 0

    @property
    def open(self) -> int:
        return self.in_use + len(self._idle)

    async def take(self) -> asyncpg.Connection:
        while self._idle:
            # The most recently used: the others may idle out behind a proxy, this one is warm.
            conn = self._idle.pop()
            if not conn.is_closed():
                self.in_use += 1
                return conn
        conn = await self._connect()
        self.in_use += 1
        return conn

    def give(self, conn: asyncpg.Connection, *, discard: bool = False) -> None:
        """Back for reuse. `discard` (a query cut short: it may still run, or the protocol may
        be mid-COPY) and a connection left in a transaction are closed instead, which ends
        whatever the server still does for it at once."""
        self.in_use -= 1
        if discard or conn.is_closed() or conn.is_in_transaction() or len(self._idle) >= self.size:
            conn.terminate()
        else:
            self._idle.append(conn)

    async def retire(self, conn: asyncpg.Connection) -> None:
        """Close a connection whose query was cut short (a timeout, a cancelled request).

        asyncpg has asked the server to cancel the query, over a connection of its own;
        closing at once would abandon that request, and PostgreSQL, which does not watch a
        client's socket while it computes, would run the query to its statement timeout.
        One round trip on the connection waits until the cancel has landed.
        """
        try:
            if not conn.is_closed():
                async with asyncio.timeout(_SETTLE_SECONDS):
                    await conn.fetchval("SELECT 1")
        except Exception:
            pass  # It cannot answer: closing it is all that is left, below.
        finally:
            self.give(conn, discard=True)

    def discard_idle(self) -> None:
        """After the server went away, every idle connection is likely dead too: open fresh
        ones rather than fail a request per stale connection."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.terminate()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.close(timeout=2)
            except (OSError, TimeoutError, asyncpg.InterfaceError):
                conn.terminate()
