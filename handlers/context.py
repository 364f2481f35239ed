"""Access to the application state the lifespan built, from inside a handler."""

from __future__ import annotations

from typing import cast

from connexion.context import scope

from web.state import RequestState

__all__ = ["app_state", "request_header"]


def app_state() -> RequestState:
    return cast(RequestState, scope["state"]["app"])


def request_header(name: str) -> str | None:
    """A request header the contract does not model as a parameter (e.g. `Accept`)."""
    wanted = name.lower().encode()
    for key, value in scope["headers"]:
        if key == wanted:
            return bytes(value).decode("latin-1")
    return None
