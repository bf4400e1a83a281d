"""Zendesk Support users over HTTP: the one place where support commands become requests.

Upserts go through ``users/create_or_update_many`` (up to 100 users a request; Zendesk matches
each by ``external_id``, the canonical customer id, else by email) and archives through
``users/destroy_many`` (a soft delete). A user made in Zendesk by hand and adopted by identity
resolution has no ``external_id`` yet and may have another email, so ``create_or_update_many``
would make a second user: adopted users go through ``users/update_many`` by their Zendesk id
instead, which sets the ``external_id``. All of these answer a queued job status and do the
work in the background, so the client polls ``job_statuses/{id}`` with a doubling delay until
the job has completed, then reads one result per user. Polls count against the same per-minute
quota as every other request, hence the sparing delays.

The inbound side (adapters.inbound) reads through the same client: ``users/show_many`` for the
users webhook events name, the cursor-based incremental user export for polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from adapters.http import raise_for_status, send
from adapters.target import Archive, Outcome, Quota, Upsert, no_pacing
from crmsync.errors import PermanentError, TransientError

__all__ = ["BATCH_LIMIT", "EXPORT_REQUESTS_PER_MINUTE", "ZendeskClient"]

BATCH_LIMIT = 100  # Zendesk's maximum users per bulk request (create_or_update_many, ...)
WINDOW_SECONDS = 60.0  # Zendesk counts requests per minute
EXPORT_REQUESTS_PER_MINUTE = 10  # the incremental export endpoints' own limit
_USERS = "/api/v2/users"
_RUNNING = ("queued", "working")


def user_body(properties: Mapping[str, Any]) -> dict[str, Any]:
    """A Zendesk user from target property names; ``user_fields.<key>`` nests, None is null."""
    user: dict[str, Any] = {}
    for name, value in properties.items():
        head, dot, key = name.partition(".")
        if dot:
            user.setdefault(head, {})[key] = value
        else:
            user[name] = value
    user["skip_verify_email"] = True  # never mail the customer on our account's behalf
    return user


def _result_at(results: Sequence[Mapping[str, Any]], index: int) -> Mapping[str, Any] | None:
    """The job result for the `index`-th user: by its `index`, else by position (Zendesk keeps
    results in request order)."""
    for result in results:
        if result.get("index") == index:
            return result
    if index < len(results) and "index" not in results[index]:
        return results[index]
    return None


def _succeeded(result: Mapping[str, Any]) -> bool:
    return bool(result.get("success")) or result.get("status") in ("Created", "Updated", "Deleted")


def _error_text(result: Mapping[str, Any]) -> str:
    """A job's failed result as text, without the user's place in the job (`index`, and the
    `id` Zendesk sets to it on a failed create): the same refusal then reads the same in
    whichever batch it comes back, and makes one dead letter (crmsync.dead_letters)."""
    place = result.get("index")
    return orjson.dumps({
        name: value for name, value in result.items()
        if name != "index" and not (name == "id" and place is not None and value == place)
    }).decode()  # fmt: skip


class ZendeskClient:
    """TargetClient for Zendesk Support (adapters.target)."""

    vendor = "zendesk"
    max_batch = BATCH_LIMIT

    def __init__(
        self,
        base_url: str,
        email: str,
        token: str,
        timeout: float = 10.0,
        *,
        poll_interval: float = 0.25,
        poll_max_interval: float = 2.0,
        job_timeout: float = 120.0,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            auth=httpx.BasicAuth(f"{email}/token", token),
            headers={"Accept": "application/json"},
            timeout=timeout,
        )
        self._poll_interval = poll_interval
        self._poll_max_interval = poll_max_interval
        self._job_timeout = job_timeout
        self._quotas: list[Quota] = []
        self.pace = no_pacing

    def __repr__(self) -> str:  # never show the credentials
        return f"ZendeskClient({self._http.base_url})"

    async def upsert(self, items: list[Upsert]) -> list[Outcome]:
        adopted = [item for item in items if item.adopt]
        upserted = [item for item in items if not item.adopt]
        outcomes = await self._create_or_update(upserted) if upserted else []
        if adopted:
            if upserted:
                await self.pace()  # a second job in this call
            outcomes += await self._update_by_id(adopted)
        return outcomes

    async def _create_or_update(self, items: list[Upsert]) -> list[Outcome]:
        users = [user_body(item.properties) for item in items]
        job = await self._run_job("POST", f"{_USERS}/create_or_update_many.json", {"users": users})
        results = job.get("results") or []
        outcomes = []
        for index, item in enumerate(items):
            result = _result_at(results, index)
            if result is None:
                error = "the Zendesk job has no result for this user"
                outcomes.append(Outcome(item.customer_id, error=error))
            elif _succeeded(result):
                outcomes.append(Outcome(item.customer_id, external_id=str(result["id"])))
            else:
                outcomes.append(Outcome(item.customer_id, error=_error_text(result)))
        return outcomes

    async def _update_by_id(self, items: list[Upsert]) -> list[Outcome]:
        """Batch update (``users/update_many`` with a ``users`` array), each user by its
        Zendesk id: never creates; a user Zendesk no longer has is that item's refusal."""
        outcomes = [
            Outcome(item.customer_id, error=f"not a Zendesk user id: {item.external_id!r}")
            for item in items
            if not (item.external_id or "").isdigit()
        ]
        known = [item for item in items if (item.external_id or "").isdigit()]
        if not known:
            return outcomes
        users = [
            {"id": int(item.external_id or ""), **user_body(item.properties)} for item in known
        ]
        job = await self._run_job("PUT", f"{_USERS}/update_many.json", {"users": users})
        results = job.get("results") or []
        by_id = {str(result.get("id")): result for result in results}
        for index, item in enumerate(known):
            result = by_id.get(str(item.external_id)) or _result_at(results, index)
            if result is None:
                error = f"the Zendesk job has no result for user {item.external_id}"
                outcomes.append(Outcome(item.customer_id, error=error))
            elif _succeeded(result):
                outcomes.append(Outcome(item.customer_id, external_id=item.external_id))
            else:
                outcomes.append(Outcome(item.customer_id, error=_error_text(result)))
        return outcomes

    async def archive(self, items: list[Archive]) -> list[Outcome]:
        """Soft-delete the users; a user Zendesk no longer has (RecordNotFound) counts as done."""
        outcomes = [
            Outcome(item.customer_id, error=f"not a Zendesk user id: {item.external_id!r}")
            for item in items
            if not item.external_id.isdigit()
        ]
        ids = [item for item in items if item.external_id.isdigit()]
        if not ids:
            return outcomes
        path = f"{_USERS}/destroy_many.json?ids={','.join(item.external_id for item in ids)}"
        job = await self._run_job("DELETE", path)
        by_id = {str(result.get("id")): result for result in job.get("results") or []}
        for item in ids:
            result = by_id.get(item.external_id)
            if result is None:
                error = f"the Zendesk job has no result for user {item.external_id}"
                outcomes.append(Outcome(item.customer_id, error=error))
            elif _succeeded(result) or result.get("error") == "RecordNotFound":
                outcomes.append(Outcome(item.customer_id, external_id=item.external_id))
            else:
                outcomes.append(Outcome(item.customer_id, error=_error_text(result)))
        return outcomes

    async def show_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """The users with these ids (at most BATCH_LIMIT), deleted ones included (``active:
        false``), exactly as ``users/show_many`` returns them; unknown ids are left out."""
        if not ids:
            return []
        response = await self._request("GET", f"{_USERS}/show_many.json?ids={','.join(ids)}")
        users: list[dict[str, Any]] = response.json()["users"]
        return users

    async def export_users(
        self, *, start_time: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of the cursor-based incremental user export: from `start_time` (epoch
        seconds) on the first call, then from the previous page's ``after_cursor``. The
        answer holds ``users`` (deleted ones included), ``after_cursor`` and
        ``end_of_stream``. Zendesk allows EXPORT_REQUESTS_PER_MINUTE of these."""
        query = urlencode({"cursor": cursor} if cursor is not None else {"start_time": start_time})
        response = await self._request("GET", f"/api/v2/incremental/users/cursor.json?{query}")
        page: dict[str, Any] = response.json()
        return page

    def quotas(self) -> list[Quota]:
        return list(self._quotas)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run_job(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Start a background job and wait for it; a job that fails or outlives `job_timeout`
        is a TransientError (every job we start is safe to run again; its text leaves out the
        job's id, which each new run changes, so a failure that lasts reads the same)."""
        response = await self._request(method, path, body)
        job: dict[str, Any] = response.json()["job_status"]
        deadline = time.monotonic() + self._job_timeout
        delay = self._poll_interval
        while job["status"] in _RUNNING:
            if time.monotonic() + delay > deadline:
                raise TransientError(
                    f"Zendesk job still {job['status']} after {self._job_timeout:g} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._poll_max_interval)
            job = await self._poll(job["id"])
        if job["status"] != "completed":
            raise TransientError(f"Zendesk job {job['status']}: {job.get('message')}")
        return job

    async def _poll(self, job_id: str) -> dict[str, Any]:
        await self.pace()
        try:
            response = await self._request("GET", f"/api/v2/job_statuses/{job_id}.json")
        except PermanentError as error:
            if error.status != 404:
                raise
            # The job status expired or the account was reset: running the job again is safe.
            raise TransientError("Zendesk job vanished", 404) from error
        job: dict[str, Any] = response.json()["job_status"]
        return job

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        content = None if body is None else orjson.dumps(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        response = await send(self._http, method, path, content=content, headers=headers)
        self._observe_quota(response)
        raise_for_status(response)
        return response

    def _observe_quota(self, response: httpx.Response) -> None:
        headers = response.headers
        try:
            limit = int(headers["X-Rate-Limit"])
            remaining = int(headers["X-Rate-Limit-Remaining"])
        except (KeyError, ValueError):
            return
        reset = headers.get("ratelimit-reset")
        reset_after = float(reset) if reset is not None and reset.isdigit() else None
        self._quotas = [Quota(limit, remaining, WINDOW_SECONDS, reset_after)]
