"""How long to wait before the next attempt: exponential backoff with full jitter, or the
server's own `Retry-After` when it sent one; and when to give up (by elapsed time, so a
target outage shorter than `give_up_after` delays writes and never loses them)."""

from __future__ import annotations

import random

__all__ = ["RetryPolicy"]


class RetryPolicy:
    def __init__(
        self, base: float = 0.2, cap: float = 30.0, give_up_after: float = 600.0,
        rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.base = base
        self.cap = cap
        self.give_up_after = give_up_after
        self._rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before attempt `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 64))  # no float overflow
        return self._rng.uniform(ceiling / 2, ceiling)

    def exhausted(self, elapsed: float) -> bool:
        return elapsed >= self.give_up_after
