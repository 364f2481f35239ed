"""First-come, first-served admission to the read pool, with early refusal when overloaded."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar

from errors import DatabaseUnavailable, Overloaded

__all__ = ["Abandoned", "Admission", "client_gone"]


class Abandoned(Exception):
    """A request left the queue for a slot because nobody waits for its answer any more."""


# Set per request by the web layer: returns once the request's client has gone away. A request
# queued for a slot then leaves the queue at once instead of taking its turn (and a
# connection) for an answer nobody reads.
client_gone: ContextVar[Callable[[], Awaitable[object]] | None] = ContextVar(
    "client_gone", default=None
)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _abandon(waiter: asyncio.Future[None], watcher: asyncio.Future[object]) -> None:
    if not watcher.cancelled() and watcher.exception() is None and not waiter.done():
        waiter.set_exception(Abandoned())


# How much one new hold time moves the running estimate (an exponential moving average).
_SMOOTHING = 0.1


class Admission:
    """`slots` holders at a time (one per pooled connection); the others wait in arrival order.

    SQLAlchemy's pool lets a newcomer take a connection that was just returned while earlier
    waiters are still waking up, so under load some requests wait far longer than others. Here
    a released slot goes straight to the longest waiter. A request that would wait longer than
    `max_wait` seconds (estimated from the queue, recent hold times and how long the longest
    waiter has waited), or would find `max_waiting` requests ahead of it, is refused at once
    with `Overloaded`, before any work is done for it. A waiter whose client goes away
    (`client_gone`) leaves the queue at once with `Abandoned`.
    """

    def __init__(self, slots: int, *, max_waiting: int, max_wait: float, timeout: float) -> None:
        self.slots = slots
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.free = slots
        # Each waiter with the time it arrived.
        self.waiters: collections.deque[tuple[asyncio.Future[None], float]] = collections.deque()
        # Seconds a slot is typically held; starts at a guess a few answers correct.
        self.hold_seconds = 0.005

    def expected_wait(self) -> float:
        """Seconds a newcomer would wait behind the current queue: at least as long as the
        longest waiter has already waited (when holders are slow, the queue barely moves)."""
        estimate = (len(self.waiters) + 1) * self.hold_seconds / self.slots
        if self.waiters:
            estimate = max(estimate, time.monotonic() - self.waiters[0][1])
        return estimate

    def _refuse_now(self) -> bool:
        return len(self.waiters) >= self.max_waiting or self.expected_wait() > self.max_wait

    def _release(self) -> None:
        while self.waiters:
            waiter, _ = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        entry = (waiter, time.monotonic())
        self.waiters.append(entry)
        # A timer, not asyncio.timeout(): most requests under load wait here, so it is hot.
        expiry = loop.call_later(timeout, _expire, waiter)
        gone = client_gone.get()
        watcher = None
        if gone is not None:
            watcher = asyncio.ensure_future(gone())
            watcher.add_done_callback(functools.partial(_abandon, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a slot just as we gave up: pass it on, never lose it.
                self._release()
            else:
                # Unless a release already skipped it as done.
                with contextlib.suppress(ValueError):
                    self.waiters.remove(entry)
            raise
        finally:
            expiry.cancel()
            if watcher is not None:
                watcher.cancel()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block; waits at most `timeout` seconds in the queue (a
        slot held that long means the database hangs, not that the instance is busy)."""
        if self.free and not self.waiters:
            self.free -= 1
        elif self._refuse_now():
            raise Overloaded(
                f"{len(self.waiters)} requests are already waiting for a database connection."
            )
        else:
            try:
                await self._wait(self.timeout)
            except TimeoutError:
                raise DatabaseUnavailable(
                    f"No database connection became free within {self.timeout:g} s."
                ) from None
        started = time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - started
            self.hold_seconds += _SMOOTHING * (held - self.hold_seconds)
            self._release()
