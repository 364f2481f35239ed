"""`mdp serve` with FEED=coinbase|binance against local venues, seen through the HTTP API.

Each venue trade is served once, with its venue id, the aggressor's side and its exact
decimals; drops, stalls, re-deliveries, long recoveries, a 429 and a killed leader lose none
and repeat none; and a bucket is not reported closed while its feed is behind.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pyarrow as pa
import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from sqlalchemy.engine import URL

from handlers.sse import decode_id, encode_id
from ingestion.files import TRADES
from persistence.imports import import_trades
from tests.contract.support import load_spec, resolve
from tests.e2e.sse import Event, consuming, read_events
from tests.support import MakeDatabase, Service, open_test_engine, serve, wait_until
from tests.support.venues import VenueServer, venue_server

pytestmark = pytest.mark.slow

PRODUCTS = {"coinbase": ["BTC-USD", "ETH-USD"], "binance": ["BTCUSDT", "ETHUSDT"]}

Launch = Callable[..., Service]


@pytest.fixture
async def database(make_database: MakeDatabase) -> URL:
    return await make_database(migrated=False)


@pytest.fixture(params=sorted(PRODUCTS))
def venue(request: pytest.FixtureRequest) -> Iterator[VenueServer]:
    with venue_server(request.param, PRODUCTS[request.param]) as server:
        yield server


@pytest.fixture
def coinbase() -> Iterator[VenueServer]:
    with venue_server("coinbase", PRODUCTS["coinbase"]) as server:
        yield server


@pytest.fixture
def binance() -> Iterator[VenueServer]:
    with venue_server("binance", PRODUCTS["binance"]) as server:
        yield server


@pytest.fixture
def launch(database: URL) -> Iterator[Launch]:
    """Start `mdp serve` on `server`'s feed (as many instances as called)."""
    with contextlib.ExitStack() as stack:

        def start(server: VenueServer, **env: str) -> Service:
            settings = {
                "FEED": server.venue,
                "SYMBOLS": ",".join(server.products),
                "FEED_URL": server.url,
                "FEED_REST_URL": server.rest_url,
                "INGESTION_INTERVAL_SECONDS": "0.2",
                "FEED_STALL_SECONDS": "5",
                "FEED_LATENESS_SECONDS": "0",
                **env,
            }
            return stack.enter_context(serve(database, settings, ready="/status/ingestion"))

        yield start


def _json(service: Service, path: str) -> Any:
    response = service.get(path)
    return response.json() if response is not None and response.status_code == 200 else None


def feed(service: Service) -> dict[str, dict[str, Any]]:
    """The feed's symbols by name from /status/ingestion (empty unless it leads)."""
    body = _json(service, "/status/ingestion") or {}
    return {s["symbol"]: s for s in (body.get("feed") or {}).get("symbols", [])}


def connected(service: Service, symbols: list[str]) -> None:
    wait_until(
        lambda: feed(service),
        lambda f: all(f.get(s, {}).get("state") == "connected" for s in symbols),
        what=f"{symbols} connected",
        every=0.05,
    )


def served(service: Service, symbol: str) -> list[dict[str, Any]]:
    body = _json(service, f"/trades?symbol={symbol}&order=asc&limit=1000")
    return body["trades"] if body is not None else []


def serves_exactly(service: Service, server: VenueServer, symbol: str) -> list[dict[str, Any]]:
    """Until /trades serves the venue's whole tape of `symbol`: each trade once."""
    expected = [str(t.trade_id) for t in server.tape[symbol]]
    trades = wait_until(
        lambda: served(service, symbol),
        lambda got: sorted(t["venue_trade_id"] for t in got) == sorted(expected),
        what=f"{symbol}'s {len(expected)} trades served once each",
        every=0.1,
    )
    return trades


def subscribed(server: VenueServer) -> None:
    wait_until(server.subscribed, what="the venue streaming to the service", every=0.05)


