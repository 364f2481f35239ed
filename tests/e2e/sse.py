"""Reading Server-Sent Events the way a client does, for the stream tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Event", "read_events"]


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    id: str | None
    data: dict[str, Any]


def read_events(response: httpx.Response, *, comments: list[str] | None = None) -> Iterator[Event]:
    """The events of an SSE body as they arrive (comments collected on the side)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:
            yield Event(fields["event"], fields.get("id"), json.loads(fields["data"]))
            fields = {}
        else:
            fields = {}  # a block without data (e.g. `retry:`) dispatches nothing
