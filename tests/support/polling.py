"""The one way tests wait: poll a probe until its value is accepted, never sleep a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["wait_until", "wait_until_async"]

T = TypeVar("T")

# Generous enough for a loaded CI machine; every wait returns as soon as it can.
TIMEOUT = 30.0


def wait_until(
    probe: Callable[[], T],
    accept: Callable[[T], object] = bool,
    *,
    what: str,
    timeout: float = TIMEOUT,
    every: float = 0.02,
) -> T:
    """Call `probe` until `accept` holds for its value (by default: until it is truthy), and
    return that value; fail naming `what` and the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s; last: {value!r}")
        time.sleep(every)


async def wait_until_async(
    probe: Callable[[], T | Awaitable[T]],
    accept: Callable[[T], object] = bool,
    *,
    what: str,
    timeout: float = TIMEOUT,
    every: float = 0.01,
) -> T:
    """`wait_until` for async tests: the event loop keeps running while it waits, and `probe`
    may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = probe()
        value: T = await outcome if inspect.isawaitable(outcome) else outcome
        if accept(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g}s; last: {value!r}")
        await asyncio.sleep(every)
