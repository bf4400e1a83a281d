"""A circuit breaker per target: after repeated failures, stop sending and probe instead.

Closed: requests flow. After `threshold` consecutive transient failures it opens: nothing is
sent for `cooldown` seconds. Then one probe request goes out (half-open): success closes the
breaker, failure re-opens it with the cooldown doubled (up to `max_cooldown`). Callers wait
while it is open rather than fail, so a target outage delays its commands, never drops them;
other targets have their own breakers and are not held up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._clock = clock
        self.state: State = "closed"
        self.failures = 0
        self.opened = 0  # times it opened, for metrics
        self._cooldown = cooldown
        self._reopen_at = 0.0
        self._probing = False
        self._probe_started = 0.0

    async def permit(self) -> None:
        """Wait until a request may be sent."""
        while True:
            if self.state == "closed":
                return
            now = self._clock()
            if self.state == "open":
                if now < self._reopen_at:
                    await asyncio.sleep(self._reopen_at - now)
                    continue
                self.state = "half_open"
            # A probe that never reported back (its caller was cancelled) is replaced.
            if not self._probing or now - self._probe_started > 2 * self.max_cooldown:
                self._probing = True
                self._probe_started = now
                return  # this caller is the probe
            await asyncio.sleep(min(0.05, self._cooldown))

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self._probing = False
        self._cooldown = self.base_cooldown

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open":
            self._probing = False
            self._cooldown = min(self.max_cooldown, self._cooldown * 2)
            self._open()
        elif self.state == "closed" and self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.state = "open"
        self.opened += 1
        self._reopen_at = self._clock() + self._cooldown
