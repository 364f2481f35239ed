"""Batches of synthetic trades: one bounded walk per symbol."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

from ingestion.walk import BoundedWalk
from persistence.trades import NewTrade

__all__ = ["TradeGenerator"]


class TradeGenerator:
    """Deterministic for a given seed: each symbol has its own generator seeded from
    (seed, symbol), so adding a symbol does not change the others' paths."""

    def __init__(
        self,
        base_prices: Mapping[str, Decimal],
        *,
        seed: int | None,
        max_trades_per_symbol: int,
    ) -> None:
        self.max_trades_per_symbol = max_trades_per_symbol
        self._seed = seed
        self._base = dict(base_prices)
        self.walks = {symbol: self._walk(symbol, None) for symbol in self._base}

    def _walk(self, symbol: str, current: Decimal | None) -> BoundedWalk:
        rng = random.Random(f"{self._seed}:{symbol}") if self._seed is not None else random.Random()
        return BoundedWalk(self._base[symbol], rng, current=current)

    def resume(self, last_prices: Mapping[str, Decimal]) -> None:
        """Continue each walk from its symbol's last stored price (after a restart)."""
        for symbol, price in last_prices.items():
            if symbol in self.walks:
                self.walks[symbol] = self._walk(symbol, price)

    def batch(self, timestamp: datetime) -> Sequence[NewTrade]:
        trades: list[NewTrade] = []
        for symbol, walk in self.walks.items():
            for _ in range(walk.trade_count(self.max_trades_per_symbol)):
                trades.append(NewTrade(symbol, walk.step(), walk.volume(), timestamp))
        return trades

    def snapshot(self) -> dict[str, tuple[int, object]]:
        return {symbol: walk.snapshot() for symbol, walk in self.walks.items()}

    def restore(self, snapshot: Mapping[str, tuple[int, object]]) -> None:
        """Undo the steps of a batch that was not stored, so prices continue from the database."""
        for symbol, state in snapshot.items():
            self.walks[symbol].restore(state)
