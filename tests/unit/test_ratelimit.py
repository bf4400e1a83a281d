"""RequestWindow and Throttle on a fake clock (never really waiting), and RetryPolicy.

The central claim: with a known quota, the limiter never sends a request the target would
refuse. The property tests simulate the target: it counts the requests it *received* in a
sliding window of the nominal length, and a request reaches it up to `margin` seconds after
the limiter let it go.

Pacing does not widen that: arrival jitter beyond the margin can still draw a 429, however
evenly the requests are spaced. What pacing bounds is how far over: a target window holds at
most `limit + ceil((jitter - margin) / spacing)` requests, where a burst could put `2 * limit`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters import ratelimit
from adapters.ratelimit import PACED_WINDOW, RequestWindow, Throttle
from adapters.retry import RetryPolicy
from adapters.target import Quota

# Dyadic numbers keep the fake clock's arithmetic exact, so waits compare with `==`:
# a window of 1000/128 s has buckets of exactly 2**-7 s.
LIMIT = 4
WINDOW = 1000 / 128  # 7.8125 s
WIDTH = WINDOW / 1000  # 2**-7 s
MARGIN = 2**-4
SPAN = WINDOW + MARGIN  # how long a request counts, at least
TICK = 2**-10  # a step shorter than a bucket
START = 1024.0  # a bucket boundary


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"time ran backwards: {seconds}"
        self.now += seconds


_real_sleep = asyncio.sleep


@contextmanager
def fake_sleeps(clock: FakeClock, limit: int = 10_000) -> Iterator[list[float]]:
    """Patch the module's asyncio.sleep: every sleep is recorded, jumps the fake clock ahead
    and only yields to the event loop (so other tasks run), never really waiting."""
    asked: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) > limit:
            raise AssertionError(f"keeps sleeping: {asked[:5]}...")
        clock.advance(seconds)
        await _real_sleep(0)

    fake_asyncio = types.SimpleNamespace(sleep=fake_sleep, Lock=asyncio.Lock)
    with mock.patch.object(ratelimit, "asyncio", fake_asyncio):
        yield asked


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeps(clock: FakeClock) -> Iterator[list[float]]:
    with fake_sleeps(clock, limit=100) as asked:
        yield asked


@pytest.fixture
def window(clock: FakeClock) -> RequestWindow:
    return RequestWindow(LIMIT, WINDOW, margin=MARGIN, clock=clock)


# --- RequestWindow ----------------------------------------------------------------------------


def test_window_keeps_its_nominal_length_and_stretches_by_the_margin() -> None:
    window = RequestWindow(100, 10.0, margin=0.04)
    assert window.limit == 100
    assert window.nominal_window == 10.0
    assert window.window == pytest.approx(10.04)


def test_limit_requests_go_at_once_then_the_window_is_full(window: RequestWindow) -> None:
    for n in range(LIMIT):
        assert window.used() == n
        assert window.wait_time() == 0
        window.take()
    assert window.used() == LIMIT
    assert window.wait_time() > 0


def test_wait_time_when_full_is_exactly_until_the_oldest_bucket_leaves(
    window: RequestWindow, clock: FakeClock
) -> None:
    window.take()  # at START, a bucket boundary
    clock.advance(0.25)
    window.take(LIMIT - 1)
    clock.advance(1.0)
    expected = START + WIDTH + SPAN - clock()
    assert window.wait_time() == expected
    clock.advance(expected - TICK)
    assert window.wait_time() == TICK
    assert window.used() == LIMIT
    clock.advance(TICK)
    assert window.wait_time() == 0
    assert window.used() == LIMIT - 1  # only the oldest request left; the others still count


def test_a_request_inside_a_bucket_counts_until_the_bucket_leaves(
    window: RequestWindow, clock: FakeClock
) -> None:
    clock.advance(WIDTH / 2)  # mid-bucket: the bucket started at START
    window.take(LIMIT)
    assert window.wait_time() == START + WIDTH + SPAN - clock()
    assert SPAN < window.wait_time() <= SPAN + WIDTH


def test_wait_time_over_the_limit_waits_for_enough_buckets(
    window: RequestWindow, clock: FakeClock
) -> None:
    """Over the limit (after a correction), wait until `used - limit + 1` requests leave."""
    window.take(1)
    clock.advance(1.0)
    window.take(LIMIT)  # LIMIT + 1 in the books: two must leave, the first bucket holds one
    assert window.wait_time() == START + 1.0 + WIDTH + SPAN - clock()
    clock.advance(window.wait_time())
    assert window.used() == 0


def test_several_in_the_oldest_bucket_are_enough(window: RequestWindow, clock: FakeClock) -> None:
    window.take(3)
    clock.advance(1.0)
    window.take(LIMIT - 1)  # LIMIT + 2 in the books: three must leave, all in the first bucket
    assert window.wait_time() == START + WIDTH + SPAN - clock()


def test_buckets_expire_one_by_one(window: RequestWindow, clock: FakeClock) -> None:
    times = [0.0, 0.5, 2.0, 3.0]
    for offset in times:
        clock.now = START + offset
        window.take()
    for n, offset in enumerate(times):
        expiry = START + offset + WIDTH + SPAN
        clock.now = expiry - TICK
        assert window.used() == LIMIT - n
        clock.now = expiry
        assert window.used() == LIMIT - n - 1


def test_an_idle_window_is_empty_again(window: RequestWindow, clock: FakeClock) -> None:
    window.take(LIMIT)
    clock.advance(10 * SPAN)
    assert window.used() == 0
    assert window.wait_time() == 0


def test_a_daily_window_keeps_at_most_a_thousand_buckets() -> None:
    clock = FakeClock(0.0)
    window = RequestWindow(1_000_000, 86_400.0, clock=clock)
    for _ in range(20_000):
        window.take()
        clock.advance(7.3)  # 20,000 requests over ~1.7 days
    assert window.used() == pytest.approx(86_400 / 7.3, abs=15)
    assert len(window._buckets) <= 1002  # counters, not a timestamp per request


@settings(max_examples=200)
@given(
    offset=st.integers(0, 100_000).map(lambda k: k * 2**-12),
    margin=st.sampled_from([0.0, 2**-8, 2**-4, 0.5]),
)
def test_a_request_counts_at_least_the_stretched_window_and_at_most_one_bucket_more(
    offset: float, margin: float
) -> None:
    """Counting a partly expired bucket as whole errs on the safe side, by under 0.1 %."""
    clock = FakeClock(START + offset)
    window = RequestWindow(1, WINDOW, margin=margin, clock=clock)
    window.take()
    wait = window.wait_time()
    assert WINDOW + margin < wait <= WINDOW + margin + WIDTH
    clock.advance(wait)
    assert window.wait_time() == 0


def test_correct_counts_what_the_server_saw_beyond_our_books(clock: FakeClock) -> None:
    window = RequestWindow(100, 10.0, clock=clock)
    window.take(10)
    window.correct(remaining=80)  # someone else sent 10 more on the same account
    assert window.used() == 20
    window.correct(remaining=80)  # the same report again: nothing new
    assert window.used() == 20
    window.correct(remaining=0)
    assert window.used() == 100
    assert window.wait_time() > 0


def test_correct_never_adds_room(clock: FakeClock) -> None:
    window = RequestWindow(100, 10.0, clock=clock)
    window.take(10)
    window.correct(remaining=95)  # the server has not seen all of ours yet
    assert window.used() == 10
    window.correct(remaining=1000)
    assert window.used() == 10


@given(
    limit=st.integers(1, 50),
    sent=st.integers(0, 60),
    remaining=st.integers(0, 80),
)
def test_correct_only_ever_lowers_what_is_left(limit: int, sent: int, remaining: int) -> None:
    clock = FakeClock()
    window = RequestWindow(limit, 10.0, clock=clock)
    if sent:
        window.take(sent)
    left_before = limit - window.used()
    window.correct(remaining)
    left_after = limit - window.used()
    assert left_after <= left_before
    assert left_after == min(left_before, remaining)


def test_correct_compares_with_what_is_still_in_the_window(
    window: RequestWindow, clock: FakeClock
) -> None:
    window.take(LIMIT)
    clock.advance(2 * SPAN)  # ours have all left the window
    window.correct(remaining=LIMIT - 1)  # the server saw one we did not send
    assert window.used() == 1


def test_corrected_requests_count_from_when_they_were_reported(
    window: RequestWindow, clock: FakeClock
) -> None:
    window.take()
    clock.advance(2.0)
    window.correct(remaining=LIMIT - 3)  # two more than ours
    assert window.used() == 3
    clock.now = START + WIDTH + SPAN
    assert window.used() == 2  # ours left; the two reported ones count from START + 2
    clock.now = START + 2.0 + WIDTH + SPAN
    assert window.used() == 0


# --- zero 429s with a known quota ---------------------------------------------------------------


def server_refusals(
    sent: list[float],
    latencies: list[float],
    limit: int,
    window: float,
    resolution: float = 0.0,
) -> list[float]:
    """The receipt times at which a target counting received requests in the closed sliding
    window [r - window, r] would see more than `limit` (and answer 429). `resolution` is how
    far apart two times must be for the target's clock to tell them apart."""
    receipts = sorted(t + lat for t, lat in zip(sent, latencies, strict=True))
    refused = []
    lo = 0
    for hi, r in enumerate(receipts):
        while receipts[lo] < r - window + resolution:
            lo += 1
        if hi - lo + 1 > limit:
            refused.append(r)
    return refused


