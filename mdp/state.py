"""What the lifespan hands to every request: typed, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from access.security import Guard
from ingestion.status import IngestionStatus
from live.broadcaster import Broadcaster
from mdp.metrics import PrometheusMetrics
from mdp.settings import Settings
from mdp.spec import Contract
from mdp.telemetry import RequestMetrics
from persistence.connections import Database

__all__ = ["AppState"]


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    contract: Contract
    db: Database
    ingestion: IngestionStatus
    metrics: RequestMetrics
    prometheus: PrometheusMetrics
    broadcaster: Broadcaster
    guard: Guard
