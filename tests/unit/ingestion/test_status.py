"""IngestionStatus: the heartbeat states /health reports, derived from batches and failures."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from ingestion.status import IngestionStatus
from tests.support.polling import wait_until

SYMBOLS = ("AAPL", "MSFT")


def make_status(*, enabled: bool = True, interval: float = 1.0) -> IngestionStatus:
    return IngestionStatus(enabled=enabled, interval_seconds=interval, symbols=SYMBOLS)


def age_heartbeat(status: IngestionStatus, seconds: float) -> None:
    status.last_batch_monotonic = time.monotonic() - seconds


def test_status_is_disabled_when_ingestion_is_off_whatever_else_happened() -> None:
    status = make_status(enabled=False)
    assert status.state() == "disabled"
    status.record_failure("boom")
    status.stopped = True
    status.started_monotonic = time.monotonic() - 3600
    assert status.state() == "disabled"


def test_status_is_starting_before_the_first_batch() -> None:
    status = make_status()
    assert status.state() == "starting"
    assert status.heartbeat_age() is None


def test_status_is_running_after_a_batch() -> None:
    status = make_status()
    before = datetime.now(UTC)
    status.record_success(7)
    assert status.state() == "running"
    assert status.last_batch_at is not None and status.last_batch_at >= before
    assert (status.last_batch_size, status.batches_total, status.trades_total) == (7, 1, 7)


def test_status_counts_batches_and_trades_across_successes() -> None:
    status = make_status()
    for size in (3, 5, 1):
        status.record_success(size)
    assert (status.last_batch_size, status.batches_total, status.trades_total) == (1, 3, 9)


def test_status_is_failing_after_a_failure_that_is_not_yet_stale() -> None:
    status = make_status()
    status.record_success(3)
    status.record_failure("connection refused")
    status.record_failure("connection refused again")
    assert status.state() == "failing"
    assert status.consecutive_failures == 2
    assert status.failures_total == 2
    assert status.last_error == "connection refused again"
    assert status.last_error_at is not None


def test_status_is_failing_when_the_first_batch_fails() -> None:
    status = make_status()
    status.record_failure("no database")
    assert status.state() == "failing"


def test_status_runs_again_after_a_success_ends_the_failures() -> None:
    status = make_status()
    status.record_failure("blip")
    status.record_success(2)
    assert status.state() == "running"
    assert status.consecutive_failures == 0
    assert status.failures_total == 1


def test_status_is_stale_when_the_last_batch_is_older_than_three_intervals() -> None:
    status = make_status(interval=1.0)
    status.record_success(1)
    age_heartbeat(status, 3.5)
    assert status.state() == "stale"
    heartbeat_age = status.heartbeat_age()
    assert heartbeat_age is not None and heartbeat_age >= 3.5


def test_status_is_still_running_within_three_intervals() -> None:
    status = make_status(interval=1.0)
    status.record_success(1)
    age_heartbeat(status, 2.5)
    assert status.state() == "running"


def test_status_goes_stale_by_itself_when_batches_stop() -> None:
    status = make_status(interval=0.01)
    status.record_success(1)
    assert status.state() == "running"
    wait_until(status.state, lambda state: state == "stale", what="stale", timeout=5)


def test_status_is_stale_when_no_batch_arrives_within_three_intervals_of_start() -> None:
    status = make_status(interval=1.0)
    status.started_monotonic = time.monotonic() - 3.5
    assert status.state() == "stale"


def test_status_reports_stale_rather_than_failing_once_the_heartbeat_is_old() -> None:
    status = make_status(interval=1.0)
    status.record_success(1)
    status.record_failure("still down")
    age_heartbeat(status, 10)
    assert status.state() == "stale"


def test_status_is_stopped_after_shutdown_even_when_stale() -> None:
    status = make_status()
    status.record_success(1)
    status.stopped = True
    assert status.state() == "stopped"
    age_heartbeat(status, 10)
    assert status.state() == "stopped"


def test_stale_after_is_three_intervals() -> None:
    assert make_status(interval=0.25).stale_after_seconds == 0.75
    assert make_status(interval=2.0).stale_after_seconds == 6.0
