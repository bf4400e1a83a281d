"""A token bucket per target: requests per window, so the steady state never draws a 429."""

from __future__ import annotations

import asyncio
import time

__all__ = ["TokenBucket"]


class TokenBucket:
    """`capacity` tokens refilled evenly over `window` seconds; `acquire` waits for one.

    A 429 empties the bucket and holds it for the server's `retry_after`, so back-pressure
    reaches every caller, not just the one that was refused.
    """

    def __init__(self, capacity: int, window: float) -> None:
        self.capacity = capacity
        self.rate = capacity / window
        self._tokens = float(capacity)
        self._now = time.monotonic
        self._updated = self._now()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._now()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        pause = max(0.0, self._paused_until - self._now())
        if self._tokens >= 1:
            return pause
        return max(pause, (1 - self._tokens) / self.rate)

    async def acquire(self) -> None:
        async with self._lock:
            while (delay := self.wait_time()) > 0:
                await asyncio.sleep(delay)
            self._tokens -= 1

    def pause(self, seconds: float) -> None:
        self._refill()
        self._tokens = 0.0
        self._paused_until = max(self._paused_until, self._now() + seconds)
