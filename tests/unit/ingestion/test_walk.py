"""BoundedWalk: prices stay on the tick grid, inside their band, in small reproducible steps."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.walk import TICK, BoundedWalk

DEFAULT_BAND = Decimal("0.2")
DEFAULT_MAX_STEP = Decimal("0.002")

seeds = st.integers(min_value=0, max_value=2**64)
# 1.00 .. 5000.00 on the 0.01 tick.
base_prices = st.integers(min_value=100, max_value=500_000).map(lambda ticks: ticks * TICK)
step_counts = st.integers(min_value=1, max_value=300)
# Bands whose float is not below the decimal it spells, so `base × (1 ± band)` is exact.
bands = st.sampled_from(["0.001", "0.05", "0.1", "0.2", "0.5"])


def make_walk(
    base: Decimal,
    seed: int,
    *,
    band: float = 0.2,
    max_step: float = 0.002,
    current: Decimal | None = None,
) -> BoundedWalk:
    return BoundedWalk(base, random.Random(seed), band=band, max_step=max_step, current=current)


@settings(max_examples=150, deadline=None)
@given(seed=seeds, base=base_prices, steps=step_counts, band=bands)
def test_walk_never_leaves_its_band(seed: int, base: Decimal, steps: int, band: str) -> None:
    walk = make_walk(base, seed, band=float(band))
    lowest = base * (1 - Decimal(band))
    highest = base * (1 + Decimal(band))
    for _ in range(steps):
        price = walk.step()
        assert lowest <= price <= highest
        assert walk.low <= walk.ticks <= walk.high


@settings(max_examples=150, deadline=None)
@given(seed=seeds, base=base_prices, steps=step_counts)
def test_walk_moves_at_most_max_step_per_trade(seed: int, base: Decimal, steps: int) -> None:
    walk = make_walk(base, seed)
    largest_move = max(TICK, base * DEFAULT_MAX_STEP)
    previous = walk.price
    for _ in range(steps):
        price = walk.step()
        assert abs(price - previous) <= largest_move
        assert abs(price - previous) <= walk.max_step_ticks * TICK
        previous = price


@settings(max_examples=100, deadline=None)
@given(seed=seeds, base=base_prices, band=bands)
def test_walk_bounces_inside_a_band_narrower_than_its_step(
    seed: int, base: Decimal, band: str
) -> None:
    # A max step of 10 % inside a band of at most ±0.5 % forces reflections off both edges.
    walk = make_walk(base, seed, band=min(float(band), 0.005), max_step=0.1)
    previous = walk.ticks
    for _ in range(200):
        walk.step()
        assert walk.low <= walk.ticks <= walk.high
        assert abs(walk.ticks - previous) <= walk.max_step_ticks
        previous = walk.ticks


@pytest.mark.parametrize("seed", range(5))
def test_walk_bounces_off_its_edges_instead_of_sticking_to_them(seed: int) -> None:
    # 201 ticks of band and steps of up to 20: a walk that merely clamped would sit on an edge
    # for about a tenth of its trades; one that reflects touches an edge well under 1 % of them.
    walk = make_walk(Decimal("100.00"), seed, band=0.01, max_step=0.002)
    on_edge = 0
    for _ in range(2000):
        walk.step()
        on_edge += walk.ticks in (walk.low, walk.high)
    assert on_edge < 2000 * 0.03


@settings(max_examples=100, deadline=None)
@given(seed=seeds, base=base_prices, steps=step_counts)
def test_walk_prices_are_exact_cents(seed: int, base: Decimal, steps: int) -> None:
    walk = make_walk(base, seed)
    for _ in range(steps):
        price = walk.step()
        assert isinstance(price, Decimal)
        assert price.as_tuple().exponent == -2
        assert price % TICK == 0


@settings(max_examples=100, deadline=None)
@given(seed=seeds, base=base_prices, steps=step_counts)
def test_walk_volumes_are_positive_whole_numbers(seed: int, base: Decimal, steps: int) -> None:
    walk = make_walk(base, seed)
    for _ in range(steps):
        volume = walk.volume()
        assert type(volume) is Decimal
        assert 1 <= volume <= 100_000 and volume == volume.to_integral_value()


@settings(max_examples=100, deadline=None)
@given(seed=seeds, base=base_prices, steps=step_counts)
def test_walk_with_the_same_seed_repeats_the_same_path(
    seed: int, base: Decimal, steps: int
) -> None:
    first, second = make_walk(base, seed), make_walk(base, seed)
    assert [(first.step(), first.volume()) for _ in range(steps)] == [
        (second.step(), second.volume()) for _ in range(steps)
    ]


@settings(max_examples=50, deadline=None)
@given(seeds=st.lists(seeds, min_size=2, max_size=2, unique=True), base=base_prices)
def test_walks_with_different_seeds_take_different_paths(seeds: list[int], base: Decimal) -> None:
    first, second = (make_walk(base, seed) for seed in seeds)
    assert [first.step() for _ in range(50)] != [second.step() for _ in range(50)]


def test_walk_starts_at_its_base_price() -> None:
    walk = make_walk(Decimal("190.00"), 1)
    assert walk.price == Decimal("190.00")
    assert (walk.low, walk.high) == (15_200, 22_800)


@settings(max_examples=200, deadline=None)
@given(
    base=base_prices,
    current=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("20000"), places=2),
)
def test_walk_clamps_a_current_price_outside_its_band(base: Decimal, current: Decimal) -> None:
    walk = make_walk(base, 1, current=current)
    lowest, highest = walk.low * TICK, walk.high * TICK
    assert walk.price == min(max(current, lowest), highest)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (Decimal("1.00"), Decimal("80.00")),
        (Decimal("79.99"), Decimal("80.00")),
        (Decimal("80.00"), Decimal("80.00")),
        (Decimal("99.37"), Decimal("99.37")),
        (Decimal("120.00"), Decimal("120.00")),
        (Decimal("120.01"), Decimal("120.00")),
        (Decimal("9999.99"), Decimal("120.00")),
    ],
)
def test_walk_starts_from_current_clamped_to_the_band(current: Decimal, expected: Decimal) -> None:
    assert make_walk(Decimal("100.00"), 1, current=current).price == expected


def test_walk_rounds_an_off_tick_current_price_to_the_tick() -> None:
    assert make_walk(Decimal("100.00"), 1, current=Decimal("101.237")).price == Decimal("101.24")


@pytest.mark.parametrize("base", [Decimal("0"), Decimal("-1.00")])
def test_walk_rejects_a_base_price_that_is_not_positive(base: Decimal) -> None:
    with pytest.raises(ValueError, match="positive"):
        make_walk(base, 1)


@settings(max_examples=100, deadline=None)
@given(seed=seeds, base=base_prices, before=step_counts, steps=step_counts)
def test_walk_restore_rewinds_to_the_snapshot(
    seed: int, base: Decimal, before: int, steps: int
) -> None:
    walk = make_walk(base, seed)
    for _ in range(before):
        walk.step()
    snapshot = walk.snapshot()
    price_at_snapshot = walk.price
    discarded = [(walk.step(), walk.volume(), walk.trade_count(5)) for _ in range(steps)]
    walk.restore(snapshot)
    assert walk.price == price_at_snapshot
    assert [(walk.step(), walk.volume(), walk.trade_count(5)) for _ in range(steps)] == discarded


@settings(max_examples=100, deadline=None)
@given(seed=seeds, maximum=st.integers(min_value=1, max_value=50))
def test_walk_trade_count_is_between_one_and_the_maximum(seed: int, maximum: int) -> None:
    walk = make_walk(Decimal("100.00"), seed)
    counts = {walk.trade_count(maximum) for _ in range(200)}
    assert min(counts) >= 1
    assert max(counts) <= maximum


@settings(max_examples=150, deadline=None)
@given(seed=seeds, base=base_prices, steps=step_counts, band=bands)
def test_a_path_is_the_walk_advanced_trade_by_trade(
    seed: int, base: Decimal, steps: int, band: str
) -> None:
    """A backfill's `path()` draws what `advance()` and `volume_units()` would, in order: a
    seed gives the same history either way, and the walk goes on from the same place."""
    stepped, pathed = (make_walk(base, seed, band=float(band)) for _ in range(2))
    ticks, units = [], []
    for _ in range(steps):
        stepped.advance()
        ticks.append(stepped.ticks)
        units.append(stepped.volume_units())
    assert pathed.path(steps) == (ticks, units)
    assert (pathed.ticks, pathed.step()) == (stepped.ticks, stepped.step())
