"""Stripe customers over HTTP: the one place where billing commands become Stripe requests.

Stripe has no batch API, so every item is one request. A customer is found by the Stripe id
crmsync recorded for it; the canonical id also rides in ``metadata[crmsync_id]`` so a customer
whose link was lost can be found again by search. Creates carry an idempotency key derived
from the canonical id alone, so a create replayed after a crash (the request succeeded, the
link was never recorded) returns the same Stripe customer instead of making a second one.

Every write carries an idempotency key starting ``crmsync-``, and Stripe names that key on the
events the write causes (``request.idempotency_key``): that is how the inbound side
(adapters.inbound, which also polls ``GET /v1/events`` through this client) tells our own
writes coming back from edits made in Stripe (`caused_by_us`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from adapters.http import retry_after, send
from adapters.target import Archive, Outcome, Quota, Upsert, no_pacing
from crmsync.errors import PermanentError, RateLimited, TransientError

__all__ = ["EVENTS_PAGE_LIMIT", "StripeClient", "caused_by_us", "encode_properties"]

#: Pinned so a change of the account's default API version cannot change what we parse.
STRIPE_VERSION = "2026-10-28.endive"
ID_METADATA_KEY = "crmsync_id"
EVENTS_PAGE_LIMIT = 100  # Stripe's maximum `limit` on list endpoints
OWN_KEY_PREFIX = "crmsync-"  # of the Idempotency-Key on every write we make
_CUSTOMERS = "/v1/customers"
_EVENTS = "/v1/events"


def encode_properties(properties: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Dotted property names as Stripe's bracket form fields: ``address.city`` becomes
    ``address[city]``, ``metadata.plan.tier`` becomes ``metadata[plan.tier]`` (metadata keys
    may hold dots); None becomes "" (Stripe's "unset")."""
    fields = []
    for name, value in sorted(properties.items()):
        head, _, rest = name.partition(".")
        parts = [rest] if head == "metadata" else rest.split(".") if rest else []
        fields.append((head + "".join(f"[{part}]" for part in parts), _form_value(value)))
    return fields


