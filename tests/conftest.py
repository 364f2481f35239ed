"""Registers the shared fixtures of tests/support for every tier, and keeps tests that depend
on wall-clock timing out of parallel workers (they run in a serial pass: `pytest -m timing`)."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # An xdist worker has `workerinput`. A timing test beside other workers' load measures the
    # load, not the service: it is skipped there, and `make test` runs it alone afterwards.
    if not hasattr(config, "workerinput"):
        return
    serial = pytest.mark.skip(reason="timing: runs serially, in `pytest -m timing`")
    for item in items:
        if item.get_closest_marker("timing") is not None:
            item.add_marker(serial)