def busiest_server_window(sent: list[float], latencies: list[float], window: float) -> int:
    """The most requests the target received in one closed sliding window of `window` s."""
    receipts = sorted(t + lat for t, lat in zip(sent, latencies, strict=True))
    busiest, lo = 0, 0
    for hi, r in enumerate(receipts):
        while receipts[lo] < r - window:
            lo += 1
        busiest = max(busiest, hi - lo + 1)
    return busiest


def send_all(throttle: Throttle, clock: FakeClock, arrivals: list[float]) -> list[float]:
    """One caller after another asks to send at `arrivals`; returns when each was let go."""
    sent: list[float] = []

    async def run() -> None:
        for arrival in arrivals:
            if clock() < arrival:
                clock.now = arrival
            await throttle.acquire()
            sent.append(clock())

    with fake_sleeps(clock):
        asyncio.run(run())
    return sent


_EXACT_GAPS = st.one_of(
    st.just(0.0),
    st.integers(0, 64).map(lambda k: k * 2**-10),  # bursts
    st.integers(0, 4096).map(lambda k: k * 2**-9),  # up to 8 s apart
)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 6),
    window=st.sampled_from([WINDOW, 1000 / 1024, 1000 / 16]),
    margin=st.sampled_from([0.0, 2**-10, 2**-4, 0.5]),
    requests=st.lists(st.tuples(_EXACT_GAPS, st.integers(0, 16)), min_size=1, max_size=60),
)
def test_the_server_never_refuses_a_request_exact_arithmetic(
    limit: int, window: float, margin: float, requests: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    throttle = Throttle([RequestWindow(limit, window, margin=margin, clock=clock)], clock=clock)
    arrivals, latencies, t = [], [], START
    for gap, sixteenths in requests:
        t += gap
        arrivals.append(t)
        latencies.append(margin * sixteenths / 16)  # anywhere in [0, margin]
    sent = send_all(throttle, clock, arrivals)
    assert all(s >= a for s, a in zip(sent, arrivals, strict=True))
    assert server_refusals(sent, latencies, limit, window) == []


@settings(max_examples=200, deadline=None)
@example(limit=1, window=1.0, start=0.0, requests=[(1.0, 0.04), (0.0, 0.0)])
@given(
    limit=st.integers(1, 5),
    window=st.sampled_from([1.0, 10.0, 60.0]),  # Stripe, HubSpot, Zendesk
    start=st.floats(0.0, 1e6),
    requests=st.lists(
        st.tuples(st.floats(0.0, 3.0), st.floats(0.0, 0.04)), min_size=1, max_size=40
    ),
)
def test_the_server_never_refuses_a_request_vendor_windows(
    limit: int, window: float, start: float, requests: list[tuple[float, float]]
) -> None:
    """The vendors' windows and the default margin, on arbitrary float times and latencies.

    Bucket bounds are multiples of window / 1000, which floats round: a request can fall on
    the very end of its bucket and count for exactly window + margin, no longer. Sent then
    with the whole margin of latency and the next with none, the two arrive exactly one
    window apart, to the last bit: a tie no server clock can see. So the simulated target
    here tells times apart to the microsecond (the example below is that tie)."""
    clock = FakeClock(start)
    throttle = Throttle([RequestWindow(limit, window, clock=clock)], clock=clock)
    arrivals, latencies, t = [], [], start
    for gap, latency in requests:
        t += gap
        arrivals.append(t)
        latencies.append(latency)
    sent = send_all(throttle, clock, arrivals)
    assert server_refusals(sent, latencies, limit, window, resolution=1e-6) == []


@settings(max_examples=150, deadline=None)
@given(
    short_limit=st.integers(1, 4),
    long_limit=st.integers(2, 10),
    requests=st.lists(st.tuples(_EXACT_GAPS, st.integers(0, 16)), min_size=1, max_size=50),
)
def test_the_server_never_refuses_with_several_windows(
    short_limit: int, long_limit: int, requests: list[tuple[float, int]]
) -> None:
    clock = FakeClock()
    short = RequestWindow(short_limit, 1000 / 1024, margin=MARGIN, clock=clock)
    long = RequestWindow(long_limit, WINDOW, margin=MARGIN, clock=clock)
    throttle = Throttle([short, long], clock=clock)
    arrivals, latencies, t = [], [], START
    for gap, sixteenths in requests:
        t += gap
        arrivals.append(t)
        latencies.append(MARGIN * sixteenths / 16)
    sent = send_all(throttle, clock, arrivals)
    assert server_refusals(sent, latencies, short_limit, 1000 / 1024) == []
    assert server_refusals(sent, latencies, long_limit, WINDOW) == []


def test_the_simulated_server_does_refuse_a_burst_over_the_limit() -> None:
    """The property above can fail: without the limiter, the server refuses."""
    sent = [START + i * 0.1 for i in range(LIMIT + 1)]
    assert server_refusals(sent, [0.0] * len(sent), LIMIT, WINDOW) == [sent[-1]]
    # and latency jitter alone can squeeze two requests into one window:
    assert server_refusals([0.0, 1.0], [MARGIN, 0.0], 1, 1.0 - MARGIN / 2) == [1.0]


def test_a_window_without_the_margin_would_draw_a_429(clock: FakeClock) -> None:
    """Why the margin: sent exactly one window apart, a slow request and a fast one land
    inside one server window."""
    bare = RequestWindow(1, WINDOW, margin=0.0, clock=clock)
    throttle = Throttle([bare], clock=clock)
    sent = send_all(throttle, clock, [START, START])
    assert server_refusals(sent, [MARGIN, 0.0], 1, WINDOW) != []
    clock2 = FakeClock()
    padded = Throttle([RequestWindow(1, WINDOW, margin=MARGIN, clock=clock2)], clock=clock2)
    sent = send_all(padded, clock2, [START, START])
    assert server_refusals(sent, [MARGIN, 0.0], 1, WINDOW) == []


@settings(max_examples=300, deadline=None)
@given(
    limit=st.sampled_from([1, 2, 4, 8]),  # powers of two: the spacing stays exact
    window=st.sampled_from([WINDOW, 1000 / 1024, 1000 / 16]),
    margin=st.sampled_from([0.0, 2**-10, 2**-4, 0.5]),
    eighths=st.integers(0, 24),  # jitter beyond the margin, in eighths of the spacing
    requests=st.lists(st.tuples(_EXACT_GAPS, st.integers(0, 16)), min_size=1, max_size=60),
)
@example(limit=4, window=WINDOW, margin=2**-4, eighths=1, requests=[(0.0, 16)] + [(0.0, 0)] * 8)
def test_paced_requests_overload_the_server_by_at_most_the_jitter_beyond_the_margin(
    limit: int, window: float, margin: float, eighths: int, requests: list[tuple[float, int]]
) -> None:
    """Arrival jitter up to three spacings beyond the margin. Paced sends are `spacing` apart,
    and the window lets at most `limit` go in any `window + margin` s, so a target window,
    which collects what was sent in `window + jitter` s, holds at most
    `limit + ceil((jitter - margin) / spacing)`: none over within the margin, and jitter up to
    one spacing beyond it puts at most one request too many in a target window."""
    clock = FakeClock()
    throttle = Throttle([RequestWindow(limit, window, margin=margin, clock=clock)], clock=clock)
    spacing = window / limit
    assert throttle.spacing == spacing
    jitter = margin + eighths * spacing / 8
    arrivals, latencies, t = [], [], START
    for gap, sixteenths in requests:
        t += gap
        arrivals.append(t)
        latencies.append(jitter * sixteenths / 16)  # anywhere in [0, jitter]
    sent = send_all(throttle, clock, arrivals)
    assert all(b - a >= spacing for a, b in pairwise(sent))
    over = math.ceil(eighths / 8)  # ceil((jitter - margin) / spacing), exactly
    assert busiest_server_window(sent, latencies, window) <= limit + over
    if over == 0:
        assert server_refusals(sent, latencies, limit, window) == []


@pytest.mark.parametrize("over", [1, 2, 3])
def test_jitter_beyond_the_margin_draws_429s_even_paced_but_fewer_than_a_burst(
    over: int,
) -> None:
    """The bound above is reached, so pacing does not absorb jitter beyond the margin: with
    `over == 1` the jitter is the margin plus one bucket (0.07 s), far under half the spacing
    (0.98 s), and the target still sees `limit + 1`. The first round arrives late by the whole
    jitter, the second on time. Without pacing (the burst the spacing replaced), the same
    jitter puts both rounds whole in one target window."""
    spacing = WINDOW / LIMIT
    jitter = MARGIN + WIDTH + (over - 1) * spacing
    arrivals = [START + WIDTH / 2] * (2 * LIMIT)  # mid-bucket: no ties at the target
    latencies = [jitter] * LIMIT + [0.0] * LIMIT
    clock = FakeClock()
    paced = Throttle([RequestWindow(LIMIT, WINDOW, margin=MARGIN, clock=clock)], clock=clock)
    assert paced.spacing == spacing
    sent = send_all(paced, clock, arrivals)
    assert sent[LIMIT] == START + WIDTH + SPAN  # the second round waited for the window
    assert busiest_server_window(sent, latencies, WINDOW) == LIMIT + over
    assert server_refusals(sent, latencies, LIMIT, WINDOW) != []
    clock = FakeClock()
    burst = Throttle([RequestWindow(LIMIT, WINDOW, margin=MARGIN, clock=clock)], clock=clock)
    burst.spacing = 0.0
    sent = send_all(burst, clock, arrivals)
    assert sent == [START + WIDTH / 2] * LIMIT + [START + WIDTH + SPAN] * LIMIT
    assert busiest_server_window(sent, latencies, WINDOW) == 2 * LIMIT


# --- Throttle ---------------------------------------------------------------------------------


def hubspot_windows(clock: FakeClock) -> tuple[RequestWindow, RequestWindow]:
    return (
        RequestWindow(100, 10.0, clock=clock),
        RequestWindow(250_000, 86_400.0, clock=clock),
    )


async def test_acquire_takes_from_every_window(clock: FakeClock, sleeps: list[float]) -> None:
    ten_s, daily = hubspot_windows(clock)
    throttle = Throttle([ten_s, daily], clock=clock)
    for _ in range(7):
        await throttle.acquire()
    assert (ten_s.used(), daily.used()) == (7, 7)
    assert sleeps == pytest.approx([0.1] * 6)  # only paced: neither window was full


async def test_acquire_waits_for_the_fullest_window(clock: FakeClock, sleeps: list[float]) -> None:
    short = RequestWindow(LIMIT, 1000 / 1024, margin=MARGIN, clock=clock)
    long = RequestWindow(2, WINDOW, margin=MARGIN, clock=clock)
    throttle = Throttle([short, long], clock=clock)
    assert throttle.spacing == WINDOW / 2  # the long window is the stricter rate
    await throttle.acquire()
    await throttle.acquire()
    assert sleeps == [WINDOW / 2]
    assert short.wait_time() == 0
    assert clock() + throttle.spacing == START + WINDOW  # the pace would allow a send here,
    assert throttle.wait_time() == long.wait_time() == START + WIDTH + SPAN - clock()  # not yet
    await throttle.acquire()
    assert clock() == START + WIDTH + SPAN
    assert sum(sleeps) == WIDTH + SPAN


async def test_limit_acquires_go_one_spacing_apart_then_one_waits_exactly_for_the_window(
    clock: FakeClock, sleeps: list[float]
) -> None:
    throttle = Throttle([RequestWindow(LIMIT, WINDOW, margin=MARGIN, clock=clock)], clock=clock)
    spacing = WINDOW / LIMIT
    sent = []
    for _ in range(LIMIT):
        await throttle.acquire()
        sent.append(clock())
    assert sent == [START + k * spacing for k in range(LIMIT)]
    assert sleeps == [spacing] * (LIMIT - 1)
    await throttle.acquire()  # the window, not the pace: the first request must leave it
    assert sleeps[-1] == START + WIDTH + SPAN - sent[-1] > spacing
    assert clock() == START + WIDTH + SPAN


async def test_consecutive_acquires_are_spaced_by_exactly_the_spacing(
    clock: FakeClock, sleeps: list[float]
) -> None:
    throttle = Throttle([RequestWindow(64, 8.0, margin=MARGIN, clock=clock)], clock=clock)
    assert throttle.spacing == 0.125
    sent = []
    for _ in range(10):
        await throttle.acquire()
        sent.append(clock())
    assert sent == [START + k * 0.125 for k in range(10)]
    assert sleeps == [0.125] * 9
    assert throttle.wait_time() == 0.125


async def test_pacing_counts_from_the_previous_send_and_idle_time_banks_no_burst(
    clock: FakeClock, sleeps: list[float]
) -> None:
    throttle = Throttle([RequestWindow(64, 8.0, margin=MARGIN, clock=clock)], clock=clock)
    await throttle.acquire()
    clock.advance(2**-4)  # a caller half a spacing later waits only the other half
    await throttle.acquire()
    assert sleeps == [2**-4]
    assert clock() == START + 0.125
    clock.advance(5.0)  # idle for 40 spacings: the next goes at once, the rest are paced
    sleeps.clear()
    for _ in range(3):
        await throttle.acquire()
    assert sleeps == [0.125, 0.125]
    assert clock() == START + 5.375


@pytest.mark.parametrize(
    ("limits", "spacing"),
    [
        ([(100, 10.0), (250_000, 86_400.0)], 10.0 / 100),  # HubSpot: the daily one does not pace
        ([(100, 1.0)], 1.0 / 100),  # Stripe live
        ([(700, 60.0)], 60.0 / 700),  # Zendesk enterprise
        ([(100, 10.0), (25, 1.0)], 10.0 / 100),  # 10/s on average is stricter than 25/s
        ([(25, 1.0), (100, 10.0)], 10.0 / 100),  # in either order
        ([(100, 10.0), (5, 1.0)], 1.0 / 5),  # here the short window is the stricter
        ([(50, PACED_WINDOW)], PACED_WINDOW / 50),  # an hour still paces
        ([(10, 2 * PACED_WINDOW)], 0.0),  # longer does not
        ([(15_000, 86_400.0)], 0.0),  # Salesforce: only a daily allowance
        ([], 0.0),
    ],
)
def test_the_spacing_is_taken_from_the_strictest_window_up_to_an_hour(
    clock: FakeClock, limits: list[tuple[int, float]], spacing: float
) -> None:
    windows = [RequestWindow(limit, seconds, clock=clock) for limit, seconds in limits]
    assert Throttle(windows, clock=clock).spacing == spacing


async def test_a_daily_window_alone_does_not_pace(clock: FakeClock, sleeps: list[float]) -> None:
    daily = RequestWindow(15_000, 86_400.0, clock=clock)  # Salesforce developer edition
    throttle = Throttle([daily], clock=clock)
    for _ in range(50):
        await throttle.acquire()
    assert sleeps == []  # a burst goes out at once
    assert clock() == START
    assert daily.used() == 50
    assert throttle.wait_time() == 0


def test_observe_corrects_the_window_of_the_same_length(clock: FakeClock) -> None:
    ten_s, daily = hubspot_windows(clock)
    throttle = Throttle([ten_s, daily], clock=clock)
    throttle.observe([Quota(limit=100, remaining=90, window=10.0)])
    assert (ten_s.used(), daily.used()) == (10, 0)
    throttle.observe([Quota(limit=250_000, remaining=249_000, window=86_400.0)])
    assert (ten_s.used(), daily.used()) == (10, 1000)


def test_observe_matches_regardless_of_order(clock: FakeClock) -> None:
    ten_s, daily = hubspot_windows(clock)
    throttle = Throttle([daily, ten_s], clock=clock)
    throttle.observe(
        [
            Quota(limit=250_000, remaining=200_000, window=86_400.0, reset_after=3600.0),
            Quota(limit=100, remaining=1, window=10.0),
        ]
    )
    assert (ten_s.used(), daily.used()) == (99, 50_000)


@pytest.mark.parametrize(("reported", "matches"), [(10.05, True), (9.95, True), (11.0, False)])
def test_observe_tolerates_a_rounded_window_length(
    clock: FakeClock, reported: float, matches: bool
) -> None:
    ten_s, daily = hubspot_windows(clock)
    Throttle([ten_s, daily], clock=clock).observe([Quota(100, 50, reported)])
    assert ten_s.used() == (50 if matches else 0)
    assert daily.used() == 0


def test_observe_ignores_a_quota_for_a_window_it_does_not_keep(clock: FakeClock) -> None:
    ten_s, daily = hubspot_windows(clock)
    throttle = Throttle([ten_s, daily], clock=clock)
    throttle.observe([Quota(limit=5, remaining=0, window=1.0), Quota(10, 0, 60.0)])
    assert (ten_s.used(), daily.used()) == (0, 0)
    throttle.observe([])
    assert throttle.wait_time() == 0


def test_pause_holds_and_counts_down(clock: FakeClock) -> None:
    throttle = Throttle([RequestWindow(LIMIT, WINDOW, clock=clock)], clock=clock)
    assert throttle.wait_time() == 0
    throttle.pause(5.0)
    assert throttle.wait_time() == 5.0
    clock.advance(2.0)
    assert throttle.wait_time() == 3.0
    clock.advance(3.0 - TICK)
    assert throttle.wait_time() == TICK
    clock.advance(TICK)
    assert throttle.wait_time() == 0


def test_a_shorter_pause_does_not_cut_a_longer_one(clock: FakeClock) -> None:
    throttle = Throttle([], clock=clock)
    throttle.pause(10.0)
    clock.advance(1.0)
    throttle.pause(1.0)
    assert throttle.wait_time() == 9.0
    throttle.pause(20.0)
    assert throttle.wait_time() == 20.0


async def test_pause_holds_every_acquire(clock: FakeClock, sleeps: list[float]) -> None:
    throttle = Throttle([RequestWindow(64, 8.0, margin=MARGIN, clock=clock)], clock=clock)
    throttle.pause(4.0)
    returned: list[float] = []

    async def caller() -> None:
        await throttle.acquire()
        returned.append(clock())

    await asyncio.gather(*(caller() for _ in range(5)))
    assert returned == [START + 4.0 + k * 0.125 for k in range(5)]
    assert sleeps == [4.0] + [0.125] * 4  # they waited out the one pause, not one each


async def test_pause_does_not_spend_the_quota(clock: FakeClock, sleeps: list[float]) -> None:
    window = RequestWindow(LIMIT, WINDOW, margin=MARGIN, clock=clock)
    throttle = Throttle([window], clock=clock)
    throttle.pause(1.0)
    for _ in range(LIMIT):
        await throttle.acquire()
    assert sleeps == [1.0] + [WINDOW / LIMIT] * (LIMIT - 1)  # the pause, then the pace only
    assert window.used() == LIMIT
    await throttle.acquire()  # the window counts from the first real send, not the pause
    assert clock() == START + 1.0 + WIDTH + SPAN


async def test_a_pause_during_a_wait_holds_the_waiting_acquire(
    clock: FakeClock, sleeps: list[float]
) -> None:
    throttle = Throttle([RequestWindow(1, WINDOW, margin=MARGIN, clock=clock)], clock=clock)
    await throttle.acquire()
    waiter = asyncio.create_task(throttle.acquire())
    await _real_sleep(0)  # it is now asleep until the window frees, at START + WIDTH + SPAN
    assert sleeps == [WIDTH + SPAN]
    throttle.pause(30.0)  # a 429 arrives meanwhile
    paused_until = clock() + 30.0
    await waiter
    assert clock() >= paused_until


async def test_acquire_is_first_come_first_served(clock: FakeClock, sleeps: list[float]) -> None:
    throttle = Throttle([RequestWindow(1, WINDOW, margin=MARGIN, clock=clock)], clock=clock)
    await throttle.acquire()  # the window is full now
    order: list[tuple[str, float]] = []

    async def caller(name: str) -> None:
        await throttle.acquire()
        order.append((name, clock()))

    first = asyncio.create_task(caller("first"))
    await _real_sleep(0)  # first is waiting for the window
    later = [asyncio.create_task(caller(name)) for name in ("second", "third")]
    await asyncio.gather(first, *later)
    assert [name for name, _ in order] == ["first", "second", "third"]
    times = [t for _, t in order]
    assert times == [START + k * (WIDTH + SPAN) for k in (1, 2, 3)]


async def test_acquire_on_a_real_clock_sends_at_the_paced_rate_not_in_a_burst() -> None:
    reads: list[float] = []

    def clock() -> float:  # the real clock; its last reading in acquire is the send time
        reads.append(time.monotonic())
        return reads[-1]

    window = RequestWindow(5, 0.2)  # room for all five, so only the pace makes them wait
    throttle = Throttle([window], clock=clock)
    spacing = throttle.spacing
    assert spacing == 0.2 / 5
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)
        await _real_sleep(seconds)

    sent: list[float] = []
    sleeps_per_send: list[int] = []
    fake_asyncio = types.SimpleNamespace(sleep=sleep, Lock=asyncio.Lock)
    started = time.monotonic()
    with mock.patch.object(ratelimit, "asyncio", fake_asyncio):
        for _ in range(5):
            before = len(asked)
            await throttle.acquire()
            sent.append(reads[-1])
            sleeps_per_send.append(len(asked) - before)
    elapsed = time.monotonic() - started
    assert sleeps_per_send[0] == 0  # the first goes at once
    assert all(n >= 1 for n in sleeps_per_send[1:])  # each later one waited for its turn
    assert all(0 < s <= spacing for s in asked)  # never longer than the pace
    assert all(b - a >= spacing - 1e-9 for a, b in pairwise(sent))  # not a burst
    assert 4 * spacing - 1e-9 <= sent[-1] - sent[0] <= elapsed < 2.0


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


