"""Binance Spot public market data: `<symbol>@trade` streams, REST historical trades.

Stream (wss://stream.binance.com:9443): a combined stream subscribes in its URL,
`/stream?streams=btcusdt@trade/ethusdt@trade&timeUnit=MICROSECOND` (stream names are
lowercase; `timeUnit` makes every timestamp microseconds, so none is rounded). Each message is
`{"stream": "btcusdt@trade", "data": {"e": "trade", "E": ..., "s": "BTCUSDT", "t": <trade id>,
"p": "<price>", "q": "<quantity>", "T": <trade time>, "m": <is the buyer the maker?>, "M": ...}}`.
There are no application heartbeats and no subscription acknowledgement: a product the venue
does not list simply never trades, so listing is asked over REST (`check_listed`). The server
pings every 20 s, longer than the default stall bound (FEED_STALL_SECONDS, 10 s), so the feed
pings too, a few times per bound: no message and no pong within the bound is a stall, and each
pong is the heartbeat that moves the watermark of a quiet market (`ingestion/feed.py`). A
connection lives 24 h at most; `serverShutdown` announces a restart (we reconnect).

REST (https://api.binance.com): `GET /api/v3/historicalTrades?symbol=&fromId=&limit=` answers
trades from `fromId` upwards, oldest first, 1000 at most; keyless, weight 25 of 6,000 a
minute per IP. The `X-MBX-TIME-UNIT: MICROSECOND` header makes its `time` microseconds too.
Errors are `{"code": -1121, "msg": "Invalid symbol."}` (HTTP 400: the product is not listed);
429/418 carry `Retry-After`.

`m` / `isBuyerMaker` true means the buyer rested on the book: the aggressor sold.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode

import orjson

from ingestion.sources.base import Event, Malformed, Rest, VenueTrade, decimal_field

__all__ = ["Binance"]

_PAGE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECONDS = {"X-MBX-TIME-UNIT": "MICROSECOND"}
_INVALID_SYMBOL = -1121


def _micros(raw: object, key: str) -> datetime:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise Malformed(f"{key} is not a timestamp in microseconds")
    return _EPOCH + timedelta(microseconds=raw)


def _trade_id(raw: object, key: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise Malformed(f"{key} is not a non-negative integer")
    return raw


def _buyer_maker(raw: object, key: str) -> bool:
    if not isinstance(raw, bool):
        raise Malformed(f"{key} is not a boolean")
    return raw


class Binance:
    name: ClassVar[str] = "binance"
    default_url: ClassVar[str] = "wss://stream.binance.com:9443"
    default_rest_url: ClassVar[str] = "https://api.binance.com"
    product_pattern: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Z0-9]{2,20}$")
    sends_heartbeats: ClassVar[bool] = False

    def stream_url(self, base: str, symbols: Sequence[str]) -> str:
        streams = "/".join(f"{symbol.lower()}@trade" for symbol in symbols)
        query = urlencode({"streams": streams, "timeUnit": "MICROSECOND"}, safe="/@")
        return f"{base.rstrip('/')}/stream?{query}"

    def subscriptions(self, symbols: Sequence[str]) -> list[dict[str, Any]]:
        return []  # the URL subscribes

    def unlisted(self, status: int, body: Any) -> bool:
        return status == 400 and isinstance(body, dict) and body.get("code") == _INVALID_SYMBOL

    async def check_listed(self, rest: Rest, symbol: str) -> None:
        await rest.get("/api/v3/historicalTrades", {"symbol": symbol, "limit": 1}, _MICROSECONDS)

    def parse(self, raw: str | bytes, symbols: frozenset[str]) -> list[Event]:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Malformed("not JSON") from None
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict):
            raise Malformed("not a combined-stream event")
        kind = data.get("e")
        if kind == "serverShutdown":
            return []  # the connection ends soon; the feed reconnects when it does
        if kind != "trade":
            raise Malformed(f"unexpected event type {kind!r}")
        symbol = data.get("s")
        if symbol not in symbols:
            raise Malformed(f"symbol {symbol!r} is not subscribed")
        assert isinstance(symbol, str)
        return [
            VenueTrade(
                symbol=symbol,
                trade_id=_trade_id(data.get("t"), "t"),
                price=decimal_field(data, "p"),
                size=decimal_field(data, "q"),
                side="sell" if _buyer_maker(data.get("m"), "m") else "buy",
                timestamp=_micros(data.get("T"), "T"),
            )
        ]

    async def history(
        self, rest: Rest, symbol: str, after_id: int, until_id: int | None
    ) -> AsyncIterator[list[VenueTrade]]:
        from_id = after_id + 1
        while True:
            body, _headers = await rest.get(
                "/api/v3/historicalTrades",
                {"symbol": symbol, "fromId": from_id, "limit": _PAGE},
                _MICROSECONDS,
            )
            if not isinstance(body, list):
                raise Malformed("historicalTrades answer is not a JSON array")
            trades = [
                VenueTrade(
                    symbol=symbol,
                    trade_id=_trade_id(item.get("id"), "id"),
                    price=decimal_field(item, "price"),
                    size=decimal_field(item, "qty"),
                    side="sell"
                    if _buyer_maker(item.get("isBuyerMaker"), "isBuyerMaker")
                    else "buy",
                    timestamp=_micros(item.get("time"), "time"),
                )
                for item in body
                if isinstance(item, dict)
            ]
            if until_id is not None:
                trades = [trade for trade in trades if trade.trade_id < until_id]
            if not trades:
                return  # past the venue's newest, or at what the feed already has
            yield trades
            from_id = max(trade.trade_id for trade in trades) + 1
            if until_id is not None and from_id >= until_id:
                return
            # A short page is not taken for the end: the next (empty) page says so for sure.
