"""Helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["eventually"]


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    deadline: float = 15.0,
    every: float = 0.01,
) -> None:
    """Poll `condition` until it holds; fail (never hang) after a generous `deadline`."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if loop.time() > give_up:
            pytest.fail(f"timed out after {deadline} s waiting for {what}")
        await asyncio.sleep(every)
