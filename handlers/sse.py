"""The Server-Sent Events wire format of the streams: event ids, events, bounds."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from web import encoding

__all__ = [
    "HEADERS",
    "HEARTBEAT",
    "OPENED",
    "OVERFLOW",
    "Bounds",
    "decode_id",
    "encode_id",
    "event",
    "unreplayable",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Ids as encode_id writes them, within what a datetime and a bigint hold.
_EVENT_ID = re.compile(r"^([0-9a-f]{1,14})-([0-9a-f]{1,15})$")
_NEVER = (datetime.max.replace(tzinfo=UTC), 0)
# What a proxy must not do to a stream: buffer it (nginx honours this header).
HEADERS = {"X-Accel-Buffering": "no"}
# The first bytes of every stream, so clients see it open before any event: a quick
# reconnection (1 s, not a browser's default 3 s) after the stream ends, and a comment.
OPENED = b"retry: 1000\n: stream open\n\n"
HEARTBEAT = b": heartbeat\n\n"


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def encode_id(moment: datetime, number: int) -> str:
    """An opaque event id: a time and a number, both needed to resume exactly."""
    return f"{_micros(moment):x}-{number:x}"


def decode_id(value: str | None) -> tuple[datetime, int] | None:
    """The (time, number) of a Last-Event-ID; one this service cannot have issued reads as
    a time to come, which is answered with a `reset`."""
    if value is None:
        return None
    match = _EVENT_ID.match(value)
    if match is None:
        return _NEVER
    return _EPOCH + timedelta(microseconds=int(match[1], 16)), int(match[2], 16)


def unreplayable(moment: datetime, horizon_seconds: float) -> str | None:
    """Why a stream cannot resume exactly from `moment`, if it cannot."""
    now = datetime.now(UTC)
    if moment > now:
        return "not_issued"
    if moment < now - timedelta(seconds=horizon_seconds):
        return "too_old"
    return None


def event(kind: str, data: Any, event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\n".encode() + b"data: " + encoding.dumps(data) + b"\n\n"


class Bounds:
    """A stream's end: after `limit` events or `duration` seconds, whichever comes first."""

    def __init__(self, limit: int | None, duration: float | None, heartbeat: float) -> None:
        loop = asyncio.get_running_loop()
        self._left = limit
        self._deadline = loop.time() + duration if duration is not None else None
        self._heartbeat = heartbeat

    @property
    def done(self) -> bool:
        return self._left == 0 or self.wait() <= 0

    def count(self, events: int = 1) -> None:
        if self._left is not None:
            self._left -= events

    def allows(self, events: int) -> bool:
        """Whether `events` more events fit within `limit`."""
        return self._left is None or self._left >= events

    def wait(self) -> float:
        """How long to wait for the next item before a heartbeat is due (or the stream ends)."""
        if self._deadline is None:
            return self._heartbeat
        return min(self._heartbeat, self._deadline - asyncio.get_running_loop().time())


# The last event of a stream whose client fell behind (it resumes with Last-Event-ID).
OVERFLOW = event("overflow", {"detail": "The client fell behind the stream."})
