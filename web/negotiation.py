"""Content negotiation: reading the items of an `Accept`-like header."""

from __future__ import annotations

__all__ = ["media_range"]


def media_range(value: str) -> tuple[str, float]:
    """One item of an Accept-like header (`text/csv;q=0.5`): its value, lower case, and q."""
    media, *params = (part.strip() for part in value.split(";"))
    quality = 1.0
    for param in params:
        name, _, number = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(number)
            except ValueError:
                quality = 0.0
    return media.lower(), quality
