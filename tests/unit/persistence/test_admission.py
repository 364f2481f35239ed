"""Admission to the read pool: arrival order, early refusal, bounded waits, no lost slots."""

from __future__ import annotations

import asyncio
import time

import pytest

from errors import DatabaseUnavailable, Overloaded
from persistence.admission import Abandoned, Admission, client_gone


def _admission(slots: int = 1, *, max_waiting: int = 100, max_wait: float = 60) -> Admission:
    return Admission(slots, max_waiting=max_waiting, max_wait=max_wait, timeout=5)


async def _hold(admission: Admission, name: str, order: list[str], release: asyncio.Event) -> None:
    async with admission.slot():
        order.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_are_served_in_arrival_order_and_newcomers_never_overtake() -> None:
    admission = _admission(slots=1)
    order: list[str] = []
    release = {name: asyncio.Event() for name in "abcd"}
    first = asyncio.create_task(_hold(admission, "a", order, release["a"]))
    await _settle()
    waiting = [asyncio.create_task(_hold(admission, n, order, release[n])) for n in "bc"]
    await _settle()

    # The holder leaves, and in the same step a newcomer asks: the slot is already b's.
    release["a"].set()
    await first
    newcomer = asyncio.create_task(_hold(admission, "d", order, release["d"]))
    for name in "bcd":
        release[name].set()
    await asyncio.gather(*waiting, newcomer)

    assert order == ["a", "b", "c", "d"]
    assert admission.free == 1 and not admission.waiters


async def test_a_newcomer_beyond_the_waiting_limit_is_refused_at_once() -> None:
    admission = _admission(slots=1, max_waiting=1)
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(admission, n, [], release)) for n in "ab"]
    await _settle()

    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        async with admission.slot():
            pytest.fail("admitted past the waiting limit")

    assert time.monotonic() - started < 0.5
    assert refused.value.code == "overloaded"
    release.set()
    await asyncio.gather(*holders)


async def test_a_newcomer_whose_wait_would_be_too_long_is_refused_at_once() -> None:
    admission = _admission(slots=2, max_wait=0.5)
    admission.hold_seconds = 0.4  # recent holders kept their slot this long
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(admission, n, [], release)) for n in "abcd"]
    await _settle()

    # Two waiting, so a newcomer expects 3 x 0.4 s / 2 slots = 0.6 s.
    assert admission.expected_wait() == pytest.approx(0.6)
    with pytest.raises(Overloaded):
        async with admission.slot():
            pytest.fail("admitted although its wait would exceed max_wait")
    release.set()
    await asyncio.gather(*holders)


async def test_a_newcomer_is_refused_once_the_longest_waiter_waited_max_wait() -> None:
    admission = _admission(slots=1, max_wait=0.5)
    release = asyncio.Event()
    holders = [asyncio.create_task(_hold(admission, n, [], release)) for n in "ab"]
    await _settle()
    # Holders said to be quick, but b has been waiting for a second: the queue does not move.
    admission.hold_seconds = 0.001
    future, _ = admission.waiters[0]
    admission.waiters[0] = (future, time.monotonic() - 1.0)

    assert admission.expected_wait() >= 1.0
    with pytest.raises(Overloaded):
        async with admission.slot():
            pytest.fail("admitted behind a queue that has not moved for max_wait")
    release.set()
    await asyncio.gather(*holders)


async def test_a_wait_longer_than_the_timeout_is_database_unavailable() -> None:
    admission = Admission(1, max_waiting=10, max_wait=60, timeout=0.05)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(admission, "a", [], release))
    await _settle()

    with pytest.raises(DatabaseUnavailable):
        async with admission.slot():
            pytest.fail("admitted while the only slot was held")

    assert not admission.waiters
    release.set()
    await holder
    assert admission.free == 1


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    admission = _admission(slots=1)
    order: list[str] = []
    held = admission.slot()
    await held.__aenter__()
    cancelled = asyncio.create_task(_hold(admission, "b", order, asyncio.Event()))
    release = asyncio.Event()
    release.set()
    last = asyncio.create_task(_hold(admission, "c", order, release))
    await _settle()

    await held.__aexit__(None, None, None)  # hands the slot to b, which has not run yet...
    cancelled.cancel()  # ...and goes away before it does
    await asyncio.gather(cancelled, return_exceptions=True)
    await last

    assert order == ["c"]
    assert admission.free == 1 and not admission.waiters


async def test_a_waiter_that_timed_out_before_a_release_skipped_it_leaves_no_trace() -> None:
    admission = _admission(slots=1)
    held = admission.slot()
    await held.__aenter__()
    late = asyncio.create_task(_hold(admission, "late", [], asyncio.Event()))
    await _settle()

    # Its timer fires and, before it runs again, the holder leaves: the release skips it.
    admission.waiters[0][0].set_exception(TimeoutError())
    await held.__aexit__(None, None, None)
    with pytest.raises(DatabaseUnavailable):
        await late

    assert admission.free == 1 and not admission.waiters


async def _hold_for(
    admission: Admission, name: str, order: list[str], release: asyncio.Event, gone: asyncio.Event
) -> None:
    # The web layer's part: what this request's waits watch for (mdp.connexion_adaptations).
    client_gone.set(gone.wait)
    await _hold(admission, name, order, release)


async def test_a_waiter_whose_client_goes_away_leaves_the_queue_at_once() -> None:
    admission = _admission(slots=1)
    order: list[str] = []
    release = asyncio.Event()
    gone = {name: asyncio.Event() for name in "abc"}
    holder = asyncio.create_task(_hold_for(admission, "a", order, release, gone["a"]))
    await _settle()
    leaving = asyncio.create_task(_hold_for(admission, "b", order, release, gone["b"]))
    staying = asyncio.create_task(_hold_for(admission, "c", order, release, gone["c"]))
    await _settle()

    gone["b"].set()
    with pytest.raises(Abandoned):
        await asyncio.wait_for(leaving, timeout=1)
    # Out of the queue while the slot is still held, not when its turn would have come.
    assert len(admission.waiters) == 1
    release.set()
    await asyncio.gather(holder, staying)

    assert order == ["a", "c"]
    assert admission.free == 1 and not admission.waiters


async def test_a_holder_whose_client_goes_away_keeps_its_slot() -> None:
    # Once admitted, the request's own code decides (a query is cancelled with its request).
    admission = _admission(slots=1)
    order: list[str] = []
    release, gone = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold_for(admission, "a", order, release, gone))
    await _settle()
    gone.set()
    await _settle()

    assert not holder.done() and admission.free == 0
    release.set()
    await holder
    assert order == ["a"] and admission.free == 1
