"""What a streaming handler answers: Server-Sent Events, in chunks that say how many they hold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import NamedTuple

__all__ = ["EventStream"]


class EventStream(NamedTuple):
    # Each chunk is written as it comes, with the number of events in it (what the audit
    # trail records as served).
    chunks: AsyncIterator[tuple[bytes, int]]
    headers: Mapping[str, str]
