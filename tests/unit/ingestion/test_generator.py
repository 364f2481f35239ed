"""TradeGenerator: per-symbol walks that are reproducible, independent and rewindable."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ingestion.generator import TradeGenerator
from ingestion.walk import TICK
from persistence.trades import NewTrade

BASE_PRICES = {
    "AAPL": Decimal("190.00"),
    "GOOGL": Decimal("140.00"),
    "MSFT": Decimal("410.00"),
}
AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

seeds = st.integers(min_value=0, max_value=2**64)
batch_counts = st.integers(min_value=1, max_value=30)
max_trades = st.integers(min_value=1, max_value=20)


def make_generator(
    base_prices: Mapping[str, Decimal] = BASE_PRICES, *, seed: int | None = 7, max_trades: int = 3
) -> TradeGenerator:
    return TradeGenerator(base_prices, seed=seed, max_trades_per_symbol=max_trades)


def batches(generator: TradeGenerator, count: int) -> list[Sequence[NewTrade]]:
    return [generator.batch(AT + timedelta(seconds=n)) for n in range(count)]


def of_symbol(trades: Sequence[NewTrade], symbol: str) -> list[NewTrade]:
    return [trade for trade in trades if trade.symbol == symbol]


@settings(max_examples=100, deadline=None)
@given(seed=seeds, maximum=max_trades)
def test_batch_has_one_to_max_trades_for_every_symbol(seed: int, maximum: int) -> None:
    generator = make_generator(seed=seed, max_trades=maximum)
    for trades in batches(generator, 10):
        per_symbol = Counter(trade.symbol for trade in trades)
        assert set(per_symbol) == set(BASE_PRICES)
        assert all(1 <= count <= maximum for count in per_symbol.values())


def test_batch_sizes_cover_every_count_from_one_to_the_maximum() -> None:
    generator = make_generator(max_trades=3)
    sizes: set[int] = set()
    for trades in batches(generator, 200):
        sizes.update(Counter(trade.symbol for trade in trades).values())
    assert sizes == {1, 2, 3}


@settings(max_examples=100, deadline=None)
@given(seed=seeds)
def test_batch_stamps_every_trade_with_the_given_timestamp(seed: int) -> None:
    generator = make_generator(seed=seed)
    for n in range(5):
        moment = AT + timedelta(minutes=n, microseconds=n)
        assert {trade.timestamp for trade in generator.batch(moment)} == {moment}


@settings(max_examples=100, deadline=None)
@given(seed=seeds, count=batch_counts)
def test_batch_trades_are_valid_prices_and_volumes(seed: int, count: int) -> None:
    generator = make_generator(seed=seed)
    for trades in batches(generator, count):
        for trade in trades:
            base = BASE_PRICES[trade.symbol]
            assert base * Decimal("0.8") <= trade.price <= base * Decimal("1.2")
            assert trade.price.as_tuple().exponent == -2
            # Exact decimals, as a venue's sizes; the walk's are whole units.
            assert type(trade.volume) is Decimal
            assert trade.volume > 0 and trade.volume == trade.volume.to_integral_value()


@settings(max_examples=100, deadline=None)
@given(seed=seeds, count=batch_counts)
def test_generator_with_the_same_seed_repeats_the_same_batches(seed: int, count: int) -> None:
    assert batches(make_generator(seed=seed), count) == batches(make_generator(seed=seed), count)


@settings(max_examples=50, deadline=None)
@given(seed=seeds, count=batch_counts)
def test_adding_a_symbol_does_not_change_the_others_paths(seed: int, count: int) -> None:
    alone = make_generator({"AAPL": BASE_PRICES["AAPL"]}, seed=seed)
    together = make_generator(seed=seed)
    for own, shared in zip(batches(alone, count), batches(together, count), strict=True):
        assert list(own) == of_symbol(shared, "AAPL")


@settings(max_examples=50, deadline=None)
@given(seed=seeds)
def test_symbols_with_the_same_base_price_take_different_paths(seed: int) -> None:
    generator = make_generator({"AAA": Decimal("100.00"), "BBB": Decimal("100.00")}, seed=seed)
    trades = [trade for batch in batches(generator, 20) for trade in batch]
    first, second = ([(t.price, t.volume) for t in of_symbol(trades, s)] for s in ("AAA", "BBB"))
    assert first != second


def test_generator_without_a_seed_is_not_reproducible() -> None:
    first, second = make_generator(seed=None), make_generator(seed=None)
    assert batches(first, 20) != batches(second, 20)


def test_generators_with_different_seeds_differ() -> None:
    assert batches(make_generator(seed=1), 20) != batches(make_generator(seed=2), 20)


@settings(max_examples=100, deadline=None)
@given(
    seed=seeds,
    resumed_ticks=st.integers(min_value=15_200, max_value=22_800),
)
def test_resume_continues_from_the_given_price(seed: int, resumed_ticks: int) -> None:
    resumed = resumed_ticks * TICK
    generator = make_generator(seed=seed)
    batches(generator, 3)
    generator.resume({"AAPL": resumed})
    assert generator.walks["AAPL"].price == resumed
    first = of_symbol(generator.batch(AT), "AAPL")[0]
    assert abs(first.price - resumed) <= BASE_PRICES["AAPL"] * Decimal("0.002")


@settings(max_examples=50, deadline=None)
@given(seed=seeds, count=batch_counts)
def test_resume_leaves_symbols_it_does_not_name_untouched(seed: int, count: int) -> None:
    resumed, untouched = make_generator(seed=seed), make_generator(seed=seed)
    resumed.resume({"AAPL": Decimal("200.00")})
    for changed, original in zip(batches(resumed, count), batches(untouched, count), strict=True):
        for symbol in ("GOOGL", "MSFT"):
            assert of_symbol(changed, symbol) == of_symbol(original, symbol)


def test_resume_ignores_symbols_the_generator_does_not_walk() -> None:
    generator = make_generator()
    generator.resume({"NOPE": Decimal("5.00")})
    assert set(generator.walks) == set(BASE_PRICES)
    assert {trade.symbol for trade in generator.batch(AT)} == set(BASE_PRICES)


def test_resume_clamps_a_stored_price_outside_the_band() -> None:
    generator = make_generator()
    generator.resume({"AAPL": Decimal("1000.00"), "MSFT": Decimal("0.01")})
    assert generator.walks["AAPL"].price == Decimal("228.00")
    assert generator.walks["MSFT"].price == Decimal("328.00")


@settings(max_examples=100, deadline=None)
@given(seed=seeds, before=batch_counts, discarded=batch_counts)
def test_restore_replays_the_discarded_batches_exactly(
    seed: int, before: int, discarded: int
) -> None:
    generator = make_generator(seed=seed)
    batches(generator, before)
    snapshot = generator.snapshot()
    lost = batches(generator, discarded)
    generator.restore(snapshot)
    assert batches(generator, discarded) == lost


def test_restore_after_resume_rewinds_the_resumed_walk() -> None:
    generator = make_generator()
    generator.resume({"AAPL": Decimal("200.00")})
    snapshot = generator.snapshot()
    lost = generator.batch(AT)
    generator.restore(snapshot)
    assert generator.walks["AAPL"].price == Decimal("200.00")
    assert generator.batch(AT) == lost
