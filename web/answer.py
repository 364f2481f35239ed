"""What a data handler answers: a JSON body, its status and headers, and the rows it serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["Answer"]


class Answer(NamedTuple):
    body: dict[str, Any]
    status: int
    headers: Mapping[str, str]
    # What the audit trail records as served: the items of a list, else the one object.
    rows: int = 1