def _form_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _search_literal(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _body_text(response: httpx.Response) -> str:
    """An error answer as text without its `request_log_url` (the link to this one request's
    log, timestamped): the same refusal then reads the same each time it comes back, and
    makes one dead letter (crmsync.dead_letters)."""
    error = _error_of(response)
    if "request_log_url" not in error:
        return response.text
    kept = {name: value for name, value in error.items() if name != "request_log_url"}
    return orjson.dumps({"error": kept}).decode()


class RecordRefused(Exception):
    """Stripe refused this record's values (a 400 naming a `param`): the item's Outcome."""

    def __init__(self, body: str) -> None:
        super().__init__(body)
        self.body = body


def raise_for_status(response: httpx.Response) -> None:
    """Translate a Stripe error response into the error tree (crmsync.errors).

    `Stripe-Should-Retry` overrides the status: Stripe sends ``true`` when a retry can succeed
    (lock timeouts, its own failures) and ``false`` when it cannot (a retry with the same
    idempotency key would replay the same answer).
    """
    status = response.status_code
    if status < 400:
        return
    if status == 429:
        raise RateLimited(retry_after(response), _body_text(response))
    advice = response.headers.get("Stripe-Should-Retry")
    if advice == "true" or (advice is None and (status >= 500 or status == 409)):
        raise TransientError(f"HTTP {status}: {_body_text(response)[:200]}", status)
    error = _error_of(response)
    if status == 400 and error.get("param") and error.get("type") == "invalid_request_error":
        raise RecordRefused(_body_text(response))
    raise PermanentError(status, _body_text(response))


class StripeClient:
    """`adapters.target.TargetClient` for Stripe customers."""

    vendor = "stripe"
    max_batch = 1

    def __init__(self, base_url: str, api_key: str, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "Stripe-Version": STRIPE_VERSION},
            timeout=timeout,
        )
        self.pace = no_pacing

    def __repr__(self) -> str:  # never show the key
        return f"StripeClient({self._http.base_url})"

    async def upsert(self, items: list[Upsert]) -> list[Outcome]:
        return [await self._upsert(item) for item in items]

    async def archive(self, items: list[Archive]) -> list[Outcome]:
        outcomes = []
        for item in items:
            response = await self._request("DELETE", f"{_CUSTOMERS}/{item.external_id}")
            if not _is_missing(response):  # already deleted (or never there): done
                raise_for_status(response)
            outcomes.append(Outcome(item.customer_id, item.external_id))
        return outcomes

    async def list_events(
        self,
        types: list[str],
        *,
        ending_before: str | None = None,
        starting_after: str | None = None,
        limit: int = EVENTS_PAGE_LIMIT,
    ) -> tuple[list[dict[str, Any]], bool]:
        """One page of ``GET /v1/events`` of these types, newest first as Stripe lists them,
        and whether more follow. `ending_before` pages towards newer events (the page holds
        the `limit` events just after that one), `starting_after` towards older ones. An
        event id Stripe no longer has (it keeps 30 days) is a 404 PermanentError."""
        params = [("types[]", kind) for kind in types] + [("limit", str(limit))]
        if ending_before is not None:
            params.append(("ending_before", ending_before))
        if starting_after is not None:
            params.append(("starting_after", starting_after))
        response = await self._request("GET", _EVENTS, params)
        try:
            raise_for_status(response)
        except RecordRefused as refused:  # a parameter refused: nothing per record here
            raise PermanentError(response.status_code, refused.body) from None
        page = response.json()
        return list(page["data"]), bool(page["has_more"])

    def quotas(self) -> list[Quota]:
        return []  # Stripe reports no quota headers

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _upsert(self, item: Upsert) -> Outcome:
        fields = encode_properties(item.properties)
        try:
            if item.external_id is None:
                return await self._create(item, fields, replacing=item.archived_external_id)
            path = f"{_CUSTOMERS}/{item.external_id}"
            response = await self._request("POST", path, fields, _update_key(item))
            if _is_missing(response):  # deleted in Stripe: give the customer a new one
                await self.pace()
                return await self._create(item, fields, replacing=item.external_id)
            raise_for_status(response)
            return Outcome(item.customer_id, response.json()["id"])
        except RecordRefused as refused:
            return Outcome(item.customer_id, item.external_id, error=refused.body)

    async def _create(
        self, item: Upsert, fields: list[tuple[str, str]], replacing: str | None = None
    ) -> Outcome:
        # Stable per customer (and per deleted predecessor), never per attempt: a create that
        # succeeded but whose link was lost replays into the same Stripe customer.
        key = f"{OWN_KEY_PREFIX}create-{item.customer_id}"
        if replacing is not None:
            key += f"-after-{replacing}"
        response = await self._request("POST", _CUSTOMERS, fields, key)
        if response.status_code == 400 and _error_of(response).get("type") == "idempotency_error":
            # The first attempt sent other values (changes were coalesced since): that
            # customer exists, so update it rather than create a second one.
            await self.pace()
            existing = await self._find(item.customer_id)
            path = f"{_CUSTOMERS}/{existing}"
            await self.pace()
            response = await self._request("POST", path, fields, _update_key(item))
        raise_for_status(response)
        return Outcome(item.customer_id, response.json()["id"])

    async def _find(self, customer_id: str) -> str:
        """The Stripe id of the live customer carrying `customer_id` in its metadata."""
        query = f"metadata[{_search_literal(ID_METADATA_KEY)}]:{_search_literal(customer_id)}"
        response = await self._request("GET", f"{_CUSTOMERS}/search", [("query", query)])
        raise_for_status(response)
        found = response.json()["data"]
        if not found:
            # Search trails writes (Stripe: "under a minute"); the customer exists, because
            # its idempotency key does. Retry later rather than create a duplicate.
            raise TransientError(f"customer {customer_id} is not searchable in Stripe yet")
        return str(found[-1]["id"])  # the oldest, should a duplicate ever exist

    async def _request(
        self,
        method: str,
        path: str,
        fields: list[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if method == "POST":
            return await send(self._http, "POST", path, data=dict(fields or []), headers=headers)
        return await send(self._http, method, path, params=fields, headers=headers)


def _update_key(item: Upsert) -> str:
    return f"{OWN_KEY_PREFIX}{item.idempotency_key}"


def caused_by_us(event: Mapping[str, Any]) -> bool:
    """Whether a Stripe event records one of our own writes (by its request's idempotency
    key) rather than an edit made in Stripe."""
    key = (event.get("request") or {}).get("idempotency_key") or ""
    return str(key).startswith(OWN_KEY_PREFIX)


def _is_missing(response: httpx.Response) -> bool:
    return response.status_code == 404 and _error_of(response).get("code") == "resource_missing"
