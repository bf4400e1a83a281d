"""TokenBucket on a fake clock (never really waiting), and RetryPolicy backoff with full jitter."""

from __future__ import annotations

import random
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import ratelimit
from adapters.ratelimit import TokenBucket
from adapters.retry import RetryPolicy

# Powers of two keep the fake clock's arithmetic exact, so waits compare without rounding.
CAPACITY = 8
WINDOW = 2.0
RATE = CAPACITY / WINDOW  # tokens per second
INTERVAL = 1 / RATE  # seconds per token once the bucket is empty


class FakeClock:
    def __init__(self, start: float = 1024.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bucket(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> TokenBucket:
    bucket = TokenBucket(CAPACITY, WINDOW)
    monkeypatch.setattr(bucket, "_now", clock)
    monkeypatch.setattr(bucket, "_updated", clock())  # the fake clock's epoch, not monotonic's
    return bucket


@pytest.fixture
def sleeps(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every sleep `acquire` asks for and let the fake clock jump ahead instead."""
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) > 100:
            raise AssertionError(f"acquire keeps sleeping: {asked[:5]}...")
        clock.advance(seconds)

    fake_asyncio = types.SimpleNamespace(sleep=fake_sleep)
    monkeypatch.setattr(ratelimit, "asyncio", fake_asyncio)
    return asked


async def drain(bucket: TokenBucket, n: int) -> None:
    for _ in range(n):
        await bucket.acquire()


async def test_full_bucket_gives_capacity_tokens_at_once(
    bucket: TokenBucket, sleeps: list[float]
) -> None:
    for _ in range(CAPACITY):
        assert bucket.wait_time() == 0
        await bucket.acquire()
    assert sleeps == []
    assert bucket.wait_time() == pytest.approx(INTERVAL)


async def test_empty_bucket_waits_one_interval_per_token(
    bucket: TokenBucket, clock: FakeClock, sleeps: list[float]
) -> None:
    await drain(bucket, CAPACITY)
    start = clock()
    await drain(bucket, 3)
    assert sleeps == pytest.approx([INTERVAL] * 3)
    assert clock() - start == pytest.approx(3 * INTERVAL)


async def test_tokens_refill_over_time_up_to_capacity(
    bucket: TokenBucket, clock: FakeClock, sleeps: list[float]
) -> None:
    await drain(bucket, CAPACITY)
    clock.advance(INTERVAL / 2)
    assert bucket.wait_time() == pytest.approx(INTERVAL / 2)
    clock.advance(INTERVAL / 2)
    assert bucket.wait_time() == 0
    clock.advance(WINDOW * 10)  # idle for long: the bucket holds no more than its capacity
    await drain(bucket, CAPACITY)
    assert sleeps == []
    assert bucket.wait_time() == pytest.approx(INTERVAL)


def test_partial_refill_shortens_the_wait(bucket: TokenBucket, clock: FakeClock) -> None:
    bucket.pause(0)  # empty now
    clock.advance(INTERVAL * 0.25)
    assert bucket.wait_time() == pytest.approx(INTERVAL * 0.75)


def test_pause_empties_the_bucket_and_holds_it(bucket: TokenBucket, clock: FakeClock) -> None:
    assert bucket.wait_time() == 0
    bucket.pause(5.0)
    assert bucket.wait_time() == pytest.approx(5.0)
    clock.advance(2.0)
    assert bucket.wait_time() == pytest.approx(3.0)
    clock.advance(3.0 - 2**-10)
    assert bucket.wait_time() == pytest.approx(2**-10)
    clock.advance(2**-10)
    assert bucket.wait_time() == 0


def test_short_pause_still_empties_the_bucket(bucket: TokenBucket) -> None:
    bucket.pause(INTERVAL / 10)
    assert bucket.wait_time() == pytest.approx(INTERVAL)


def test_a_shorter_pause_does_not_cut_a_longer_one(bucket: TokenBucket, clock: FakeClock) -> None:
    bucket.pause(10.0)
    clock.advance(1.0)
    bucket.pause(1.0)
    assert bucket.wait_time() == pytest.approx(9.0)


async def test_acquire_waits_out_a_pause(
    bucket: TokenBucket, clock: FakeClock, sleeps: list[float]
) -> None:
    bucket.pause(4.0)
    start = clock()
    await bucket.acquire()
    assert clock() - start == pytest.approx(4.0)
    assert sum(sleeps) == pytest.approx(4.0)


async def test_acquire_on_a_real_clock_takes_capacity_tokens_without_sleeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = TokenBucket(capacity=50, window=3600.0)
    asked: list[float] = []

    async def no_sleep(seconds: float) -> None:
        asked.append(seconds)
        raise AssertionError(f"acquire slept {seconds}s on a full bucket")

    monkeypatch.setattr(ratelimit, "asyncio", types.SimpleNamespace(sleep=no_sleep))
    await drain(bucket, 50)
    assert asked == []
    assert bucket.wait_time() > 0  # and the 51st would have to wait


# --- RetryPolicy ------------------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**32),
    attempt=st.integers(1, 200),
    base=st.floats(0.001, 5.0),
    cap=st.floats(0.01, 600.0),
)
def test_backoff_is_full_jitter_under_an_exponential_ceiling(
    seed: int, attempt: int, base: float, cap: float
) -> None:
    policy = RetryPolicy(base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = policy.delay(attempt)
    assert ceiling / 2 <= delay <= ceiling


def test_backoff_grows_then_stops_at_the_cap() -> None:
    policy = RetryPolicy(base=0.2, cap=30.0, rng=random.Random(7))
    ceilings = [min(30.0, 0.2 * 2 ** (n - 1)) for n in range(1, 13)]
    delays = [policy.delay(n) for n in range(1, 13)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert delays[0] <= 0.2
    assert delays[-1] >= 15.0


def test_backoff_is_jittered_and_reproducible_with_a_seed() -> None:
    first = [RetryPolicy(rng=random.Random(42)).delay(5) for _ in range(3)]
    policy = RetryPolicy(rng=random.Random(42))
    draws = [policy.delay(5) for _ in range(50)]
    assert first == [draws[0]] * 3
    assert len(set(draws)) > 1  # not a fixed delay: concurrent retries spread out


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (0.5, 0.5), (0, 0.0)])
def test_retry_after_is_honoured(retry_after: float, expected: float) -> None:
    policy = RetryPolicy(base=0.2, cap=30.0, rng=random.Random(1))
    assert policy.delay(1, retry_after) == expected
    assert policy.delay(9, retry_after) == expected


@pytest.mark.parametrize(("retry_after", "expected"), [(3600.0, 30.0), (-5.0, 0.0)])
def test_retry_after_is_capped_and_never_negative(retry_after: float, expected: float) -> None:
    assert RetryPolicy(cap=30.0).delay(1, retry_after) == expected


def test_exhausted_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in range(1, 6)] == [False, False, True, True, True]
