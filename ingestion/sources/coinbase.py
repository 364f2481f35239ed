"""Coinbase Exchange public market data: the `matches` and `heartbeat` channels, REST trades.

Stream (wss://ws-feed.exchange.coinbase.com): send `{"type": "subscribe", "product_ids": [...],
"channels": ["matches", "heartbeat"]}`; the venue answers `subscriptions` listing what it
subscribed, then `last_match` once per product (the newest trade), `match` per trade and a
`heartbeat` per product every second carrying `last_trade_id`. A subscription it refuses (an
unknown product) answers `{"type": "error", "message": ..., "reason": ...}`. `sequence`
numbers skip by design on this channel; `trade_id`s are consecutive per product, so they are
what gaps are judged by.

REST (https://api.exchange.coinbase.com): `GET /products/{id}/trades?limit=&after=` answers the
newest trades first; `after=<id>` pages to older ones, the cursor for the next page is the
`CB-AFTER` header (`CB-BEFORE` points the other way). About 10 requests/s per IP, 1000 a page.
An unknown product answers 404 `{"message": "NotFound"}`.

`side` is the maker's side on both: the aggressor (what we store) is the other one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, ClassVar

import orjson

from ingestion.sources.base import (
    Event,
    Heartbeat,
    Malformed,
    Rest,
    Side,
    Subscribed,
    VenueTrade,
    decimal_field,
)

__all__ = ["Coinbase"]

_PAGE = 1000
_AGGRESSOR: dict[object, Side] = {"buy": "sell", "sell": "buy"}


def _time(raw: object) -> datetime:
    if not isinstance(raw, str):
        raise Malformed("time is not a string")
    # The venue sends microseconds; more digits would not parse and add nothing we can store.
    text = re.sub(r"(\.\d{6})\d+", r"\1", raw)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Malformed("time is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise Malformed("time has no offset")
    return moment


def _int(message: dict[str, Any], key: str) -> int:
    value = message.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Malformed(f"{key} is not a non-negative integer")
    return value


def _trade(symbol: str, message: dict[str, Any]) -> VenueTrade:
    return VenueTrade(
        symbol=symbol,
        trade_id=_int(message, "trade_id"),
        price=decimal_field(message, "price"),
        size=decimal_field(message, "size"),
        side=_AGGRESSOR.get(message.get("side")),
        timestamp=_time(message.get("time")),
    )


class Coinbase:
    name: ClassVar[str] = "coinbase"
    default_url: ClassVar[str] = "wss://ws-feed.exchange.coinbase.com"
    default_rest_url: ClassVar[str] = "https://api.exchange.coinbase.com"
    product_pattern: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Z0-9]{1,10}-[A-Z0-9]{1,10}$")
    sends_heartbeats: ClassVar[bool] = True

    def stream_url(self, base: str, symbols: Sequence[str]) -> str:
        return base

    def unlisted(self, status: int, body: Any) -> bool:
        return status == 404 and isinstance(body, dict) and body.get("message") == "NotFound"

    async def check_listed(self, rest: Rest, symbol: str) -> None:
        await rest.get(f"/products/{symbol}/trades", {"limit": 1})

    def subscriptions(self, symbols: Sequence[str]) -> list[dict[str, Any]]:
        channels = ["matches", "heartbeat"]
        return [{"type": "subscribe", "product_ids": list(symbols), "channels": channels}]

    def parse(self, raw: str | bytes, symbols: frozenset[str]) -> list[Event]:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Malformed("not JSON") from None
        if not isinstance(message, dict):
            raise Malformed("not a JSON object")
        kind = message.get("type")
        if kind == "subscriptions":
            subscribed: set[str] = set()
            for channel in message.get("channels") or []:
                if isinstance(channel, dict) and channel.get("name") == "matches":
                    subscribed.update(p for p in channel.get("product_ids") or [] if p in symbols)
            return [Subscribed(frozenset(subscribed))]
        if kind == "error":
            raise Malformed(f"venue error: {message.get('message')} {message.get('reason')}")
        if kind not in ("match", "last_match", "heartbeat"):
            # Other types (e.g. a future channel's) are not ours to judge: skipped quietly.
            return []
        symbol = message.get("product_id")
        if symbol not in symbols:
            raise Malformed(f"product {symbol!r} is not subscribed")
        assert isinstance(symbol, str)
        if kind == "heartbeat":
            return [Heartbeat(symbol, _int(message, "last_trade_id"), _time(message.get("time")))]
        return [_trade(symbol, message)]

    async def history(
        self, rest: Rest, symbol: str, after_id: int, until_id: int | None
    ) -> AsyncIterator[list[VenueTrade]]:
        # Newest first: start just below what the feed already has, else at the newest.
        params: dict[str, str | int] = {"limit": _PAGE}
        if until_id is not None:
            params["after"] = until_id
        while True:
            body, headers = await rest.get(f"/products/{symbol}/trades", params)
            if not isinstance(body, list):
                raise Malformed("trades answer is not a JSON array")
            trades = [_trade(symbol, item) for item in body if isinstance(item, dict)]
            wanted = [trade for trade in trades if trade.trade_id > after_id]
            if wanted:
                yield wanted
            cursor = headers.get("CB-AFTER")
            # Done at the first page reaching back to what we have, or at the venue's oldest
            # (an empty page); a short page is neither, so paging goes on after it.
            if not trades or len(wanted) < len(trades) or cursor is None:
                return
            if min(t.trade_id for t in trades) <= after_id + 1:
                return
            params = {"limit": _PAGE, "after": cursor}
