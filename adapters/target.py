"""The contract between the adapter runtime and one vendor's API client.

The runtime (adapters.worker) owns everything vendor-neutral: consuming commands, coalescing,
priority lanes, token buckets, retries, the circuit breaker, identity links and dead letters.
A client (adapters.hubspot, adapters.salesforce, adapters.stripe, adapters.zendesk) owns only
the vendor's HTTP: paths, bodies, value encoding, batch limits and how its errors and quota
headers read.

Errors a client raises for a whole request (crmsync.errors):
- `RateLimited(retry_after)` for a 429 (or Salesforce's REQUEST_LIMIT_EXCEEDED);
- `TransientError` for 5xx, timeouts, connection errors, and 4xx the vendor marks retryable
  (e.g. `Stripe-Should-Retry: true`);
- `PermanentError(status, body)` for anything else; the runtime splits the batch to find the
  record at fault, so one bad record never blocks the others.
A refusal of one record inside an otherwise successful batch is an `Outcome` with `error` set,
carrying the vendor's error body as text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Archive", "Outcome", "Quota", "TargetClient", "Upsert", "no_pacing"]


async def no_pacing() -> None:
    """The default `TargetClient.pace`: a client used on its own sends at once."""


@dataclass(frozen=True)
class Upsert:
    """Create or update the target's record for one customer.

    `properties` are the target's property names (dotted for nested fields, such as Stripe's
    `address.line1` or Zendesk's `user_fields.plan_tier`) with canonical values after enum
    maps; `None` means "clear it" and the client encodes that as its vendor expects. They hold
    only what changed (always including the id property) unless the target's state is unknown.
    `external_id` is the target's id for this customer when crmsync already knows it.
    `idempotency_key` is stable for this write across redeliveries.
    """

    customer_id: str
    properties: dict[str, Any]
    external_id: str | None
    idempotency_key: str
    #: The target's id of this customer's archived (deleted) record, when it had one: a
    #: restored customer gets a new record, and a create keyed by customer alone would replay
    #: the deleted one.
    archived_external_id: str | None = None
    #: The record at `external_id` was made in the target and linked to the customer by
    #: identity resolution; it does not carry our id property yet, so write to it by the
    #: target's own id (and set the id property there): a write keyed by the id property
    #: would create a second record.
    adopt: bool = False


@dataclass(frozen=True)
class Archive:
    customer_id: str
    external_id: str
    idempotency_key: str


@dataclass(frozen=True)
class Outcome:
    """One record's result: its id in the target, or the target's reason for refusing it."""

    customer_id: str
    external_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Quota:
    """A limit as the target's last response reported it."""

    limit: int
    remaining: int
    window: float  # seconds; 86,400 for daily allowances
    reset_after: float | None = None


class TargetClient(Protocol):
    vendor: str  # "hubspot", "salesforce", "stripe", "zendesk"
    max_batch: int  # the API's own limit on records per write request (1: no batch API)
    #: Awaited before every further request one call makes (a Zendesk job poll, a Stripe
    #: lookup): the runtime sets it to its throttle, so those count against the quota too.
    pace: Callable[[], Awaitable[None]]

    async def upsert(self, items: list[Upsert]) -> list[Outcome]:
        """Write every item in as few requests as the API allows (len(items) <= max_batch);
        one Outcome per item, in any order."""

    async def archive(self, items: list[Archive]) -> list[Outcome]:
        """Archive / delete the records (len(items) <= max_batch); already gone is success."""

    def quotas(self) -> list[Quota]:
        """The limits reported by the most recent response's headers (empty if none)."""

    async def aclose(self) -> None: ...
