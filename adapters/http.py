"""What every vendor client does the same way over HTTP: send a request with transport
failures made transient, read `Retry-After`, and map an error status onto crmsync.errors.
Vendor quirks (Stripe-Should-Retry, Salesforce's REQUEST_LIMIT_EXCEEDED, HubSpot's policy
names) stay in the vendor's client, in front of these."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from crmsync.errors import PermanentError, RateLimited, TransientError

__all__ = ["raise_for_status", "retry_after", "send"]


async def send(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; a timeout or a connection failure is a TransientError."""
    try:
        return await http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise TransientError(f"timeout: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"connection failed: {exc!r}") from exc


def retry_after(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds, if sent as a number."""
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_status(
    response: httpx.Response,
    wait: Callable[[httpx.Response], float | None] = retry_after,
    body: Callable[[httpx.Response], str] = lambda response: response.text,
) -> None:
    """429 → RateLimited (after `wait(response)` seconds), 5xx → TransientError, any other
    4xx → PermanentError with the vendor's body (as `body(response)` states it: a vendor
    leaves out what names the request rather than the failure); below 400, nothing."""
    status = response.status_code
    if status < 400:
        return
    if status == 429:
        raise RateLimited(wait(response), body(response))
    if status >= 500:
        raise TransientError(f"HTTP {status}: {body(response)[:200]}", status)
    raise PermanentError(status, body(response))
