"""The request being served, as the composing package and the handlers both reach it."""

from __future__ import annotations

from connexion.context import scope
from starlette.types import Receive

__all__ = ["current_scope", "disconnected"]

# The ASGI scope of the request being served, straight from the context variable behind
# Connexion's `scope` proxy: each lookup through the proxy costs about a microsecond.
current_scope = scope._get_current_object


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone away. Reads the request's messages until then: call it
    only for a request whose body nobody else reads (every operation of the contract is a GET)."""
    while (await receive())["type"] != "http.disconnect":
        pass
