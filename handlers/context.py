"""Access to the application state the lifespan built, from inside a handler."""

from __future__ import annotations

from typing import cast

from connexion.context import scope

from mdp.state import AppState

__all__ = ["app_state"]


def app_state() -> AppState:
    return cast(AppState, scope["state"]["app"])