def test_a_clean_session_serves_each_trade_as_the_venue_printed_it(
    venue: VenueServer, launch: Launch
) -> None:
    symbol = venue.products[0]
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    printed = [
        venue.trade(symbol, "64000.12345678", "0.00012345", maker_side="buy"),
        venue.trade(symbol, "64001.5", "2", maker_side="sell"),
    ]
    trades = serves_exactly(service, venue, symbol)
    for trade, venue_trade in zip(trades, printed, strict=True):
        assert trade["venue_trade_id"] == str(venue_trade.trade_id)
        assert trade["side"] == venue_trade.aggressor
        assert Decimal(str(trade["price"])) == venue_trade.price
        assert Decimal(str(trade["volume"])) == venue_trade.size
        assert datetime.fromisoformat(trade["timestamp"]) == venue_trade.time
    status = feed(service)[symbol]
    assert status["reconnects_total"] == 0 and status["complete_through"] is not None


def test_the_feed_status_and_metrics_say_what_the_contract_says(
    venue: VenueServer, launch: Launch
) -> None:
    """/status/ingestion of a venue feed, every counter included, is the contract's 200 body,
    and /metrics names every feed family the contract lists, for each symbol."""
    spec = load_spec()
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    for symbol in venue.products:
        venue.trade(symbol)
        serves_exactly(service, venue, symbol)
    body = _json(service, "/status/ingestion")
    schema = spec["paths"]["/status/ingestion"]["get"]["responses"]["200"]
    schema = resolve(spec, schema)["content"]["application/json"]["schema"]
    errors = OAS30Validator(resolve(spec, schema), format_checker=oas30_format_checker)
    assert [error.message for error in errors.iter_errors(body)] == []
    assert {s["symbol"] for s in body["feed"]["symbols"]} == set(venue.products)
    listed = spec["paths"]["/metrics"]["get"]["description"]
    families = set(re.findall(r"`(mdp_feed_[a-z_]+)`", listed))
    symbols = set(venue.products)

    def missing() -> set[str]:
        """Families without a sample, or, when labelled by symbol, without one a symbol (a
        symbol's watermark gauge appears once its watermark is known: waited for)."""
        response = httpx.get(
            f"{service.base}/metrics", headers={**service.headers, "Accept": "text/plain"}
        )
        assert response.status_code == 200
        labels: dict[str, set[str]] = {}
        for family, labelled in re.findall(r"^(mdp_feed_[a-z_]+){([^}]*)}", response.text, re.M):
            labels.setdefault(family, set()).update(re.findall(r'symbol="([^"]+)"', labelled))
        return {
            family
            for family in families
            if family not in labels or (labels[family] and labels[family] != symbols)
        }

    assert families
    wait_until(missing, lambda left: not left, what="every feed family")


def test_a_drop_mid_stream_serves_what_was_printed_meanwhile_once(
    venue: VenueServer, launch: Launch
) -> None:
    symbol = venue.products[0]
    venue.page_limit = 4  # the recovery takes several pages
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    venue.trade(symbol)
    serves_exactly(service, venue, symbol)
    venue.go_offline()
    for _ in range(10):
        venue.trade(symbol)
    wait_until(
        lambda: feed(service)[symbol]["state"], lambda s: s != "connected", what="the drop seen"
    )
    venue.go_offline(False)
    connected(service, venue.products)
    venue.trade(symbol)
    serves_exactly(service, venue, symbol)
    status = feed(service)[symbol]
    # Coinbase sends the newest trade (`last_match`) on subscribing: the rest came from REST.
    assert status["reconnects_total"] >= 1 and status["recovered_total"] >= 9


@pytest.mark.timing
def test_a_stalled_connection_is_replaced_and_nothing_is_missed(launch: Launch) -> None:
    with venue_server("coinbase", ["BTC-USD"]) as venue:
        service = launch(venue, FEED_STALL_SECONDS="1")
        connected(service, ["BTC-USD"])
        subscribed(venue)
        venue.trade("BTC-USD")
        venue.stall()
        venue.trade("BTC-USD")  # never reaches the service live
        wait_until(lambda: feed(service)["BTC-USD"]["reconnects_total"], what="the stall noticed")
        venue.stall(False)
        serves_exactly(service, venue, "BTC-USD")


def test_duplicated_and_out_of_order_messages_are_served_once(
    coinbase: VenueServer, launch: Launch
) -> None:
    venue = coinbase
    symbol = venue.products[0]
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    first = venue.trade(symbol)
    later = [venue.trade(symbol, publish=False) for _ in range(3)]
    for trade in (later[1], first, later[0], later[2], later[1], first):
        venue.send(trade)
    serves_exactly(service, venue, symbol)
    connected(service, venue.products)


