"""What every venue source provides, and what it hands to the feed: one interface per venue.

A venue module (one per venue: `coinbase.py`, `binance.py`) knows its wire formats and nothing
else: the stream URL and subscription for a set of products, how to read one message into
events, how to page its REST history and how its REST API says a product is not listed.
Connecting, noticing drops, stalls and gaps, reconnecting and recovering are the same for
every venue and live in `ingestion/feed.py`.

The adapters are small and hand-written on `websockets` (the stream) and an HTTP client (the
history) rather than on ccxt's unified `watch_trades`/`fetch_trades`: what this service
promises needs the venue's own words, which a unified layer smooths away. Gaps are judged by
venue trade ids and Coinbase `heartbeat` `last_trade_id`s; history is paged by the venue's own
cursors (`CB-AFTER`, `fromId`) back to the last stored id; `Retry-After` and weight are the
venue's; timestamps must stay exact to the microsecond (Binance's `timeUnit=MICROSECOND`), and
an unlisted product must be told from a quiet one by the venue's own error. ccxt's streaming
half (ccxt.pro) reconnects and buffers by itself, out of sight of the watermark, and would
bring a large dependency for two venues of about 150 lines each.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import httpx2
import orjson

__all__ = [
    "Event",
    "Heartbeat",
    "Malformed",
    "Rest",
    "RestError",
    "Side",
    "Subscribed",
    "Unlisted",
    "Venue",
    "VenueTrade",
    "decimal_field",
    "truncate",
]

logger = logging.getLogger(__name__)

# The aggressor's side (the order that took liquidity); None when the venue does not say.
Side = Literal["buy", "sell"]

# Raw messages are logged this long at most: enough to see what was wrong, never a flood.
_LOGGED_CHARS = 200


def truncate(raw: str | bytes) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text if len(text) <= _LOGGED_CHARS else text[:_LOGGED_CHARS] + "…"


class VenueTrade(NamedTuple):
    """One print as the venue reported it: its id, exact decimals and its own timestamp.
    A named tuple: made tens of thousands of times a second, at a fraction of a frozen
    dataclass's cost."""

    symbol: str
    trade_id: int
    price: Decimal
    size: Decimal
    side: Side | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The venue says `symbol`'s newest trade id is `last_trade_id` as of `time`."""

    symbol: str
    last_trade_id: int
    time: datetime


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The venue acknowledged the subscription for these symbols."""

    symbols: frozenset[str]


Event = VenueTrade | Heartbeat | Subscribed


class Malformed(ValueError):
    """A message the source cannot use (bad JSON, unknown product, unparsable price, a
    venue error): logged truncated, counted and skipped."""


def decimal_field(message: Mapping[str, Any], key: str) -> Decimal:
    """A positive finite decimal sent as a string (venues send prices and sizes as strings
    so that no digit is lost; a JSON float would already have lost them)."""
    raw = message.get(key)
    if not isinstance(raw, str):
        raise Malformed(f"{key} is not a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise Malformed(f"{key} does not parse as a decimal") from None
    if not value.is_finite() or value <= 0:
        raise Malformed(f"{key} is not a positive finite decimal")
    return value


class RestError(RuntimeError):
    """The venue's REST history could not be read now (the feed retries later)."""


class Unlisted(RestError):
    """The venue says it does not list the product (a feed state, asked about again later)."""


