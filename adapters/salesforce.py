"""Salesforce REST (sObject Collections) over HTTP: the one place where CRM commands become
Salesforce requests.

Upserts go to ``PATCH /composite/sobjects/{sObject}/{external id field}`` and archives to
``DELETE /composite/sobjects?ids=...``, both with ``allOrNone=false`` so one refused record
never blocks the other 199. A record made in Salesforce by hand and adopted by identity
resolution has no external id yet, so an upsert by it would create a second one: adopted
records are updated by their record Id instead (``PATCH /composite/sobjects``, also up to 200),
which sets the external id field. Property names are Salesforce field names (``Email``,
``FirstName``, ``MailingCity``, custom ``*__c``); the id property is the external id field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from adapters.http import retry_after, send
from adapters.target import Archive, Outcome, Quota, Upsert, no_pacing
from crmsync.errors import PermanentError, RateLimited, TransientError

__all__ = ["SalesforceClient", "raise_for_status"]

BATCH_LIMIT = 200  # sObject Collections' maximum records per request
DAY = 86_400.0
#: How long to back off when the org's rolling 24-hour allocation is spent. Salesforce says
#: nothing about when calls free up (they age out of the window one by one), so probe again
#: every few minutes: refused calls are not counted, so probing costs nothing.
DAILY_LIMIT_RETRY_AFTER = 300.0
#: A record Salesforce no longer has: already deleted (in the recycle bin), or no such id.
GONE = frozenset({"ENTITY_IS_DELETED", "NOT_FOUND", "INVALID_CROSS_REFERENCE_KEY"})

_API_USAGE = re.compile(r"(?<![\w-])api-usage=(\d+)/(\d+)")


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    """Salesforce's error list (``[{"message", "errorCode", ...}]``), or [] for other bodies."""
    try:
        body = response.json()
    except ValueError:
        return []
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


def raise_for_status(response: httpx.Response) -> None:
    """Translate an error response into the error tree (see crmsync.errors)."""
    status = response.status_code
    if status < 400:
        return
    errors = _errors(response)
    if any(e.get("errorCode") == "REQUEST_LIMIT_EXCEEDED" for e in errors):
        daily = any("TotalRequests" in str(e.get("message", "")) for e in errors)
        # The other REQUEST_LIMIT_EXCEEDED is the concurrent long-running request limit,
        # which frees within seconds: the caller's own backoff fits it.
        raise RateLimited(DAILY_LIMIT_RETRY_AFTER if daily else None, response.text)
    if status == 429:  # not sent by Salesforce's API, but by proxies in front of it
        raise RateLimited(retry_after(response), response.text)
    if status >= 500:
        raise TransientError(f"HTTP {status}: {response.text[:200]}", status)
    raise PermanentError(status, response.text)


def parse_limit_info(header: str) -> list[Quota]:
    """``Sforce-Limit-Info: api-usage=18/15000; per-app-api-usage=17/250(appName=x)``.

    Only the org's daily allocation is reported: a connected app's own cap (per-app) is a
    different, smaller budget over the same 24 h, and correcting the org's window from it
    would stop sending for a day."""
    match = _API_USAGE.search(header)
    if match is None:
        return []
    used, limit = int(match[1]), int(match[2])
    return [Quota(limit=limit, remaining=max(0, limit - used), window=DAY)]


class SalesforceClient:
    """A TargetClient for one sObject of one org, by its unique external id field."""

    vendor = "salesforce"
    max_batch = BATCH_LIMIT

    def __init__(
        self,
        instance_url: str,
        access_token: str,
        timeout: float = 10.0,
        api_version: str = "v59.0",
        sobject: str = "Contact",
        external_id_field: str = "crmsync_id__c",
    ) -> None:
        version = api_version if api_version.startswith("v") else f"v{api_version}"
        self._base = f"/services/data/{version}"
        self._sobject = sobject
        self._external_id_field = external_id_field
        self._quotas: list[Quota] = []
        self.pace = no_pacing  # one request per call: nothing further to pace
        self._http = httpx.AsyncClient(
            base_url=instance_url,
            headers={
                "Authorization": f"Bearer {access_token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=timeout,
        )

    def __repr__(self) -> str:  # never show the session id
        return f"SalesforceClient({self._http.base_url}, {self._sobject})"

    async def upsert(self, items: list[Upsert]) -> list[Outcome]:
        self._check_batch(items)
        adopted = [item for item in items if item.adopt]
        upserted = [item for item in items if not item.adopt]
        outcomes = []
        if upserted:
            by_key = f"{self._base}/composite/sobjects/{self._sobject}/{self._external_id_field}"
            outcomes += await self._save(by_key, upserted, [item.properties for item in upserted])
        if adopted:
            if upserted:
                await self.pace()  # a second request in this call
            by_id = [{"id": item.external_id, **item.properties} for item in adopted]
            outcomes += await self._save(f"{self._base}/composite/sobjects", adopted, by_id)
        return outcomes

    async def _save(
        self, path: str, items: list[Upsert], fields: list[dict[str, Any]]
    ) -> list[Outcome]:
        """PATCH one record of `fields` per item to an sObject Collections resource, each
        record standing or failing alone; one Outcome per item."""
        records = [{"attributes": {"type": self._sobject}, **values} for values in fields]
        response = await self._send(
            "PATCH",
            path,
            content=orjson.dumps({"allOrNone": False, "records": records}, default=str),
        )
        outcomes = []
        for item, result in zip(items, self._results(response, items), strict=True):
            if result.get("success"):
                outcomes.append(Outcome(item.customer_id, external_id=result["id"]))
            else:
                error = orjson.dumps(result.get("errors", [])).decode()
                outcomes.append(Outcome(item.customer_id, error=error))
        return outcomes

    async def archive(self, items: list[Archive]) -> list[Outcome]:
        self._check_batch(items)
        if not items:
            return []
        params = {"ids": ",".join(item.external_id for item in items), "allOrNone": "false"}
        response = await self._send("DELETE", f"{self._base}/composite/sobjects", params=params)
        outcomes = []
        for item, result in zip(items, self._results(response, items), strict=True):
            errors = result.get("errors") or []
            if result.get("success") or all(e.get("statusCode") in GONE for e in errors):
                outcomes.append(Outcome(item.customer_id, external_id=item.external_id))
            else:
                outcomes.append(Outcome(item.customer_id, error=orjson.dumps(errors).decode()))
        return outcomes

    def quotas(self) -> list[Quota]:
        return list(self._quotas)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _check_batch(self, items: Sequence[object]) -> None:
        if len(items) > self.max_batch:
            raise ValueError(f"{len(items)} records: Salesforce takes at most {self.max_batch}")

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await send(self._http, method, path, **kwargs)
        limit_info = response.headers.get("Sforce-Limit-Info")
        if limit_info is not None:
            self._quotas = parse_limit_info(limit_info)
        raise_for_status(response)
        return response

    def _results(self, response: httpx.Response, items: Sequence[object]) -> list[dict[str, Any]]:
        """The per-record results, which Salesforce returns in the order of the request."""
        try:
            results = response.json()
        except ValueError:
            results = None
        if not isinstance(results, list) or len(results) != len(items):
            raise PermanentError(response.status_code, f"unexpected results: {response.text}")
        return [r if isinstance(r, dict) else {} for r in results]