def test_a_venue_429_during_recovery_is_waited_out(binance: VenueServer, launch: Launch) -> None:
    venue = binance
    symbol = venue.products[0]
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    venue.trade(symbol)
    serves_exactly(service, venue, symbol)
    venue.throttle(2)
    venue.trade(symbol, publish=False)
    venue.trade(symbol)
    serves_exactly(service, venue, symbol)
    body = _json(service, "/status/ingestion")
    assert body["feed"]["throttled_total"] == 2


def test_a_bad_message_is_skipped_and_counted(launch: Launch) -> None:
    with venue_server("coinbase", ["BTC-USD"]) as venue:
        service = launch(venue)
        connected(service, ["BTC-USD"])
        subscribed(venue)
        venue.send_raw('{"type": "match", "product_id": "BTC-USD", "price": "abc"}')
        venue.trade("BTC-USD")
        serves_exactly(service, venue, "BTC-USD")
        body = _json(service, "/status/ingestion")
        assert body["feed"]["malformed_total"] == 1


def test_a_standby_resumes_from_the_stored_trade_ids_when_the_leader_is_killed(
    coinbase: VenueServer, launch: Launch
) -> None:
    venue = coinbase
    symbol = venue.products[0]
    first, second = launch(venue), launch(venue)

    def leader() -> Service | None:
        for instance in (first, second):
            if (_json(instance, "/status/ingestion") or {}).get("role") == "leader":
                return instance
        return None

    leading = wait_until(leader, what="a leader", every=0.05)
    assert leading is not None
    connected(leading, venue.products)
    subscribed(venue)
    venue.trade(symbol)
    serves_exactly(leading, venue, symbol)
    leading.process.send_signal(signal.SIGKILL)
    leading.process.wait(timeout=10)
    for _ in range(5):
        venue.trade(symbol)  # printed while nobody listens
    standby = second if leading is first else first
    wait_until(lambda: feed(standby), what="the standby taking over", every=0.05)
    venue.trade(symbol)
    serves_exactly(standby, venue, symbol)


async def test_the_feed_goes_on_while_an_import_of_one_of_its_symbols_is_under_way(
    coinbase: VenueServer, launch: Launch, database: URL
) -> None:
    """An import holds its symbol's candles until it commits (minutes for a big file): every
    other trade is stored meanwhile, and a late print of that symbol waits for the import."""
    venue, symbol = coinbase, "BTC-USD"
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    venue.trade(symbol)
    serves_exactly(service, venue, symbol)
    past = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    history = pa.Table.from_pylist(
        [
            {
                "symbol": symbol,
                "price": "99",
                "volume": "1",
                "timestamp": past + timedelta(seconds=10),
                "venue_trade_id": "history-1",
                "side": "buy",
            }
        ],
        schema=TRADES,
    )

    def ids() -> list[str]:
        return sorted(t["venue_trade_id"] for t in served(service, symbol))

    tape = [str(t.trade_id) for t in venue.tape[symbol]]
    engine = open_test_engine(database)
    try:
        async with engine.connect() as importing:
            transaction = await importing.begin()
            await import_trades(importing, symbol, history, repair=False)
            late = venue.trade(symbol, time=past + timedelta(seconds=30))
            fresh = [venue.trade(symbol), venue.trade("ETH-USD")]
            wait_until(
                ids, lambda got: got == sorted([*tape, str(fresh[0].trade_id)]), what="fresh ones"
            )
            serves_exactly(service, venue, "ETH-USD")
            assert feed(service)[symbol]["deferred_total"] > 0
            assert str(late.trade_id) not in ids()
            await transaction.commit()
    finally:
        await engine.dispose()
    expected = sorted([*tape, str(late.trade_id), str(fresh[0].trade_id), "history-1"])
    wait_until(ids, lambda got: got == expected, what="the late print stored after the import")
    assert feed(service)[symbol]["late_total"] == 1


