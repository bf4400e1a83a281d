"""HubSpot CRM v3 contacts over HTTP: the one place where CRM commands become requests."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from crmsync.errors import PermanentError, RateLimited, TransientError

__all__ = ["HubSpotClient"]

BATCH_LIMIT = 100  # HubSpot's maximum inputs per batch request
_CONTACTS = "/crm/v3/objects/contacts"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_status(response: httpx.Response) -> None:
    """Translate an error response into the error tree (see crmsync.errors)."""
    status = response.status_code
    if status < 400:
        return
    if status == 429:
        raise RateLimited(_retry_after(response), response.text)
    if status >= 500:
        raise TransientError(f"HTTP {status}: {response.text[:200]}", status)
    raise PermanentError(status, response.text)


class HubSpotClient:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=timeout,
        )

    def __repr__(self) -> str:  # never show the token
        return f"HubSpotClient({self._http.base_url})"

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            response = await self._http.post(path, content=orjson.dumps(body))
        except httpx.TimeoutException as exc:
            raise TransientError(f"timeout: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"connection failed: {exc!r}") from exc
        raise_for_status(response)
        return response

    async def batch_upsert(
        self, id_property: str, inputs: list[dict[str, Any]]
    ) -> tuple[dict[str, str], list[str]]:
        """Upsert contacts by `id_property`; returns ({id value: HubSpot id}, failed id values)."""
        body = {
            "inputs": [
                {"idProperty": id_property, "id": props[id_property], "properties": props}
                for props in inputs
            ]
        }
        response = await self._post(f"{_CONTACTS}/batch/upsert", body)
        results = response.json().get("results", [])
        created = {r["properties"][id_property]: r["id"] for r in results}
        failed = [props[id_property] for props in inputs if props[id_property] not in created]
        return created, failed

    async def batch_archive(self, contact_ids: list[str]) -> None:
        await self._post(f"{_CONTACTS}/batch/archive", {"inputs": [{"id": i} for i in contact_ids]})

    async def aclose(self) -> None:
        await self._http.aclose()
