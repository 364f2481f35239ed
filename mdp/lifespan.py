"""Start-up and shutdown: database, migrations, symbols, ingestion — and degraded mode."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from types import FrameType
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from access.security import Guard, required_scopes
from ingestion.feed import Feed, Intake
from ingestion.generator import TradeGenerator
from ingestion.housekeeping import TradeHousekeeping
from ingestion.leader import LeaderLock
from ingestion.loop import IngestionLoop, Ingestor
from ingestion.sources import venue
from ingestion.status import IngestionStatus
from ingestion.venue_loop import VenueIngestor
from live.broadcaster import Broadcaster
from live.listener import Listener
from mdp.engines import database_server, open_engine, open_read_pool
from mdp.metrics import PrometheusMetrics
from mdp.settings import Settings
from mdp.spec import load_contract
from mdp.state import AppState
from mdp.telemetry import RequestMetrics
from persistence.admission import Admission
from persistence.connections import Database, dedicated_connection, describe_error, is_unavailable
from persistence.migrate import upgrade
from persistence.symbols import ensure_symbols
from web.state import RequestState

__all__ = ["lifespan"]

logger = logging.getLogger(__name__)

# Waiting for a database that is not there yet: quick first retries, then a steady pace.
_RETRY_FIRST_SECONDS = 0.5
_RETRY_MAX_SECONDS = 5.0
_STOP_GRACE_SECONDS = 2.0
# A quiet listener connection is checked (and caught up) this often.
_LISTENER_CHECK_SECONDS = 5.0


async def _bootstrap(settings: Settings, db: Database, writes: AsyncEngine, guard: Guard) -> None:
    """Migrate, seed and read the API keys, retrying until the database is there; then open
    the read path."""
    delay = _RETRY_FIRST_SECONDS
    while True:
        try:
            await upgrade(writes)
            async with writes.begin() as conn:
                await ensure_symbols(conn, ((s.symbol, s.name) for s in settings.symbols))
            if guard.mode == "required":
                await guard.ring.refresh(writes)
        except Exception as exc:
            if is_unavailable(exc):
                logger.warning(
                    "database unavailable (%s); start-up continues in %.1fs",
                    describe_error(exc),
                    delay,
                )
            else:
                # Not an outage (a failing migration, missing privileges): loud, with the
                # traceback; /health stays 503 until an operator fixes it, then we carry on.
                logger.exception("start-up failed; retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)
            continue
        db.mark_ready()
        logger.info("database ready: schema at head, %d symbols", len(settings.symbols))
        if guard.mode == "required" and not guard.ring.active:
            logger.warning(
                "AUTH_MODE=required and no API key exists yet: every data request answers 401. "
                "Create the first key with `mdp keys create --name NAME --scopes "
                "read,stream,export,ops` (same DATABASE_URL) and send it as X-API-Key."
            )
        return


async def _ingest(
    settings: Settings, writes: AsyncEngine, status: IngestionStatus, stop: asyncio.Event
) -> None:
    leader = LeaderLock(
        writes.url,
        connect_timeout=settings.db_connect_timeout_seconds,
        timeout=max(settings.ingestion_interval_seconds, 1.0),
    )
    loop: IngestionLoop
    if settings.feed == "synthetic":
        generator = TradeGenerator(
            {s.symbol: Decimal(str(s.start_price)) for s in settings.symbols},
            seed=settings.ingestion_seed,
            max_trades_per_symbol=settings.ingestion_max_trades_per_symbol,
        )
        loop = Ingestor(writes, generator, status, leader)
    else:
        source = venue(settings.feed)
        feed = Feed(
            source,
            (s.symbol for s in settings.symbols),
            url=settings.feed_url or source.default_url,
            rest_url=settings.feed_rest_url or source.default_rest_url,
            stall_seconds=settings.feed_stall_seconds,
            lateness=timedelta(seconds=settings.feed_lateness_seconds),
            intake=Intake(),
        )
        loop = VenueIngestor(writes, feed, status, leader)
    housekeeping = TradeHousekeeping(
        dedicated_connection(
            writes.url,
            connect_timeout=settings.db_connect_timeout_seconds,
            application_name="mdp-housekeeping",
        ),
        status=status,
        leading=lambda: leader.is_leader,
    )
    interval = settings.ingestion_interval_seconds
    logger.info("ingestion started: %s, a batch every %gs", settings.feed, interval)
    await asyncio.gather(loop.run(stop), housekeeping.run(stop))


async def _run(
    settings: Settings,
    db: Database,
    writes: AsyncEngine,
    status: IngestionStatus,
    broadcaster: Broadcaster,
    guard: Guard,
    stop: asyncio.Event,
) -> None:
    await _bootstrap(settings, db, writes, guard)
    listener = Listener(
        dedicated_connection(
            writes.url,
            connect_timeout=settings.db_connect_timeout_seconds,
            application_name="mdp-listener",
        ),
        broadcaster,
        timeout=settings.db_connect_timeout_seconds,
        check_every=_LISTENER_CHECK_SECONDS,
    )
    tasks = [listener.run(stop)]
    if guard.mode == "required":
        # A revoked key's open streams end once this instance has heard of the revocation.
        ring = guard.ring
        # Running exports too: a revoked key's access ends with everything it holds.

        def revoked() -> None:
            broadcaster.keep_owners(ring.active_ids)
            db.export_budget.keep_owners(ring.active_ids)

        tasks.append(ring.maintain(writes, stop, on_reload=revoked))
    if settings.ingestion_enabled:
        tasks.append(_ingest(settings, writes, status, stop))
    await asyncio.gather(*tasks)


def _end_streams_on_signals(broadcaster: Broadcaster) -> Callable[[], None]:
    """Streams never finish by themselves, and uvicorn waits for open responses before it
    shuts the app down: on SIGTERM/SIGINT end them at once, then let uvicorn's handler run.
    Returns the function that puts the previous handlers back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # e.g. a test client's portal thread: no signals arrive there
    loop = asyncio.get_running_loop()

    def handler(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(broadcaster.close)
        chained = previous[signal.Signals(sig)]
        if callable(chained):
            chained(sig, frame)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, chained in previous.items():
            signal.signal(sig, chained)

    return restore


@contextlib.asynccontextmanager
async def lifespan(
    _app: Any, *, settings: Settings, metrics: RequestMetrics, prometheus: PrometheusMetrics
) -> AsyncIterator[dict[str, RequestState]]:
    # Typed as what handlers may read (web.state), so mypy checks that AppState provides it.
    async with database_server(settings) as url:
        async with _serving(url, settings, metrics, prometheus) as state:
            yield {"app": state}


def _guard(settings: Settings) -> Guard:
    guard = Guard(settings.auth, required_scopes(load_contract().document))
    if guard.mode == "off":
        logger.warning(
            "AUTH_MODE=off: every operation is open to anyone who can reach %s:%d, and nothing "
            "is audited. Fine for the embedded development database; set AUTH_MODE=required "
            "(the default with DATABASE_URL) before serving real data.",
            settings.host,
            settings.port,
        )
    else:
        logger.info("AUTH_MODE=required: data operations need an API key with the right scope")
    return guard


def _open_database(settings: Settings, url: URL) -> tuple[Database, AsyncEngine]:
    """The read side (its pools, admission and probe) and the write path's engine."""
    admission = Admission(
        settings.db_pool_size,
        max_waiting=settings.db_max_waiting,
        # Refuse what could not be served within half the wait a client would otherwise get.
        max_wait=settings.db_connect_timeout_seconds / 2,
        timeout=settings.db_connect_timeout_seconds,
    )
    db = Database(
        open_read_pool(settings, url),
        probe_timeout=min(2.0, settings.db_connect_timeout_seconds),
        admission=admission,
        exports=open_read_pool(settings, url, exports=True),
    )
    return db, open_engine(settings, url, "ingestion")


async def _stop(background: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Let the batch under way commit or roll back whole and the leader lock go, within
    SHUTDOWN_GRACE_SECONDS (uvicorn already spent up to DRAIN_SECONDS draining requests)."""
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(background), _STOP_GRACE_SECONDS)
    except TimeoutError:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background


@contextlib.asynccontextmanager
async def _serving(
    url: URL, settings: Settings, metrics: RequestMetrics, prometheus: PrometheusMetrics
) -> AsyncIterator[AppState]:
    guard = _guard(settings)
    db, writes = _open_database(settings, url)
    status = IngestionStatus(
        enabled=settings.ingestion_enabled,
        interval_seconds=settings.ingestion_interval_seconds,
        symbols=tuple(s.symbol for s in settings.symbols),
        trades_retention=settings.trades_retention,
    )
    broadcaster = Broadcaster(
        max_streams=settings.stream_max_clients, queue_size=settings.stream_queue_batches
    )
    stop = asyncio.Event()
    background = asyncio.create_task(
        _run(settings, db, writes, status, broadcaster, guard, stop), name="mdp-background"
    )
    state = AppState(settings, load_contract(), db, status, metrics, prometheus, broadcaster, guard)
    unwatch = prometheus.watch(
        status,
        broadcaster,
        reads=db.pool,
        admission=db.admission,
        writes=writes,
        exports=db.export_budget,
    )
    restore_signals = _end_streams_on_signals(broadcaster)
    # What start-up built (the contract, compiled validators, the app) lives as long as the
    # process: frozen out of the collector's sight, since a full collection walking it holds
    # up every request in flight for about 70 ms.
    gc.collect()
    gc.freeze()
    # A busy venue feed allocates a few containers a trade (a recovery, tens of thousands a
    # second), and at the default threshold of 700 the young collections, each promoting the
    # batch being built, added half again to the feed's CPU per trade (3.3 against 2.8 us to
    # read a REST page's trade in a micro-benchmark; 2.3 with no collector at all). Fewer,
    # larger young collections: each is still under a millisecond (10,000 objects).
    gc.set_threshold(10_000, 10, 10)
    try:
        yield state
    finally:
        restore_signals()
        broadcaster.close()
        await _stop(background, stop)
        status.stopped = True
        unwatch()
        await db.pool.close()
        await db.exports.close()
        await writes.dispose()
