"""The benchmark scripts stay importable: nothing in make test runs them, so nothing else would
notice a name they import moving away."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("module", sorted(path.stem for path in BENCH.glob("*.py")))
def test_bench_module_imports(module: str) -> None:
    importlib.import_module(f"bench.{module}")
