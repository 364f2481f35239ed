"""Dependencies point one way: each package imports only what lies below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each package must never import, at run time or for type checking alone. Nothing imports
# handlers (the spec names them); handlers never import the package that assembles them.
FORBIDDEN = {
    "errors": {"persistence", "ingestion", "live", "web", "access", "handlers", "mdp", "connexion"},
    "persistence": {
        "ingestion",
        "live",
        "web",
        "access",
        "handlers",
        "mdp",
        "connexion",
        "starlette",
    },
    "ingestion": {"live", "web", "access", "handlers", "mdp", "connexion", "starlette"},
    "live": {"ingestion", "web", "access", "handlers", "mdp", "connexion", "starlette"},
    "web": {"access", "handlers", "mdp"},
    "access": {"ingestion", "live", "web", "handlers", "mdp"},
    "handlers": {"access", "mdp"},
    "mdp": {"handlers"},
}


def imported_packages(source: str) -> set[str]:
    """The top-level packages a module's absolute imports name, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def test_imported_packages_sees_nested_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import persistence.trades\n"
        "if TYPE_CHECKING:\n"
        "    from mdp.state import AppState\n"
        "def handler():\n"
        "    import live.broadcaster as b\n"
        "from . import sibling\n"
    )
    assert imported_packages(source) == {"typing", "persistence", "mdp", "live"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules found in {package}/"
    offending = {
        str(path.relative_to(ROOT)): sorted(
            imported_packages(path.read_text()) & FORBIDDEN[package]
        )
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}
