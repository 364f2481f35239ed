"""Local venues for tests: Coinbase Exchange and Binance Spot, speaking their documented wire
protocols (WebSocket and REST on one loopback port), driven by the test.

Each server keeps a tape of trades per product. `trade()` prints one: it goes on the tape and,
unless the test has cut the stream (`drop`, `stall`, `go_offline`), to every connected
subscriber. REST history serves the tape exactly as the venue documents (Coinbase: newest
first, `after` cursors in `CB-AFTER`; Binance: ascending from `fromId`), `page_limit` per page
at most so recoveries take several pages; `throttle(n)` answers the next n REST requests 429
with `Retry-After`.

The server runs on its own event loop in a thread, so sync tests (with `mdp serve` processes)
and async ones drive it alike.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

__all__ = ["Print", "VenueName", "VenueServer", "venue_server"]

VenueName = Literal["coinbase", "binance"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Print:
    """One trade on a venue's tape. `maker_side` is the side of the resting order."""

    symbol: str
    trade_id: int
    price: Decimal
    size: Decimal
    maker_side: Literal["buy", "sell"]
    time: datetime

    @property
    def aggressor(self) -> str:
        return "sell" if self.maker_side == "buy" else "buy"


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


class VenueServer:
    def __init__(self, venue: VenueName, products: list[str], *, heartbeat_seconds: float) -> None:
        self.venue = venue
        self.products = list(products)
        self.tape: dict[str, list[Print]] = {p: [] for p in products}
        self.heartbeat_seconds = heartbeat_seconds
        self.page_limit = 1000
        self.rest_requests: list[str] = []
        self.connections_total = 0
        self._throttle = 0
        self._subscribers: dict[ServerConnection, set[str]] = {}
        self._stalled = False
        self._offline = False
        self._sequence = 0
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())

    # -- driving it from the test ------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    @property
    def rest_url(self) -> str:
        return "http" + self.url.removeprefix("ws")

    def trade(
        self,
        symbol: str,
        price: str = "100.00000001",
        size: str = "0.00123",
        *,
        maker_side: Literal["buy", "sell"] = "sell",
        time: datetime | None = None,
        publish: bool = True,
    ) -> Print:
        """Print a trade (the next id); `publish=False` keeps it off the stream (a lost message)."""
        tape = self.tape[symbol]
        trade = Print(
            symbol,
            (tape[-1].trade_id + 1) if tape else 1,
            Decimal(price),
            Decimal(size),
            maker_side,
            time or datetime.now(UTC),
        )
        tape.append(trade)
        if publish:
            self.send(trade)
        return trade

    def burst(self, count: int, *, publish: bool = True) -> int:
        """Print `count` trades spread over the products, in one go (a load generator);
        returns how many."""
        now = datetime.now(UTC)
        printed: list[Print] = []
        for n in range(count):
            symbol = self.products[n % len(self.products)]
            tape = self.tape[symbol]
            trade = Print(
                symbol,
                (tape[-1].trade_id + 1) if tape else 1,
                Decimal("100.5"),
                Decimal("0.01"),
                "buy" if n % 2 else "sell",
                now,
            )
            tape.append(trade)
            printed.append(trade)
        if publish:
            self._call(self._publish_all(printed))
        return count

    def send(self, trade: Print) -> None:
        """Deliver `trade` on the stream now (again, or out of order, as the test likes)."""
        self._call(self._publish(trade))

    def send_raw(self, raw: str) -> None:
        self._call(self._broadcast(lambda _subscribed: raw))

    def drop(self) -> None:
        """Close every stream connection (reconnecting is allowed)."""
        # Not waiting for the closing handshakes: the client may run on the caller's loop.
        self._call(self._close_all())

    def stall(self, stalled: bool = True) -> None:
        """Keep connections open but send nothing at all (no trades, no heartbeats, no pongs:
        nothing the client sends is read)."""
        self._stalled = stalled
        self._call(self._freeze_all())

    def list_product(self, product: str) -> None:
        """Start listing `product` (a venue adding a market)."""
        self.products.append(product)
        self.tape[product] = []

    def go_offline(self, offline: bool = True) -> None:
        """Refuse new stream connections and close the open ones."""
        self._offline = offline
        if offline:
            self.drop()

    def throttle(self, requests: int) -> None:
        """Answer the next `requests` REST requests 429 Too Many Requests."""
        self._throttle = requests

    def subscribed(self) -> int:
        return len(self._subscribers)

    def streams(self, product: str) -> bool:
        """Whether a connection is subscribed to `product` (its prints reach the client)."""
        return any(product in products for products in list(self._subscribers.values()))

    def close(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # -- the server --------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await serve(
            self._connection, "127.0.0.1", 0, process_request=self._http, ping_interval=None
        )
        self._beating = self._loop.create_task(self._heartbeats())

    async def _stop(self) -> None:
        assert self._server is not None
        self._beating.cancel()
        self._server.close()
        await self._server.wait_closed()

    async def _freeze_all(self) -> None:
        for connection in list(self._subscribers):
            self._freeze(connection)

    def _freeze(self, connection: ServerConnection) -> None:
        if self._stalled:
            connection.transport.pause_reading()
        else:
            connection.transport.resume_reading()

    async def _close_all(self) -> None:
        for connection in list(self._subscribers):
            self._loop.create_task(connection.close())
        self._subscribers.clear()

    async def _broadcast(self, render: Any) -> None:
        if self._stalled:
            return
        for connection, subscribed in list(self._subscribers.items()):
            message = render(subscribed)
            if message is not None:
                with contextlib.suppress(ConnectionClosed):
                    await connection.send(message)

    async def _publish(self, trade: Print) -> None:
        self._sequence += 1
        sequence = self._sequence
        await self._broadcast(
            lambda subscribed: self._match(trade, sequence) if trade.symbol in subscribed else None
        )

    async def _publish_all(self, trades: list[Print]) -> None:
        """Every trade of a burst, each connection's frames in one write: a load generator
        printing tens of thousands a second must not cost more than the client reading them.
        The frames are websockets' own (its sans-I/O protocol builds them)."""
        if self._stalled:
            return
        messages = []
        for trade in trades:
            self._sequence += 1
            messages.append((trade.symbol, self._match(trade, self._sequence).encode()))
        for connection, subscribed in list(self._subscribers.items()):
            if connection.protocol.state is not State.OPEN:
                continue  # closing: what it missed is recovered from REST
            for symbol, message in messages:
                if symbol in subscribed:
                    connection.protocol.send_text(message)
            connection.transport.write(b"".join(connection.protocol.data_to_send()))

    async def _heartbeats(self) -> None:
        if self.venue != "coinbase":
            return  # Binance sends no application heartbeats
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for product, tape in self.tape.items():
                beat = {
                    "type": "heartbeat",
                    "sequence": self._sequence,
                    "last_trade_id": tape[-1].trade_id if tape else 0,
                    "product_id": product,
                    "time": _iso(datetime.now(UTC)),
                }
                await self._broadcast(
                    lambda subscribed, b=beat, p=product: _json(b) if p in subscribed else None
                )

    def _match(self, trade: Print, sequence: int, kind: str = "match") -> str:
        if self.venue == "coinbase":
            return _json(
                {
                    "type": kind,
                    "trade_id": trade.trade_id,
                    "sequence": sequence,
                    "maker_order_id": str(uuid.uuid4()),
                    "taker_order_id": str(uuid.uuid4()),
                    "time": _iso(trade.time),
                    "product_id": trade.symbol,
                    "size": str(trade.size),
                    "price": str(trade.price),
                    "side": trade.maker_side,
                }
            )
        micros = _micros(trade.time)
        return _json(
            {
                "stream": f"{trade.symbol.lower()}@trade",
                "data": {
                    "e": "trade",
                    "E": micros,
                    "s": trade.symbol,
                    "t": trade.trade_id,
                    "p": str(trade.price),
                    "q": str(trade.size),
                    "T": micros,
                    "m": trade.maker_side == "buy",
                    "M": True,
                },
            }
        )

    async def _connection(self, connection: ServerConnection) -> None:
        self.connections_total += 1
        try:
            if self.venue == "coinbase":
                with contextlib.suppress(ConnectionClosed):  # the client went away: fine
                    await self._coinbase_session(connection)
            else:
                assert connection.request is not None
                query = parse_qs(urlsplit(connection.request.path).query)
                streams = (query.get("streams") or [""])[0].split("/")
                wanted = {s.removesuffix("@trade").upper() for s in streams}
                self._subscribers[connection] = wanted & set(self.products)
                self._freeze(connection)
                await connection.wait_closed()
        finally:
            self._subscribers.pop(connection, None)

    async def _coinbase_session(self, connection: ServerConnection) -> None:
        async for raw in connection:
            request = orjson.loads(raw)
            if request.get("type") != "subscribe":
                await connection.send(_json({"type": "error", "message": "Failed to subscribe"}))
                continue
            products = request.get("product_ids") or []
            unknown = [p for p in products if p not in self.tape]
            if unknown:
                await connection.send(
                    _json(
                        {
                            "type": "error",
                            "message": "Failed to subscribe",
                            "reason": f"{unknown[0]} is not a valid product",
                        }
                    )
                )
            known = [p for p in products if p in self.tape]
            # Subscribing adds to what the connection has; the answer lists all of it.
            subscribed = self._subscribers.get(connection, set()) | set(known)
            self._subscribers[connection] = subscribed
            await connection.send(
                _json(
                    {
                        "type": "subscriptions",
                        "channels": [
                            {"name": name, "product_ids": sorted(subscribed)}
                            for name in request.get("channels") or []
                        ],
                    }
                )
            )
            for product in known:
                if self.tape[product] and not self._stalled:
                    await connection.send(
                        self._match(self.tape[product][-1], self._sequence, "last_match")
                    )

    # -- REST --------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self._offline:
                return _respond(connection, 503, {"message": "offline"})
            return None
        self.rest_requests.append(request.path)
        if self._throttle:
            self._throttle -= 1
            body = (
                {"message": "Public rate limit exceeded"}
                if self.venue == "coinbase"
                else {"code": -1003, "msg": "Too many requests; please use the websocket."}
            )
            return _respond(connection, 429, body, {"Retry-After": "1"})
        parts = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if self.venue == "coinbase":
            return self._coinbase_trades(connection, parts.path, query)
        return self._binance_trades(connection, parts.path, query, request.headers)

    def _coinbase_trades(
        self, connection: ServerConnection, path: str, query: dict[str, str]
    ) -> Response:
        segments = path.strip("/").split("/")
        if len(segments) != 3 or segments[0] != "products" or segments[2] != "trades":
            return _respond(connection, 404, {"message": "NotFound"})
        tape = self.tape.get(segments[1])
        if tape is None:
            return _respond(connection, 404, {"message": "NotFound"})
        limit = min(int(query.get("limit", 1000)), 1000, self.page_limit)
        # The tape is in id order: a page is a slice found by bisection (a bench's tape holds
        # a million trades).
        if "after" in query:
            end = bisect.bisect_left(tape, int(query["after"]), key=_trade_id)
            page = tape[max(0, end - limit) : end][::-1]
        elif "before" in query:
            start = bisect.bisect_right(tape, int(query["before"]), key=_trade_id)
            page = tape[start : start + limit][::-1]
        else:
            page = tape[-limit:][::-1]
        body = [
            {
                "time": _iso(t.time),
                "trade_id": t.trade_id,
                "price": str(t.price),
                "size": str(t.size),
                "side": t.maker_side,
            }
            for t in page
        ]
        headers = (
            {"CB-BEFORE": str(page[0].trade_id), "CB-AFTER": str(page[-1].trade_id)} if page else {}
        )
        return _respond(connection, 200, body, headers)

    def _binance_trades(
        self, connection: ServerConnection, path: str, query: dict[str, str], headers: Headers
    ) -> Response:
        if path != "/api/v3/historicalTrades":
            return _respond(connection, 404, {"code": -1, "msg": "Not found"})
        tape = self.tape.get(query.get("symbol", ""))
        if tape is None:
            return _respond(connection, 400, {"code": -1121, "msg": "Invalid symbol."})
        limit = min(int(query.get("limit", 500)), 1000, self.page_limit)
        if "fromId" in query:
            start = bisect.bisect_left(tape, int(query["fromId"]), key=_trade_id)
            page = tape[start : start + limit]
        else:
            page = tape[-limit:]
        micros = headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND"
        body = [
            {
                "id": t.trade_id,
                "price": str(t.price),
                "qty": str(t.size),
                "quoteQty": str(t.price * t.size),
                "time": _micros(t.time) if micros else _micros(t.time) // 1000,
                "isBuyerMaker": t.maker_side == "buy",
                "isBestMatch": True,
            }
            for t in page
        ]
        return _respond(connection, 200, body)


def _trade_id(trade: Print) -> int:
    return trade.trade_id


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _respond(
    connection: ServerConnection,
    status: int,
    body: Any,
    headers: dict[str, str] | None = None,
) -> Response:
    response = connection.respond(status, _json(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@contextlib.contextmanager
def venue_server(
    venue: VenueName, products: list[str], *, heartbeat_seconds: float = 0.2
) -> Iterator[VenueServer]:
    server = VenueServer(venue, products, heartbeat_seconds=heartbeat_seconds)
    try:
        yield server
    finally:
        server.close()