def test_a_bucket_does_not_close_while_its_feed_recovers(launch: Launch) -> None:
    """Binance has no heartbeats: the venue's clock is the trades' own, set by the test."""
    with venue_server("binance", ["BTCUSDT"]) as venue:
        service = launch(venue)
        connected(service, ["BTCUSDT"])
        subscribed(venue)
        base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
        minute = timedelta(minutes=1)

        def closed(start: datetime) -> bool | None:
            window = f"start={start.isoformat()}&end={(start + minute).isoformat()}"
            window = window.replace("+", "%2B")
            body = _json(service, f"/candles?symbol=BTCUSDT&interval=1m&{window}")
            candles = (body or {}).get("candles") or []
            return candles[0]["closed"] if candles else None

        venue.trade("BTCUSDT", time=base + timedelta(seconds=10))
        venue.trade("BTCUSDT", time=base + timedelta(seconds=70))
        wait_until(lambda: closed(base), lambda c: c is True, what="the first minute closed")
        assert closed(base + minute) is False  # the venue's clock is inside it
        venue.throttle(10_000)  # its history is out of reach for now
        venue.trade("BTCUSDT", time=base + timedelta(seconds=100), publish=False)
        venue.trade("BTCUSDT", time=base + timedelta(seconds=130))
        wait_until(
            lambda: feed(service)["BTCUSDT"]["state"], lambda s: s == "recovering", what="behind"
        )
        # The venue's clock passed the second minute, but a trade of it is still missing.
        for _ in range(10):
            assert closed(base + minute) is False
        venue.throttle(0)
        wait_until(lambda: closed(base + minute), lambda c: c is True, what="closed once caught up")
        serves_exactly(service, venue, "BTCUSDT")


