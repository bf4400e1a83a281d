"""HubSpot CRM v3 objects over HTTP: the one place where crmsync's writes become HubSpot
requests (adapters.target.TargetClient for contacts or companies).

Upserts go to ``batch/upsert`` keyed by crmsync's id property, each input tagged with an
``objectWriteTraceId`` so HubSpot answers per input (a 207 names the inputs it refused) instead
of failing the whole batch for one bad record. A contact made in HubSpot by hand and adopted by
identity resolution lacks that property, so it goes to ``batch/update`` by its HubSpot id
instead (setting the property there). Archives go to ``batch/archive``, which answers 204
whether or not the records still exist.

The inbound side (adapters.inbound) reads through the same client: ``batch/read`` for the
contacts webhook events name, ``search`` by modification time for polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson

from adapters import http
from adapters.target import Archive, Outcome, Quota, Upsert, no_pacing
from crmsync.errors import TransientError

__all__ = [
    "BATCH_LIMIT",
    "SEARCH_PAGE_LIMIT",
    "SEARCH_REQUESTS_PER_SECOND",
    "SEARCH_RESULT_CAP",
    "HubSpotClient",
    "encode_value",
    "raise_for_status",
]

BATCH_LIMIT = 100  # HubSpot's maximum inputs per batch request
SEARCH_PAGE_LIMIT = 200  # HubSpot's maximum results per search page
SEARCH_RESULT_CAP = 10_000  # a search query pages through at most this many results
SEARCH_REQUESTS_PER_SECOND = 5  # the search endpoints' own limit, per portal
DAY = 86_400.0


def encode_value(value: Any) -> str:
    """A property value as HubSpot takes it: text, with "" clearing the property."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()  # date properties take YYYY-MM-DD
    if isinstance(value, float | Decimal):
        return format(Decimal(repr(value)) if isinstance(value, float) else value, "f")
    if isinstance(value, list | tuple | set | frozenset):
        return ";".join(encode_value(item) for item in value)  # multiple checkboxes
    return str(value)


