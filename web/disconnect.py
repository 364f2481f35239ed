"""Noticing that a request's client went away, from the ASGI `receive` channel."""

from __future__ import annotations

from starlette.types import Receive

__all__ = ["disconnected"]


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone away. Reads the request's messages until then: call it
    only for a request whose body nobody else reads (every operation of the contract is a GET)."""
    while (await receive())["type"] != "http.disconnect":
        pass
