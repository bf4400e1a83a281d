"""How long to wait before the next attempt: exponential backoff with full jitter, or the
server's own `Retry-After` when it sent one."""

from __future__ import annotations

import random

__all__ = ["RetryPolicy"]


class RetryPolicy:
    def __init__(
        self, base: float = 0.2, cap: float = 30.0, max_attempts: int = 12,
        rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.base = base
        self.cap = cap
        self.max_attempts = max_attempts
        self._rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before attempt `attempt + 1` (attempt counts from 1)."""
        if retry_after is not None:
            return min(self.cap, max(0.0, retry_after))
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