def _stream(service: Service, symbol: str, after: str, limit: int) -> list[Event]:
    params = {"symbols": symbol, "limit": limit, "duration": 30}
    headers = {**service.headers, "Last-Event-ID": after}
    with httpx.stream(
        "GET", f"{service.base}/stream/trades", params=params, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        return list(read_events(response))


def test_streams_replay_venue_trades_in_commit_order_and_resume_exactly(
    coinbase: VenueServer, launch: Launch
) -> None:
    """Recovered trades commit after newer live ones: a resumed stream follows commit order,
    skipping and repeating nothing."""
    venue, symbol = coinbase, "BTC-USD"
    service = launch(venue)
    connected(service, venue.products)
    subscribed(venue)
    url = f"{service.base}/stream/trades"
    params = {"symbols": symbol, "limit": 1, "duration": 30}
    with consuming(url, params, headers=service.headers) as live:

        def heard() -> list[Event]:
            trades = [e for e in live if e.kind == "trade"]
            if not trades:
                venue.trade(symbol)  # until the stream, subscribing meanwhile, hears one
            return trades

        (first,) = wait_until(heard, what="a live trade", every=0.5)
    venue.go_offline()
    for _ in range(3):
        venue.trade(symbol)
    wait_until(
        lambda: feed(service)[symbol]["state"], lambda s: s != "connected", what="the drop seen"
    )
    venue.go_offline(False)
    connected(service, venue.products)
    venue.trade(symbol)
    serves_exactly(service, venue, symbol)

    # Everything committed after the first trade heard: later ids (a sequence, in commit order).
    stored = sorted(t["id"] for t in served(service, symbol) if t["id"] > first.data["id"])
    events = _stream(service, symbol, first.id or "", len(stored))
    assert [e.kind for e in events] == ["trade"] * len(stored)
    assert sorted(e.data["id"] for e in events) == stored
    ids = [decode_id(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    resumed = _stream(service, symbol, events[1].id or "", 2)
    assert [e.data for e in resumed] == [e.data for e in events[2:]]


def _traded_three_minutes_ago(service: Service, venue: VenueServer, symbol: str) -> datetime:
    """`service` fed by `venue`, whose clock runs three minutes behind ours: one trade of
    `symbol` printed and served in the bucket that began then, which is returned."""
    connected(service, venue.products)
    subscribed(venue)
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    venue.trade(symbol, time=base + timedelta(seconds=10))
    serves_exactly(service, venue, symbol)
    return base


def test_a_late_print_sends_the_final_candle_it_revised_again(
    binance: VenueServer, launch: Launch
) -> None:
    """The candle stream sends a candle it sent final once more when a late print changes it:
    same bucket, still closed, without an id (the stream's position does not go back)."""
    venue, symbol, minute = binance, "BTCUSDT", timedelta(minutes=1)
    service = launch(venue)
    base = _traded_three_minutes_ago(service, venue, symbol)
    # The candle stream from the bucket `base` on (within the replay window).
    url = f"{service.base}/stream/candles"
    params = {"symbol": symbol, "interval": "1m", "duration": 60}
    headers = {**service.headers, "Last-Event-ID": encode_id(base, 0)}

    def sent(events: list[Event]) -> list[Event]:
        return _candles_of(events, base)

    with consuming(url, params, headers=headers) as events:
        # The venue's clock passes the bucket's end: it is sent final.
        venue.trade(symbol, time=base + minute + timedelta(seconds=30))
        wait_until(
            lambda: sent(events),
            lambda e: any(c.data["closed"] for c in e),
            what="sent final",
        )
        venue.trade(symbol, price="90", time=base + timedelta(seconds=20))  # a late print
        revised = wait_until(
            lambda: sent(events), lambda e: e[-1].data["trade_count"] == 2, what="sent again"
        )
        # One more event after the block ends the client.
        threading.Timer(0.5, venue.trade, (symbol,), {"time": base + 2 * minute}).start()
    final = [e for e in revised if e.data["closed"]]
    assert [e.data["trade_count"] for e in final] == [1, 2]
    assert final[0].id is not None and final[1].id is None
    assert final[1].data["low"] == 90
    window = f"start={base.isoformat()}&end={(base + minute).isoformat()}".replace("+", "%2B")
    (candle,) = _json(service, f"/candles?symbol={symbol}&interval=1m&{window}")["candles"]
    fields = ("closed", "trade_count", "low", "revision")
    assert [candle[f] for f in fields] == [final[1].data[f] for f in fields]


def _candles_of(events: list[Event], bucket: datetime) -> list[Event]:
    """The candle events of `bucket` a stream sent so far."""
    return [
        e
        for e in list(events)
        if e.kind == "candle" and datetime.fromisoformat(e.data["timestamp"]) == bucket
    ]


def test_a_quiet_symbols_final_candle_is_sent_when_another_symbol_moves_the_venue_clock(
    binance: VenueServer, launch: Launch
) -> None:
    """A symbol's watermark moves without a trade of it (the venue's clock moved on): the
    final candle goes out within an ingestion interval or so, not at the stream's next
    heartbeat (here longer than the stream lasts)."""
    venue, symbol, minute = binance, "BTCUSDT", timedelta(minutes=1)
    # The venue's clock three minutes behind ours (as the trades stamp it), `base` open.
    service = launch(venue, STREAM_HEARTBEAT_SECONDS="120")
    base = _traded_three_minutes_ago(service, venue, symbol)
    url = f"{service.base}/stream/candles"
    params = {"symbol": symbol, "interval": "1m", "duration": 30}
    with consuming(url, params, headers=service.headers) as events:
        wait_until(lambda: _candles_of(events, base), what="the open candle sent")
        # Only the other symbol trades: BTCUSDT's watermark passes the end of `base`.
        venue.trade("ETHUSDT", time=base + minute + timedelta(seconds=30))
        sent = wait_until(
            lambda: _candles_of(events, base),
            lambda sent: sent[-1].data["closed"],
            what="sent final",
            timeout=25,
        )
        # One more event after the block ends the client.
        threading.Timer(0.5, venue.trade, (symbol,), {"time": base + 2 * minute}).start()
    assert [e.data["closed"] for e in sent] == [False, True]


def test_a_candle_stream_starts_at_the_bucket_its_feed_has_not_closed(
    binance: VenueServer, launch: Launch
) -> None:
    """A stream opened while the symbol's feed is behind the clock starts at the bucket the
    feed still holds open (as `/candles` answers it), not at the clock's: that candle is sent
    at once, and again final when the feed passes it."""
    venue, symbol, minute = binance, "BTCUSDT", timedelta(minutes=1)
    # The venue's clock three minutes behind ours: its pongs keep it so, `base` stays open
    # for about 50 s.
    service = launch(venue)
    base = _traded_three_minutes_ago(service, venue, symbol)
    url = f"{service.base}/stream/candles"
    params = {"symbol": symbol, "interval": "1m", "duration": 60}
    with consuming(url, params, headers=service.headers) as events:
        wait_until(lambda: _candles_of(events, base), what="the open candle sent")
        venue.trade(symbol, time=base + minute + timedelta(seconds=30))
        wait_until(
            lambda: _candles_of(events, base),
            lambda sent: sent[-1].data["closed"],
            what="sent final",
        )
        # One more event after the block ends the client.
        threading.Timer(0.5, venue.trade, (symbol,), {"time": base + 2 * minute}).start()
    assert [e.data["closed"] for e in _candles_of(events, base)] == [False, True]
