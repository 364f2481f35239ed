"""Registers the shared fixtures of tests/support for every tier, runs the tiers that start
real processes first, and keeps tests that depend on wall-clock timing out of parallel workers
(they run in a serial pass: `pytest -m timing`)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.support.fixtures"]

TESTS = Path(__file__).resolve().parent
# Slowest modules first: xdist hands modules out in this order, so the long ones start at once
# and the many short ones fill the workers at the end, instead of one long module running alone.
TIERS = ("e2e", "contract", "deploy", "api", "integration", "unit")


def _tier(item: pytest.Item) -> int:
    tier = item.path.relative_to(TESTS).parts[0]
    return TIERS.index(tier) if tier in TIERS else len(TIERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Stable: each module's tests keep their order and stay together.
    items.sort(key=_tier)
    # An xdist worker has `workerinput`. A timing test beside other workers' load measures the
    # load, not the service: it is skipped there, and `make test` runs it alone afterwards.
    if not hasattr(config, "workerinput"):
        return
    serial = pytest.mark.skip(reason="timing: runs serially, in `pytest -m timing`")
    for item in items:
        if item.get_closest_marker("timing") is not None:
            item.add_marker(serial)
