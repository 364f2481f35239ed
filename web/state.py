"""What a handler may read of the application state: protocols the lifespan's state satisfies.

The composing package builds the state (`mdp.state.AppState`) and hands it to requests typed
as `RequestState`, so mypy checks the fit there and handlers never import the package that
assembles them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from prometheus_client import Counter

from ingestion.status import IngestionStatus
from live.broadcaster import Broadcaster
from persistence.connections import Database

__all__ = ["ContractView", "MetricsView", "PrometheusView", "RequestState", "SettingsView"]


class SettingsView(Protocol):
    """The settings handlers read (the rest configure the composition).

    Which of the settings declared in `mdp.settings.Settings` handlers may see, not a second
    declaration: handlers may not import the composing package, and mypy checks that `Settings`
    fits this view where the lifespan hands it to requests.
    """

    @property
    def stream_heartbeat_seconds(self) -> float: ...
    @property
    def stream_replay_seconds(self) -> float: ...
    @property
    def export_max_rows(self) -> int: ...
    @property
    def export_max_days(self) -> int: ...
    @property
    def export_timeout_seconds(self) -> float: ...
    @property
    def export_max_per_key(self) -> int: ...
    @property
    def stream_max_per_key(self) -> int: ...
    @property
    def redoc_script_url(self) -> str: ...
    @property
    def redoc_script_integrity(self) -> str | None: ...
    @property
    def feed_settlement_seconds(self) -> float: ...


class ContractView(Protocol):
    """The contract as served: parsed, its version, and its text in both forms."""

    @property
    def document(self) -> dict[str, Any]: ...
    @property
    def version(self) -> str: ...
    @property
    def yaml_text(self) -> bytes: ...
    @property
    def json_text(self) -> bytes: ...


class MetricsView(Protocol):
    """This instance's request latency aggregates, as `GET /metrics` reports them."""

    @property
    def started_at(self) -> datetime: ...
    @property
    def count(self) -> int: ...
    @property
    def average_ms(self) -> float: ...
    @property
    def max_ms(self) -> float: ...
    @property
    def last_ms(self) -> float: ...
    def uptime_seconds(self) -> float: ...


class PrometheusView(Protocol):
    """The Prometheus registry: rendered by `GET /metrics`, counted into by candle reads."""

    @property
    def candles_from_trades(self) -> Counter: ...
    @property
    def candle_stream_reads(self) -> Counter: ...
    def render(self, media_type: str) -> bytes: ...


class RequestState(Protocol):
    """The application state as a request sees it (read-only: it is built once at start-up)."""

    @property
    def settings(self) -> SettingsView: ...
    @property
    def contract(self) -> ContractView: ...
    @property
    def db(self) -> Database: ...
    @property
    def ingestion(self) -> IngestionStatus: ...
    @property
    def metrics(self) -> MetricsView: ...
    @property
    def prometheus(self) -> PrometheusView: ...
    @property
    def broadcaster(self) -> Broadcaster: ...
