"""Access to the application state the lifespan built, from inside a handler."""

from __future__ import annotations

from typing import cast

from connexion.context import context

from web.request import current_scope
from web.state import RequestState

__all__ = ["api_key_id", "app_state", "key_cap", "request_header"]


def app_state() -> RequestState:
    return cast(RequestState, current_scope()["state"]["app"])


def api_key_id() -> str | None:
    """The id of the API key the request was admitted with; None when access is off."""
    user: str | None = context.get("user")
    return user


def key_cap(name: str, default: int) -> int:
    """The request's key's own cap `name` (`max_exports`, `max_streams`, set with `mdp keys`),
    else `default`, the instance's setting."""
    token_info = context.get("token_info") or {}
    own: int | None = token_info.get(name)
    return default if own is None else own


def request_header(name: str) -> str | None:
    """A request header the contract does not model as a parameter (e.g. `Accept`)."""
    wanted = name.lower().encode()
    for key, value in current_scope()["headers"]:
        if key == wanted:
            return bytes(value).decode("latin-1")
    return None
