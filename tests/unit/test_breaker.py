"""CircuitBreaker on a fake clock: closed, open, half-open with one probe, doubling cooldown.

`permit()` sleeps through the module's asyncio.sleep, patched here to jump the fake clock and
only yield to the event loop, so nothing really waits.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Iterator

import pytest

from adapters import breaker as breaker_module
from adapters.breaker import CircuitBreaker

START = 1000.0
THRESHOLD = 3
COOLDOWN = 2.0
MAX_COOLDOWN = 10.0

_real_sleep = asyncio.sleep


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"time ran backwards: {seconds}"
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) > 10_000:
            raise AssertionError(f"permit keeps sleeping: {asked[-5:]}...")
        clock.advance(seconds)
        await _real_sleep(0)

    monkeypatch.setattr(breaker_module, "asyncio", types.SimpleNamespace(sleep=fake_sleep))
    yield asked


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        threshold=THRESHOLD, cooldown=COOLDOWN, max_cooldown=MAX_COOLDOWN, clock=clock
    )


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.failure()


async def settle(rounds: int = 20) -> None:
    """Let every runnable task run until it blocks again."""
    for _ in range(rounds):
        await _real_sleep(0)


async def probe_after_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> float:
    """Wait through the open state; return how long permit() waited."""
    before = clock()
    await breaker.permit()
    assert breaker.state == "half_open"
    return clock() - before


# --- closed -----------------------------------------------------------------------------------


async def test_starts_closed_and_lets_requests_through(
    breaker: CircuitBreaker, sleeps: list[float]
) -> None:
    assert breaker.state == "closed"
    for _ in range(10):
        await breaker.permit()
    assert sleeps == []
    assert breaker.opened == 0


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, THRESHOLD - 1)
    assert breaker.state == "closed"
    assert breaker.opened == 0
    breaker.failure()
    assert breaker.state == "open"
    assert breaker.opened == 1


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, THRESHOLD - 1)
    breaker.success()
    assert breaker.failures == 0
    fail(breaker, THRESHOLD - 1)
    assert breaker.state == "closed"  # 2 + 2 failures, but never 3 in a row
    breaker.failure()
    assert breaker.state == "open"


def test_scattered_failures_never_open_it(breaker: CircuitBreaker) -> None:
    for _ in range(50):
        fail(breaker, THRESHOLD - 1)
        breaker.success()
    assert breaker.state == "closed"
    assert breaker.opened == 0


@pytest.mark.parametrize("threshold", [1, 5])
def test_threshold_is_configurable(clock: FakeClock, threshold: int) -> None:
    breaker = CircuitBreaker(threshold=threshold, clock=clock)
    fail(breaker, threshold - 1)
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"


# --- open -------------------------------------------------------------------------------------


async def test_while_open_permit_waits_out_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    opened_at = clock()
    await breaker.permit()
    assert clock() == opened_at + COOLDOWN
    assert sum(sleeps) == COOLDOWN
    assert breaker.state == "half_open"


async def test_permit_waits_only_what_is_left_of_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    clock.advance(1.5)
    await breaker.permit()
    assert sleeps == [COOLDOWN - 1.5]
    assert clock() == START + COOLDOWN


async def test_after_the_cooldown_the_first_permit_is_the_probe_at_once(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    clock.advance(COOLDOWN)
    await breaker.permit()
    assert sleeps == []
    assert breaker.state == "half_open"


async def test_nobody_gets_through_while_open(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    returned: list[float] = []

    async def caller() -> None:
        await breaker.permit()
        returned.append(clock())

    tasks = [asyncio.create_task(caller()) for _ in range(4)]
    await settle()
    breaker.success()  # the probe's answer, so the waiters may go
    await asyncio.gather(*tasks)
    assert len(returned) == 4
    assert all(t >= START + COOLDOWN for t in returned)


def test_failures_while_open_do_not_reopen_it(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, THRESHOLD)
    clock.advance(1.0)
    fail(breaker, 5)  # requests that were already in flight
    assert breaker.state == "open"
    assert breaker.opened == 1


async def test_failures_while_open_do_not_extend_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    clock.advance(1.0)
    fail(breaker, 5)
    await breaker.permit()
    assert clock() == START + COOLDOWN


# --- half-open --------------------------------------------------------------------------------


async def test_exactly_one_probe_while_the_others_wait(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    clock.advance(COOLDOWN)
    let_through: list[int] = []

    async def caller(n: int) -> None:
        await breaker.permit()
        let_through.append(n)

    tasks = [asyncio.create_task(caller(n)) for n in range(5)]
    await settle(50)
    assert len(let_through) == 1, "one probe, and only one"
    assert breaker.state == "half_open"
    await settle(50)  # however long the probe takes
    assert len(let_through) == 1
    breaker.success()
    await asyncio.gather(*tasks)
    assert sorted(let_through) == list(range(5))
    assert breaker.state == "closed"


async def test_a_successful_probe_closes_it(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    await probe_after_cooldown(breaker, clock)
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.failures == 0
    sleeps.clear()
    await breaker.permit()
    assert sleeps == []
    fail(breaker, THRESHOLD - 1)  # a fresh count
    assert breaker.state == "closed"


async def test_a_failed_probe_reopens_it_at_once(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    await probe_after_cooldown(breaker, clock)
    breaker.failure()  # one failure, not `threshold`
    assert breaker.state == "open"
    assert breaker.opened == 2


async def test_each_failed_probe_doubles_the_cooldown_up_to_the_max(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    waits = []
    for _ in range(5):
        waits.append(await probe_after_cooldown(breaker, clock))
        breaker.failure()
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert breaker.opened == 6


async def test_a_successful_probe_resets_the_cooldown(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    for _ in range(3):  # cooldowns 2, 4, 8: the next would be 10
        await probe_after_cooldown(breaker, clock)
        breaker.failure()
    await probe_after_cooldown(breaker, clock)
    breaker.success()
    fail(breaker, THRESHOLD)
    assert await probe_after_cooldown(breaker, clock) == COOLDOWN


async def test_after_a_failed_probe_the_waiters_wait_again_and_one_probes(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    fail(breaker, THRESHOLD)
    clock.advance(COOLDOWN)
    await breaker.permit()  # this caller is the probe
    let_through: list[float] = []

    async def caller() -> None:
        await breaker.permit()
        let_through.append(clock())

    tasks = [asyncio.create_task(caller()) for _ in range(3)]
    await settle()
    assert let_through == []
    failed_at = clock()
    breaker.failure()  # the probe failed: open again for 2 * COOLDOWN
    await settle(50)
    assert len(let_through) == 1  # the next probe, after the doubled cooldown
    assert let_through[0] >= failed_at + 2 * COOLDOWN
    breaker.success()
    await asyncio.gather(*tasks)
    assert len(let_through) == 3


async def test_opened_counts_every_opening(
    breaker: CircuitBreaker, clock: FakeClock, sleeps: list[float]
) -> None:
    assert breaker.opened == 0
    fail(breaker, THRESHOLD)
    assert breaker.opened == 1
    fail(breaker, THRESHOLD)  # already open
    assert breaker.opened == 1
    await probe_after_cooldown(breaker, clock)
    breaker.failure()
    assert breaker.opened == 2
    await probe_after_cooldown(breaker, clock)
    breaker.success()
    assert breaker.opened == 2
    fail(breaker, THRESHOLD)
    assert breaker.opened == 3


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert (breaker.threshold, breaker.base_cooldown, breaker.max_cooldown) == (5, 1.0, 30.0)
    assert breaker.state == "closed"
