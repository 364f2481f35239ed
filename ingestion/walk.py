"""A bounded random walk of prices on a tick grid, deterministic for a given seed."""

from __future__ import annotations

import random
from decimal import Decimal

__all__ = ["BoundedWalk", "TICK"]

TICK = Decimal("0.01")


class BoundedWalk:
    """Prices move at most `max_step` (a fraction of the base) per trade, on a 0.01 tick,
    and stay inside `base × (1 ± band)`: a bounced walk, never a drift to zero or infinity.

    Prices are held as whole ticks so no step ever accumulates a binary rounding error.
    """

    __slots__ = ("low", "high", "max_step_ticks", "ticks", "_rng")

    def __init__(
        self,
        base: Decimal,
        rng: random.Random,
        *,
        band: float = 0.2,
        max_step: float = 0.002,
        current: Decimal | None = None,
    ) -> None:
        if base <= 0:
            raise ValueError("base price must be positive")
        base_ticks = int(base / TICK)
        spread = int(base_ticks * band)
        self.low = max(1, base_ticks - spread)
        self.high = max(self.low, base_ticks + spread)
        self.max_step_ticks = max(1, int(base_ticks * max_step))
        self._rng = rng
        start = base_ticks if current is None else int((current / TICK).to_integral_value())
        self.ticks = min(max(start, self.low), self.high)

    @property
    def price(self) -> Decimal:
        return TICK * self.ticks

    def step(self) -> Decimal:
        """Advance one trade and return the new price."""
        self.advance()
        return self.price

    def advance(self) -> None:
        """Advance one trade (`ticks` is its price)."""
        moved = self.ticks + self._rng.randint(-self.max_step_ticks, self.max_step_ticks)
        # Reflect off the band's edges so the walk keeps moving instead of sticking to them.
        if moved > self.high:
            moved = 2 * self.high - moved
        elif moved < self.low:
            moved = 2 * self.low - moved
        self.ticks = min(max(moved, self.low), self.high)

    def path(self, count: int) -> tuple[list[int], list[int]]:
        """The next `count` trades' prices (as ticks) and volume units: `advance()` and
        `volume_units()` that many times, the same draws in the same order, without a method
        call per trade (a backfill draws millions)."""
        rng, low, high, step = self._rng, self.low, self.high, self.max_step_ticks
        moves, sizes = rng.randint, rng.paretovariate
        current = self.ticks
        ticks, units = [], []
        for _ in range(count):
            moved = current + moves(-step, step)
            if moved > high:
                moved = 2 * high - moved
            elif moved < low:
                moved = 2 * low - moved
            current = min(max(moved, low), high)
            ticks.append(current)
            units.append(min(100_000, int(sizes(1.2) * 10)))
        self.ticks = current
        return ticks, units

    def trade_count(self, maximum: int) -> int:
        """How many trades this symbol prints in the next batch (1..maximum)."""
        return self._rng.randint(1, maximum)

    def volume(self) -> Decimal:
        """A positive whole-number trade size (an exact decimal, as a venue's), mostly small
        with the odd block."""
        return Decimal(self.volume_units())

    def volume_units(self) -> int:
        """`volume()` as an int."""
        return min(100_000, int(self._rng.paretovariate(1.2) * 10))

    def snapshot(self) -> tuple[int, object]:
        return self.ticks, self._rng.getstate()

    def restore(self, snapshot: tuple[int, object]) -> None:
        self.ticks, state = snapshot
        self._rng.setstate(state)  # type: ignore[arg-type]
