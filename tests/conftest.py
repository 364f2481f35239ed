"""Registers the shared fixtures of tests/support for every tier."""

pytest_plugins = ["tests.support.fixtures"]
