"""The request being served, as the composing package and the handlers both reach it."""

from __future__ import annotations

from contextvars import ContextVar

from starlette.types import Receive, Scope

__all__ = ["current_scope", "disconnected", "serving"]

# The ASGI scope of the request being served; set by the composing package's request
# middleware (mdp.request_scope) for the handler and what it calls.
serving: ContextVar[Scope] = ContextVar("serving")


def current_scope() -> Scope:
    return serving.get()


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone away. Reads the request's messages until then: call it
    only for a request whose body nobody else reads (every operation of the contract is a GET)."""
    while (await receive())["type"] != "http.disconnect":
        pass