def test_backoff_stays_at_the_cap_however_many_attempts() -> None:
    policy = RetryPolicy(base=0.2, cap=30.0, give_up_after=86_400.0, rng=random.Random(3))
    assert 15.0 <= policy.delay(2000) <= 30.0


@pytest.mark.parametrize(("retry_after", "expected"), [(7.0, 7.0), (0.5, 0.5), (0, 0.0)])
def test_retry_after_is_honoured(retry_after: float, expected: float) -> None:
    policy = RetryPolicy(base=0.2, cap=30.0, rng=random.Random(1))
    assert policy.delay(1, retry_after) == expected
    assert policy.delay(9, retry_after) == expected


@pytest.mark.parametrize(("retry_after", "expected"), [(3600.0, 30.0), (-5.0, 0.0)])
def test_retry_after_is_capped_and_never_negative(retry_after: float, expected: float) -> None:
    assert RetryPolicy(cap=30.0).delay(1, retry_after) == expected


def test_exhausted_by_elapsed_time_not_attempts() -> None:
    policy = RetryPolicy(give_up_after=600.0)
    assert not policy.exhausted(0.0)
    assert not policy.exhausted(599.9)
    assert policy.exhausted(600.0)
    assert policy.exhausted(3600.0)


def test_give_up_after_defaults_to_ten_minutes() -> None:
    policy = RetryPolicy()
    assert not policy.exhausted(599.0)
    assert policy.exhausted(600.0)


@given(
    give_up_after=st.floats(0.1, 1e5),
    elapsed=st.floats(0.0, 2e5),
)
def test_exhausted_exactly_once_the_budget_is_spent(give_up_after: float, elapsed: float) -> None:
    assert RetryPolicy(give_up_after=give_up_after).exhausted(elapsed) == (elapsed >= give_up_after)


@pytest.mark.parametrize(
    ("window", "margin"),
    [(1.0, 0.1), (10.0, 0.2), (60.0, 1.2), (86_400.0, 2.0)],  # Stripe, HubSpot, Zendesk, daily
)
def test_the_default_margin_grows_with_the_window_within_bounds(
    window: float, margin: float
) -> None:
    assert RequestWindow(100, window).window == pytest.approx(window + margin)