def _until_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (midnight - now).total_seconds()


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After if sent (HubSpot doesn't); else when the limit named in the body frees up:
    the secondly search limit in a second, the rolling window within its interval, the daily
    one at midnight (the portal's time zone is unknown here: UTC)."""
    header = http.retry_after(response)
    if header is not None:
        return header
    try:
        policy = orjson.loads(response.content).get("policyName")
    except (orjson.JSONDecodeError, AttributeError):
        policy = None
    if policy == "SECONDLY":
        return 1.0
    if policy == "DAILY":
        return _until_utc_midnight()
    interval = response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds")
    return int(interval) / 1000 if interval and interval.isdigit() else None


def _error(error: Mapping[str, Any]) -> dict[str, Any]:
    """A HubSpot error without what names the request rather than the failure: its
    `correlationId`, and the `objectWriteTraceId` in its context (the input's place in our
    batch, used to find the input). The same refusal then reads the same each time it comes
    back, and makes one dead letter (crmsync.dead_letters)."""
    kept = {name: value for name, value in error.items() if name != "correlationId"}
    context = kept.get("context")
    if isinstance(context, Mapping) and "objectWriteTraceId" in context:
        kept["context"] = {n: v for n, v in context.items() if n != "objectWriteTraceId"}
        if not kept["context"]:
            del kept["context"]
    return kept


def _error_text(error: Mapping[str, Any]) -> str:
    return orjson.dumps(_error(error)).decode()


def _body_text(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text
    return _error_text(body) if isinstance(body, dict) else response.text


def raise_for_status(response: httpx.Response) -> None:
    """The shared mapping (adapters.http), with HubSpot's way of saying when to retry."""
    http.raise_for_status(response, _retry_after, _body_text)


def _header_int(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    return int(value) if value is not None and value.isdigit() else None


def _quotas(headers: httpx.Headers) -> list[Quota]:
    quotas = []
    limit = _header_int(headers, "X-HubSpot-RateLimit-Max")
    remaining = _header_int(headers, "X-HubSpot-RateLimit-Remaining")
    interval = _header_int(headers, "X-HubSpot-RateLimit-Interval-Milliseconds")
    if limit is not None and remaining is not None and interval is not None:
        quotas.append(Quota(limit, remaining, interval / 1000))
    daily = _header_int(headers, "X-HubSpot-RateLimit-Daily")
    daily_remaining = _header_int(headers, "X-HubSpot-RateLimit-Daily-Remaining")
    if daily is not None and daily_remaining is not None:
        quotas.append(Quota(daily, daily_remaining, DAY))
    return quotas


class HubSpotClient:
    """One HubSpot object type (contacts by default) as a TargetClient.

    Records are matched by ``id_property``, a unique-value custom property holding crmsync's
    customer id, which every upsert's properties carry; adopted records (`Upsert.adopt`) by
    their HubSpot id.
    """

    vendor = "hubspot"
    max_batch = BATCH_LIMIT

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 10.0,
        object_type: str = "contacts",
        id_property: str = "crmsync_id",
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=timeout,
        )
        self._objects = f"/crm/v3/objects/{object_type}"
        self.id_property = id_property
        #: The property HubSpot sets on every change of this object type (searchable).
        contacts = object_type == "contacts"
        self.modified_property = "lastmodifieddate" if contacts else "hs_lastmodifieddate"
        self._quotas: list[Quota] = []
        self.pace = no_pacing  # one request per call: nothing further to pace

    def __repr__(self) -> str:  # never show the token
        return f"HubSpotClient({self._http.base_url}{self._objects})"

    async def upsert(self, items: list[Upsert]) -> list[Outcome]:
        keyed = [(n, item) for n, item in enumerate(items) if item.properties.get(self.id_property)]
        outcomes = [
            Outcome(item.customer_id, error=f"no {self.id_property} to upsert by")
            for item in items
            if not item.properties.get(self.id_property)
        ]
        adopted = [(n, item) for n, item in keyed if item.adopt]
        upserted = [(n, item) for n, item in keyed if not item.adopt]
        if upserted:
            outcomes += await self._upsert(upserted)
        if adopted:
            if upserted:
                await self.pace()  # a second request in this call
            outcomes += await self._update(adopted)
        return outcomes

    async def archive(self, items: list[Archive]) -> list[Outcome]:
        if items:
            inputs = [{"id": item.external_id} for item in items]
            await self._post(f"{self._objects}/batch/archive", {"inputs": inputs})
        return [Outcome(item.customer_id, external_id=item.external_id) for item in items]

    async def read(
        self, ids: list[str], properties: list[str], *, archived: bool = False
    ) -> list[dict[str, Any]]:
        """The objects with these ids (at most BATCH_LIMIT) exactly as ``batch/read`` returns
        them, with `properties`; ids HubSpot has not, live (or with `archived`, archived),
        are left out (HubSpot names them in a 207's errors)."""
        if not ids:
            return []
        path = f"{self._objects}/batch/read?archived={'true' if archived else 'false'}"
        body = {"inputs": [{"id": i} for i in ids], "properties": properties}
        answer = await self._post(path, body)
        return [r for r in answer.get("results", []) if isinstance(r, dict)]

    async def search_modified_since(
        self,
        since_ms: int,
        properties: list[str],
        *,
        after: str | None = None,
        limit: int = SEARCH_PAGE_LIMIT,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the live objects modified at or after `since_ms` (epoch ms), oldest
        change first, and the next page's ``after`` (None on the last page). A query pages
        through at most SEARCH_RESULT_CAP results: past that, search again from the last
        modification time seen."""
        body: dict[str, Any] = {
            "filterGroups": [{"filters": [
                {"propertyName": self.modified_property, "operator": "GTE",
                 "value": str(since_ms)},
            ]}],
            "sorts": [{"propertyName": self.modified_property, "direction": "ASCENDING"}],
            "properties": properties,
            "limit": limit,
        }  # fmt: skip
        if after is not None:
            body["after"] = after
        answer = await self._post(f"{self._objects}/search", body)
        results = [r for r in answer.get("results", []) if isinstance(r, dict)]
        next_after = answer.get("paging", {}).get("next", {}).get("after")
        return results, None if next_after is None else str(next_after)

    def quotas(self) -> list[Quota]:
        return list(self._quotas)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await http.send(self._http, "POST", path, content=orjson.dumps(body))
        self._quotas = _quotas(response.headers)
        raise_for_status(response)
        if not response.content:
            return {}
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise TransientError(f"unreadable HTTP {response.status_code} answer: {exc}") from exc
        return answer if isinstance(answer, dict) else {}

    async def _upsert(self, keyed: list[tuple[int, Upsert]]) -> list[Outcome]:
        """``batch/upsert`` by the id property: creates what HubSpot does not have yet."""
        key = self.id_property
        inputs = [
            {
                "idProperty": key,
                "id": encode_value(item.properties[key]),
                "properties": {k: encode_value(v) for k, v in item.properties.items()},
                "objectWriteTraceId": str(n),
            }
            for n, item in keyed
        ]
        body = await self._post(f"{self._objects}/batch/upsert", {"inputs": inputs})
        return _outcomes(
            keyed, body,
            input_key=lambda item: encode_value(item.properties[key]),
            result_key=lambda result: str(result.get("properties", {}).get(key)),
        )  # fmt: skip

    async def _update(self, keyed: list[tuple[int, Upsert]]) -> list[Outcome]:
        """``batch/update`` by HubSpot's own id: never creates (an id HubSpot does not have
        live is a refusal of that input)."""
        inputs = [
            {
                "id": item.external_id,
                "properties": {k: encode_value(v) for k, v in item.properties.items()},
                "objectWriteTraceId": str(n),
            }
            for n, item in keyed
        ]
        body = await self._post(f"{self._objects}/batch/update", {"inputs": inputs})
        return _outcomes(
            keyed, body,
            input_key=lambda item: str(item.external_id),
            result_key=lambda result: str(result.get("id")),
        )  # fmt: skip


def _outcomes(
    keyed: list[tuple[int, Upsert]],
    body: Mapping[str, Any],
    input_key: Callable[[Upsert], str],
    result_key: Callable[[Mapping[str, Any]], str],
) -> list[Outcome]:
    """Match a batch write's results and errors back to its inputs by trace id, or where
    HubSpot leaves it out by key: `input_key` of an input against `result_key` of a result, or
    against the ids an error names."""
    trace_of_key = {input_key(item): str(n) for n, item in keyed}
    external_ids: dict[str, str] = {}
    for result in body.get("results", []):
        trace = result.get("objectWriteTraceId") or trace_of_key.get(result_key(result))
        if trace is not None:
            external_ids[trace] = str(result["id"])
    errors = list(body.get("errors", []))
    refusals = dict(_refusals(errors, trace_of_key))
    unexplained = (
        orjson.dumps([_error(e) for e in errors]).decode()
        if errors
        else "HubSpot returned no result"
    )
    return [
        Outcome(item.customer_id, external_id=external_ids[str(n)])
        if str(n) in external_ids
        else Outcome(item.customer_id, error=refusals.get(str(n), unexplained))
        for n, item in keyed
    ]


def _refusals(
    errors: Iterable[Mapping[str, Any]], trace_of_key: Mapping[str, str]
) -> Iterable[tuple[str, str]]:
    """Each refused input's trace id with HubSpot's error entry for it, as text: an entry names
    inputs by trace id, or (objects ``batch/update`` could not find) by their ids."""
    for error in errors:
        text = _error_text(error)
        context = error.get("context", {})
        for trace in context.get("objectWriteTraceId", []):
            yield str(trace), text
        for key in context.get("ids", []):
            if str(key) in trace_of_key:
                yield trace_of_key[str(key)], text
