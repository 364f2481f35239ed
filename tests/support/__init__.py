"""What every test tier shares: databases, the `mdp serve` process, waiting (see fixtures.py)."""

from tests.support.database import (
    TEST_SETTINGS,
    DatabaseFactory,
    MakeDatabase,
    dsn,
    migrate,
    open_test_engine,
)
from tests.support.keys import provision_key, provision_key_now
from tests.support.metrics import metric_value
from tests.support.polling import wait_until, wait_until_async
from tests.support.processes import Service, free_port, serve, serve_live

__all__ = [
    "TEST_SETTINGS",
    "DatabaseFactory",
    "MakeDatabase",
    "Service",
    "dsn",
    "free_port",
    "metric_value",
    "migrate",
    "serve",
    "serve_live",
    "open_test_engine",
    "provision_key",
    "provision_key_now",
    "wait_until",
    "wait_until_async",
]