class Rest:
    """GETs on a venue's REST API: one connection pool, 429/418 honoured via Retry-After,
    5xx and network errors retried with backoff, every wait logged."""

    def __init__(
        self,
        base_url: str,
        unlisted: Callable[[int, Any], bool],
        *,
        timeout: float = 10.0,
        attempts: int = 5,
    ) -> None:
        """`unlisted(status, body)` tells a venue's "no such product" answer."""
        self.base_url = base_url.rstrip("/")
        self.unlisted = unlisted
        self._client = httpx2.AsyncClient(timeout=timeout)
        self._attempts = attempts
        # Counted by the feed's status: how often the venue told us to slow down.
        self.throttled_total = 0

    async def close(self) -> None:
        await self._client.aclose()

    async def get(
        self,
        path: str,
        params: Mapping[str, str | int],
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """The JSON body and headers of a 200 answer to GET `path`."""
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            try:
                response = await self._client.get(
                    self.base_url + path, params=dict(params), headers=dict(headers or {})
                )
            except httpx2.HTTPError as exc:
                wait, why = delay, f"{type(exc).__name__}"
            else:
                if response.status_code == 200:
                    try:
                        # orjson: the client's own json() is the standard library's, about
                        # six times slower on a page of a thousand trades.
                        return orjson.loads(response.content), response.headers
                    except orjson.JSONDecodeError:
                        raise RestError(f"GET {path}: a 200 that is not JSON") from None
                if response.status_code in (418, 429):
                    self.throttled_total += 1
                    wait = _retry_after(response.headers.get("Retry-After"), delay)
                    why = f"HTTP {response.status_code} (Retry-After {wait:g}s)"
                elif response.status_code >= 500:
                    wait, why = delay, f"HTTP {response.status_code}"
                else:
                    # 4xx: asking again will not help (an unknown product, a bad parameter).
                    problem = f"GET {path}: HTTP {response.status_code} {truncate(response.text)}"
                    if self.unlisted(response.status_code, _json(response)):
                        raise Unlisted(problem)
                    raise RestError(problem)
            if attempt == self._attempts:
                raise RestError(f"GET {path}: {why}, {attempt} attempts")
            logger.warning("venue REST GET %s: %s; retrying in %.1fs", path, why, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")


def _json(response: httpx2.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except ValueError:
        return None


def _retry_after(raw: str | None, fallback: float) -> float:
    try:
        value = float(raw) if raw is not None else fallback
    except ValueError:
        return fallback
    # Bounded: a broken header must not park recovery for a day.
    return min(max(value, 0.0), 300.0)


class Venue(Protocol):
    """A venue's public market data, as one module implements it."""

    name: ClassVar[str]
    # The documented public endpoints (FEED_URL / FEED_REST_URL override them).
    default_url: ClassVar[str]
    default_rest_url: ClassVar[str]
    # Products as the venue spells them (syntax only: listing is checked by subscribing).
    product_pattern: ClassVar[re.Pattern[str]]
    # True when the venue sends application heartbeats on the stream (a quiet feed is then
    # a stalled one); otherwise the feed pings and counts the pong as the heartbeat.
    sends_heartbeats: ClassVar[bool]

    def stream_url(self, base: str, symbols: Sequence[str]) -> str:
        """The WebSocket URL to connect to for `symbols`."""
        ...

    def subscriptions(self, symbols: Sequence[str]) -> list[dict[str, Any]]:
        """Messages to send once connected (none when the URL already subscribes)."""
        ...

    def parse(self, raw: str | bytes, symbols: frozenset[str]) -> list[Event]:
        """The events in one message (possibly none); raises Malformed."""
        ...

    def unlisted(self, status: int, body: Any) -> bool:
        """True when a REST error answer (`status`, JSON `body` or None) says the product is
        not listed."""
        ...

    async def check_listed(self, rest: Rest, symbol: str) -> None:
        """Ask the venue's REST API whether it lists `symbol` (one cheap request); raises
        Unlisted when it does not. Only for venues whose stream cannot say (no subscription
        acknowledgement)."""
        ...

    def history(
        self, rest: Rest, symbol: str, after_id: int, until_id: int | None
    ) -> AsyncIterator[list[VenueTrade]]:
        """Pages of `symbol`'s trades with ids above `after_id` and below `until_id` (the
        first id the feed already has beyond the gap), or up to the venue's newest when None.
        Pages may come newest first and may be short; the feed relies on neither."""
        ...
