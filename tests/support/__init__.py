"""What every test tier shares: databases, stored trades, `mdp serve`, waiting (see fixtures.py)."""

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
from tests.support.trades import (
    generate_trades,
    import_table,
    restore_trades,
    seed_trades,
    store_venue_batch,
)

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
    "generate_trades",
    "restore_trades",
    "import_table",
    "seed_trades",
    "store_venue_batch",
    "wait_until",
    "wait_until_async",
]
