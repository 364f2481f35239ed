"""The request being served, made current for its handler, and the watch on its client."""

from __future__ import annotations

import functools

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from persistence.admission import client_gone
from web.request import disconnected, serving

__all__ = ["RequestScope"]


class RequestScope:
    """Plain ASGI middleware, the last before Connexion hands the request to its handler: the
    scope becomes `web.request.current_scope()`, and until the answer starts a wait for a
    database connection ends when the client goes away (`persistence.admission.client_gone`:
    the handler's `Abandoned` becomes a 499, see mdp.problems)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start":
                # From here the response reads `receive` (a stream watches its client
                # itself): nothing else may.
                client_gone.set(None)
            await send(message)

        current = serving.set(scope)
        watch = client_gone.set(functools.partial(disconnected, receive))
        try:
            await self.app(scope, receive, answer)
        finally:
            client_gone.reset(watch)
            serving.reset(current)
