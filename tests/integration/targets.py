"""Reading what each target holds, through its public API as any client would (the emulators
enforce their quotas on these reads too, so a 429 is waited out as its Retry-After says)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from crmsync.settings import Settings

SALESFORCE_FIELDS = (
    "Id, Email, FirstName, LastName, Phone, MailingCountry, Plan_Tier__c, crmsync_id__c"
)


def _get(client: httpx.Client, url: str, **params: Any) -> dict[str, Any]:
    """GET, waiting out 429s and retrying injected 5xx as any careful client would."""
    for _ in range(50):
        response = client.get(url, params=params or None)
        if response.status_code == 429:
            time.sleep(min(float(response.headers.get("Retry-After", "1")), 5.0))
        elif response.status_code >= 500:
            time.sleep(0.1)
        else:
            response.raise_for_status()
            return response.json()
    response.raise_for_status()
    raise AssertionError(f"GET {url} kept answering {response.status_code}")


@dataclass
class Target:
    """One target as the test sees it: `records()` by canonical customer id."""

    vendor: str
    url: str
    token: str
    email: str = "crmsync@example.com"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_emulator/stats", timeout=10).json()

    def inject(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/_emulator/faults", json=faults, timeout=10).raise_for_status()

    def client(self) -> httpx.Client:
        if self.vendor == "zendesk":
            auth = httpx.BasicAuth(f"{self.email}/token", self.token)
            return httpx.Client(base_url=self.url, auth=auth, timeout=30)
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def records(self) -> dict[str, dict[str, Any]]:
        with self.client() as client:
            return getattr(self, f"_{self.vendor}")(client)

    def _hubspot(self, client: httpx.Client) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {
            "limit": 100,
            "properties": "email,firstname,lastname,phone,city,country,crmsync_id,"
            "crmsync_plan_tier,crmsync_timezone",
        }
        while True:
            page = _get(client, "/crm/v3/objects/contacts", **params)
            for contact in page["results"]:
                found[contact["properties"]["crmsync_id"]] = contact
            after = page.get("paging", {}).get("next", {}).get("after")
            if after is None:
                return found
            params["after"] = after

    def _stripe(self, client: httpx.Client) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = _get(client, "/v1/customers", **params)
            for customer in page["data"]:
                found[customer["metadata"]["crmsync_id"]] = customer
            if not page["has_more"]:
                return found
            params["starting_after"] = page["data"][-1]["id"]

    def _zendesk(self, client: httpx.Client) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        params: dict[str, Any] = {"page[size]": 100}
        while True:
            page = _get(client, "/api/v2/users.json", **params)
            for user in page["users"]:
                if user.get("external_id"):
                    found[user["external_id"]] = user
            if not page["meta"]["has_more"]:
                return found
            params["page[after]"] = page["meta"]["after_cursor"]

    def _salesforce(self, client: httpx.Client) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        page = _get(
            client,
            "/services/data/v59.0/query",
            q=f"SELECT {SALESFORCE_FIELDS} FROM Contact",
        )
        while True:
            for contact in page["records"]:
                found[contact["crmsync_id__c"]] = contact
            if page["done"]:
                return found
            page = _get(client, page["nextRecordsUrl"])


def targets_of(settings: Settings) -> dict[str, Target]:
    return {
        "crm": Target(
            settings.crm_vendor, settings.target_url("crm"), settings.crm_token.get_secret_value()
        ),
        "billing": Target(
            "stripe", settings.target_url("billing"), settings.billing_token.get_secret_value()
        ),
        "support": Target(
            "zendesk",
            settings.target_url("support"),
            settings.support_token.get_secret_value(),
            settings.support_email,
        ),
    }
