"""Operational endpoints (tag `operations`): discovery, health, ingestion status, metrics."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics_format
from starlette.responses import Response

from handlers.context import app_state, request_header
from ingestion.feed import Feed
from web.negotiation import media_range

__all__ = ["get_health", "get_ingestion_status", "get_metrics", "get_root", "negotiate"]

# The forms GET /metrics answers in.
JSON = "application/json"
TEXT = text_format.CONTENT_TYPE_LATEST
OPENMETRICS = openmetrics_format.CONTENT_TYPE_LATEST

_LINKS = {
    "self": "/",
    "health": "/health",
    "ingestion_status": "/status/ingestion",
    "metrics": "/metrics",
    "symbols": "/symbols",
    "latest_price": "/price/latest",
    "latest_prices": "/prices/latest",
    "stream_trades": "/stream/trades",
    "stream_candles": "/stream/candles",
    "ticker": "/ticker",
    "trades": "/trades",
    "candles": "/candles",
    "export_trades": "/export/trades",
    "export_candles": "/export/candles",
    "docs": "/docs",
    "redoc": "/redoc",
    "chart": "/chart",
    "openapi_json": "/openapi.json",
    "openapi_yaml": "/openapi.yaml",
}


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


async def get_root() -> dict[str, Any]:
    contract = app_state().contract
    return {
        "name": "market-data-platform",
        "version": contract.version,
        "description": contract.document["info"]["title"],
        "links": _LINKS,
    }


async def get_health() -> Any:
    state = app_state()
    probe = await state.db.probe()
    # Reachable is not enough: until migrations and seeding finished, data requests get 503.
    database_ok = probe.ok and state.db.ready
    detail = probe.detail if not probe.ok else None if state.db.ready else "starting up"
    ingestion_state = state.ingestion.state()
    behind = state.ingestion.feeds_behind()
    stale = ingestion_state == "stale" or bool(behind)
    status = "fail" if not database_ok else "warn" if stale else "pass"
    body = {
        "status": status,
        "version": state.contract.version,
        "time": datetime.now(UTC),
        "checks": {
            "database": {
                "status": "pass" if database_ok else "fail",
                "latency_ms": probe.latency_ms,
                "detail": detail,
                "standby": probe.standby,
                "replay_lag_seconds": _rounded(probe.replay_lag_seconds),
            },
            "ingestion": {
                "status": "warn" if stale else "pass",
                "state": ingestion_state,
                "heartbeat_age_seconds": _rounded(state.ingestion.heartbeat_age()),
                "feeds_behind": behind,
            },
        },
    }
    if not database_ok:
        return body, 503, {"Retry-After": "5"}
    return body


async def get_ingestion_status() -> dict[str, Any]:
    status = app_state().ingestion
    body: dict[str, Any] = {
        "state": status.state(),
        "role": status.role,
        "leader_since": status.leader_since,
        "enabled": status.enabled,
        "interval_seconds": status.interval_seconds,
        "stale_after_seconds": status.stale_after_seconds,
        "symbols": list(status.symbols),
        "last_batch_at": status.last_batch_at,
        "seconds_since_last_batch": _rounded(status.heartbeat_age()),
        "last_batch_size": status.last_batch_size,
        "batches_total": status.batches_total,
        "trades_total": status.trades_total,
        "failures_total": status.failures_total,
        "consecutive_failures": status.consecutive_failures,
        "last_error": status.last_error,
        "last_error_at": status.last_error_at,
        "trades_retention_seconds": (
            status.trades_retention.total_seconds() if status.trades_retention else None
        ),
        "oldest_trade_kept": status.oldest_trade_kept,
    }
    if status.feed is not None and status.role == "leader":
        body["feed"] = _feed(status.feed)
    return body


def _feed(feed: Feed) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "venue": feed.venue.name,
        "symbols": [
            {
                "symbol": s.symbol,
                "state": s.state,
                "complete_through": s.complete_through,
                "lag_seconds": (
                    _rounded(max((now - s.complete_through).total_seconds(), 0.0))
                    if s.complete_through is not None
                    else None
                ),
                "reconnects_total": s.reconnects_total,
                "recovered_total": s.recovered_total,
                "late_total": s.late_total,
                "duplicates_total": s.duplicates_total,
                "deferred_total": s.deferred_total,
                "expired_total": s.expired_total,
            }
            for s in feed.symbols.values()
        ],
        "malformed_total": feed.malformed_total,
        "throttled_total": feed.rest.throttled_total,
        "last_error": feed.last_error,
    }


# What each media type a scraper may ask for is answered with.
_OFFERS = {
    "application/openmetrics-text": OPENMETRICS,
    "text/plain": TEXT,
    "application/json": JSON,
}


# Scrapers and clients send a handful of distinct Accept values: parsed once each.
@functools.lru_cache(maxsize=256)
def negotiate(accept: str) -> str:
    """JSON (the default and the contract's first form), Prometheus text, or OpenMetrics."""
    best, best_q = JSON, 0.0
    for item in accept.split(","):
        media, q = media_range(item)
        offer = _OFFERS.get(media)
        if offer is not None and q > best_q:
            best, best_q = offer, q
    return best


async def get_metrics() -> Any:
    state = app_state()
    media_type = negotiate(request_header("accept") or "")
    if media_type != JSON:
        # Prometheus text or OpenMetrics, for scrapers that ask for it.
        return Response(state.prometheus.render(media_type), media_type=media_type)
    metrics = state.metrics
    probe = await state.db.probe()
    return {
        "started_at": metrics.started_at,
        "uptime_seconds": round(metrics.uptime_seconds(), 3),
        "requests": {
            "count": metrics.count,
            "average_ms": round(metrics.average_ms, 3),
            "max_ms": round(metrics.max_ms, 3),
            "last_ms": round(metrics.last_ms, 3),
        },
        "database": {"status": "up" if probe.ok else "down", "latency_ms": probe.latency_ms},
        "ingestion": {
            "state": state.ingestion.state(),
            "last_batch_at": state.ingestion.last_batch_at,
            "heartbeat_age_seconds": _rounded(state.ingestion.heartbeat_age()),
        },
    }
