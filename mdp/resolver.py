"""operationIds to handlers: a camelCase id names a coroutine function of the handlers package."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

from connexion.exceptions import ResolverError

__all__ = ["HandlerResolver", "handler_name"]

# Short camelCase, as generated clients name their methods after it: `listCandles`.
_CAMEL_CASE = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]+)*")
_HUMP = re.compile(r"[A-Z]")


def handler_name(operation_id: str) -> str:
    """`listCandles` -> `list_candles`; anything but short camelCase is refused."""
    if not _CAMEL_CASE.fullmatch(operation_id):
        raise ResolverError(f'operationId "{operation_id}" is not camelCase (e.g. "listCandles")')
    return _HUMP.sub(lambda hump: "_" + hump[0].lower(), operation_id)


class HandlerResolver:
    """Resolves `listCandles` to the `async def list_candles` that exactly one module of the
    handlers package defines (`handlers.market`), so the contract's ids stay free of module
    paths and a handler may move between modules without renaming the operation.

    `add_api(resolver=...)` takes it as the callable from operationId to function that
    Connexion's `Resolver` is built around. The operation keeps the contract's id: Connexion
    routes, secures and validates by it, and metrics and audit lines are labelled with it.
    `.spectral.yaml`'s `mdp-operation-id-handler` applies the same rule to the spec, so a
    dangling id fails the lint before start-up does.
    """

    def __init__(self, package: str = "handlers") -> None:
        self.package = package

    def __call__(self, operation_id: str) -> Callable[..., Any]:
        return self._find(operation_id)

    @functools.cached_property
    def _modules(self) -> list[ModuleType]:
        package = importlib.import_module(self.package)
        return [
            importlib.import_module(f"{self.package}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__)
        ]

    def _find(self, operation_id: str) -> Callable[..., Any]:
        name = handler_name(operation_id)
        found = [
            function
            for module in self._modules
            if inspect.iscoroutinefunction(function := getattr(module, name, None))
            and function.__module__ == module.__name__
        ]
        if len(found) != 1:
            where = ", ".join(f"{f.__module__}.{name}" for f in found) or "none"
            raise ResolverError(
                f'operationId "{operation_id}": expected one `async def {name}` in the '
                f"{self.package} package, found {where}"
            )
        return found[0]
