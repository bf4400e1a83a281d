"""Errors an operator or a caller can act on.

CrmsyncError
├── PrerequisiteMissing      a binary the embedded stack needs is not installed
├── ConfigError              a config file is invalid (unknown keys, bad values)
├── ValidationFailed         an incoming record cannot be normalised (-> dead letter)
└── TargetError              an external API call failed
    ├── RateLimited          429: back off for `retry_after` seconds and try again
    ├── TransientError       5xx, timeouts, connection errors: retry with backoff
    ├── PermanentError       4xx other than 429: never retried (-> dead letter)
    └── RetriesExhausted     still failing after the retry budget (-> dead letter)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CrmsyncError",
    "PermanentError",
    "PrerequisiteMissing",
    "RateLimited",
    "RetriesExhausted",
    "TargetError",
    "TransientError",
    "ValidationFailed",
]


class CrmsyncError(Exception):
    """Base of every error crmsync raises on purpose."""


class PrerequisiteMissing(CrmsyncError):
    """Raised when Java or the PostgreSQL server binaries are missing; the message names the
    package to install."""


class ConfigError(CrmsyncError):
    """Raised at start-up when a config file is invalid; the process refuses to start."""


class ValidationFailed(CrmsyncError):
    """Raised when a change cannot be parsed or normalised; it goes to the dead letters."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class TargetError(CrmsyncError):
    """Raised when an external API call fails."""


class RateLimited(TargetError):
    """Raised on a 429: the target asked us to slow down; `retry_after` is in seconds."""

    def __init__(self, retry_after: float | None, body: str = "") -> None:
        super().__init__(f"rate limited (retry after {retry_after}s): {body[:200]}")
        self.retry_after = retry_after
        self.body = body


class TransientError(TargetError):
    """Raised on 5xx, timeouts and connection errors: safe to retry with backoff."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class PermanentError(TargetError):
    """Raised on a 4xx the target will answer the same way every time: dead-letter it."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class RetriesExhausted(TargetError):
    """Raised when a call kept failing transiently for the whole retry budget; the commands
    go to the dead letters (`crmsync dlq replay` sends them again once the target is back)."""

    def __init__(self, attempts: int, last: TargetError) -> None:
        super().__init__(f"gave up after {attempts} attempts: {last}")
        self.attempts = attempts
        self.last = last
