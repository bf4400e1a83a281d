"""The HubSpot emulator, driven through HubSpot's official Python SDK.

Every test starts a real emulator on a free loopback port and talks to the API only through
``hubspot-api-client`` (the emulator's private ``/_emulator`` controls excepted), so what passes
here is what crmsync's HubSpot adapter sees.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hubspot import HubSpot
from hubspot.crm.contacts import (
    ApiException,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    SimplePublicObject,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)

from emulators.hubspot import HubSpotEmulatorConfig, create_app

TOKEN = "pat-na1-test-token"
REPO_ROOT = Path(__file__).resolve().parents[2]
HUBSPOT_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
DEFAULT_PROPERTIES = {
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
}
RATE_LIMIT_HEADERS = {
    "X-HubSpot-RateLimit-Daily",
    "X-HubSpot-RateLimit-Daily-Remaining",
    "X-HubSpot-RateLimit-Interval-Milliseconds",
    "X-HubSpot-RateLimit-Max",
    "X-HubSpot-RateLimit-Remaining",
}


# --------------------------------------------------------------------------------------------
# Running emulators
# --------------------------------------------------------------------------------------------


class _ServerThread:
    """``create_app(config)`` served on a free loopback port by an event loop in its own thread."""

    def __init__(self, config: HubSpotEmulatorConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        self._runner = web.AppRunner(create_app(config), access_log=None)
        self._wait(self._runner.setup())
        self._wait(web.SockSite(self._runner, listener).start())

    def stop(self) -> None:
        self._wait(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _wait(self, work: Any) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)


@dataclass(frozen=True)
class Emulator:
    base_url: str

    def sdk(self, token: str = TOKEN) -> HubSpot:
        return HubSpot(access_token=token, host=self.base_url)

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.base_url}/_emulator/{path}", **kwargs)
        response.raise_for_status()
        return response

    def stats(self) -> dict[str, int]:
        return self.control("GET", "stats").json()


def _wait_until_answering(base_url: str, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/_emulator/stats", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process is not None and process.poll() is not None:
            pytest.fail(f"emulator exited early:\n{process.communicate()[0]}")
        time.sleep(0.05)
    pytest.fail(f"emulator at {base_url} did not answer within 15 s")


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., Emulator]]:
    servers: list[_ServerThread] = []

    def start(**settings: Any) -> Emulator:
        server = _ServerThread(HubSpotEmulatorConfig(**settings))
        servers.append(server)
        _wait_until_answering(server.base_url)
        return Emulator(server.base_url)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def emulator(start_emulator: Callable[..., Emulator]) -> Emulator:
    return start_emulator()


@pytest.fixture
def contacts(emulator: Emulator) -> Any:
    return emulator.sdk().crm.contacts


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def create(contacts: Any, **properties: str) -> SimplePublicObject:
    return contacts.basic_api.create(SimplePublicObjectInputForCreate(properties=properties))


def upsert(contacts: Any, id_property: str, rows: dict[str, dict[str, str]]) -> list[Any]:
    inputs = [
        SimplePublicObjectBatchInputUpsert(id=key, id_property=id_property, properties=properties)
        for key, properties in rows.items()
    ]
    response = contacts.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs))
    return response.results


def create_batch(contacts: Any, count: int, start: int = 0) -> list[SimplePublicObject]:
    inputs = [
        SimplePublicObjectBatchInputForCreate(properties={"email": f"user{n}@example.com"})
        for n in range(start, start + count)
    ]
    response = contacts.batch_api.create(BatchInputSimplePublicObjectBatchInputForCreate(inputs))
    return response.results


def rejection(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def body_of(error: ApiException) -> dict[str, Any]:
    return json.loads(error.body)


# --------------------------------------------------------------------------------------------
# Single-object endpoints
# --------------------------------------------------------------------------------------------


def test_created_contact_reads_back_by_id_email_and_custom_unique_property(
    emulator: Emulator, contacts: Any
) -> None:
    created = create(contacts, email="ada@example.com", firstname="Ada", crmsync_id="c-1")

    assert created.id.isdigit()
    assert created.archived is False
    assert created.properties["hs_object_id"] == created.id
    assert created.properties["firstname"] == "Ada"
    assert created.properties["crmsync_id"] == "c-1"
    by_id = contacts.basic_api.get_by_id(created.id)
    assert set(by_id.properties) == DEFAULT_PROPERTIES
    assert by_id.properties["lastname"] is None
    assert by_id.properties["email"] == "ada@example.com"
    assert contacts.basic_api.get_by_id("ada@example.com", id_property="email").id == created.id
    by_key = contacts.basic_api.get_by_id("c-1", id_property="crmsync_id", properties=["phone"])
    assert by_key.id == created.id
    assert by_key.properties == {
        "createdate": created.properties["createdate"],
        "hs_object_id": created.id,
        "lastmodifieddate": created.properties["lastmodifieddate"],
        "phone": None,
    }

    raw = httpx.get(
        f"{emulator.base_url}/crm/v3/objects/contacts/{created.id}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    for stamp in (raw["createdAt"], raw["updatedAt"], raw["properties"]["createdate"]):
        assert HUBSPOT_TIMESTAMP.fullmatch(stamp), stamp


def test_update_changes_only_the_properties_sent(contacts: Any) -> None:
    created = create(contacts, email="ada@example.com", firstname="Ada", lastname="Byron")

    updated = contacts.basic_api.update(
        "ada@example.com",
        SimplePublicObjectInput(properties={"lastname": "Lovelace", "firstname": ""}),
        id_property="email",
    )

    assert updated.id == created.id
    fetched = contacts.basic_api.get_by_id(created.id)
    assert fetched.properties["lastname"] == "Lovelace"
    assert fetched.properties["firstname"] is None  # an empty string clears a property
    assert fetched.properties["email"] == "ada@example.com"
    assert fetched.updated_at >= created.updated_at
    assert fetched.created_at == created.created_at


def test_archived_contact_is_404_and_left_out_of_lists(emulator: Emulator, contacts: Any) -> None:
    gone = create(contacts, email="gone@example.com")
    kept = create(contacts, email="kept@example.com")

    assert contacts.basic_api.archive(gone.id) is None

    missing = rejection(lambda: contacts.basic_api.get_by_id(gone.id))
    assert missing.status == 404
    assert body_of(missing)["category"] == "OBJECT_NOT_FOUND"
    assert contacts.basic_api.get_by_id(gone.id, archived=True).archived is True
    assert [c.id for c in contacts.basic_api.get_page().results] == [kept.id]
    assert [c.id for c in contacts.basic_api.get_page(archived=True).results] == [gone.id]
    assert emulator.stats()["contacts"] == 1
    assert emulator.stats()["archived"] == 1


def test_unknown_non_numeric_id_gets_hubspots_not_found_body(contacts: Any) -> None:
    error = rejection(lambda: contacts.basic_api.get_by_id("ada@example.com"))

    assert error.status == 404
    assert body_of(error) == {
        "status": "error",
        "message": "Object not found.  objectId are usually numeric.",
        "correlationId": dict(error.headers)["X-HubSpot-Correlation-Id"],
        "context": {"id": ["ada@example.com"]},
        "category": "OBJECT_NOT_FOUND",
    }


def test_duplicate_email_is_a_409_conflict_naming_the_existing_contact(
    emulator: Emulator, contacts: Any
) -> None:
    existing = create(contacts, email="ada@example.com")

    error = rejection(lambda: create(contacts, email="ADA@example.com"))

    assert error.status == 409
    assert body_of(error) == {
        "status": "error",
        "message": f"Contact already exists. Existing ID: {existing.id}",
        "correlationId": dict(error.headers)["X-HubSpot-Correlation-Id"],
        "category": "CONFLICT",
    }
    assert emulator.stats()["contacts"] == 1


def test_unique_values_cannot_be_taken_from_another_contact(contacts: Any) -> None:
    ada = create(contacts, email="ada@example.com", crmsync_id="c-ada")
    grace = create(contacts, email="grace@example.com", crmsync_id="c-grace")

    def set_on_grace(**properties: str) -> Any:
        return contacts.basic_api.update(grace.id, SimplePublicObjectInput(properties=properties))

    email_clash = rejection(lambda: set_on_grace(email="ada@example.com"))
    key_clash = rejection(lambda: set_on_grace(crmsync_id="c-ada"))

    assert email_clash.status == 409
    assert body_of(email_clash)["message"] == f"Contact already exists. Existing ID: {ada.id}"
    assert key_clash.status == 400
    assert body_of(key_clash)["category"] == "VALIDATION_ERROR"
    assert "crmsync_id" in body_of(key_clash)["message"]
    unchanged = contacts.basic_api.get_by_id(grace.id, properties=["email", "crmsync_id"])
    assert unchanged.properties["email"] == "grace@example.com"
    assert unchanged.properties["crmsync_id"] == "c-grace"


# --------------------------------------------------------------------------------------------
# Listing and batches
# --------------------------------------------------------------------------------------------


def test_list_pages_through_every_contact_with_after(contacts: Any) -> None:
    created = create_batch(contacts, 100) + create_batch(contacts, 50, start=100)

    seen: list[str] = []
    pages = 0
    after = None
    while True:
        page = contacts.basic_api.get_page(limit=100, after=after)
        pages += 1
        seen += [contact.id for contact in page.results]
        if page.paging is None:
            break
        after = page.paging.next.after
        assert f"after={after}" in page.paging.next.link

    assert pages == 2
    assert seen == sorted((contact.id for contact in created), key=int)


def test_batch_upsert_flags_new_contacts_and_replays_create_nothing(
    emulator: Emulator, contacts: Any
) -> None:
    ada = create(contacts, email="ada@example.com", firstname="Ada")
    rows = {
        "ada@example.com": {"lastname": "Lovelace"},
        "grace@example.com": {"lastname": "Hopper"},
    }

    first = {result.properties["email"]: result for result in upsert(contacts, "email", rows)}
    replays = [upsert(contacts, "email", rows) for _ in range(2)]

    assert first["ada@example.com"].new is False
    assert first["ada@example.com"].id == ada.id
    assert first["ada@example.com"].properties["lastname"] == "Lovelace"
    assert first["grace@example.com"].new is True
    for replay in replays:
        assert {(result.id, result.new) for result in replay} == {
            (first["ada@example.com"].id, False),
            (first["grace@example.com"].id, False),
        }
    stats = emulator.stats()
    assert (stats["contacts"], stats["creates"], stats["updates"]) == (2, 2, 1)


def test_upsert_by_custom_unique_property_keeps_one_contact_per_key(
    emulator: Emulator, contacts: Any
) -> None:
    created = upsert(contacts, "crmsync_id", {"c-42": {"email": "c42@example.com"}})
    replayed = upsert(contacts, "crmsync_id", {"c-42": {"firstname": "Forty-two"}})

    assert [result.new for result in created + replayed] == [True, False]
    assert replayed[0].id == created[0].id
    assert replayed[0].properties["crmsync_id"] == "c-42"
    assert emulator.stats()["contacts"] == 1


def test_batch_read_names_the_ids_it_could_not_find(contacts: Any) -> None:
    ada = create(contacts, email="ada@example.com")
    request = BatchReadInputSimplePublicObjectId(
        inputs=[SimplePublicObjectId(id="ada@example.com"), SimplePublicObjectId(id="no@one.io")],
        id_property="email",
        properties=["email"],
        properties_with_history=[],
    )

    response, status, _ = contacts.batch_api.read_with_http_info(request)

    assert status == 207
    assert [result.id for result in response.results] == [ada.id]
    assert response.errors[0].category == "OBJECT_NOT_FOUND"
    assert response.errors[0].context == {"ids": ["no@one.io"]}


def test_batch_archive_archives_every_listed_contact(emulator: Emulator, contacts: Any) -> None:
    created = create_batch(contacts, 3)

    inputs = [SimplePublicObjectId(id=contact.id) for contact in created[:2]]
    contacts.batch_api.archive(BatchInputSimplePublicObjectId(inputs=inputs))

    assert [contact.id for contact in contacts.basic_api.get_page().results] == [created[2].id]
    assert emulator.stats()["archives"] == 2


@pytest.mark.parametrize("operation", ["create", "upsert"])
def test_batch_over_100_inputs_is_rejected_whole(
    emulator: Emulator, contacts: Any, operation: str
) -> None:
    rows = {f"user{n}@example.com": {"firstname": "X"} for n in range(101)}
    calls = {
        "create": lambda: create_batch(contacts, 101),
        "upsert": lambda: upsert(contacts, "email", rows),
    }

    error = rejection(calls[operation])

    assert error.status == 400
    body = body_of(error)
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith("The maximum number of inputs supported in a batch is 100.")
    assert emulator.stats()["contacts"] == 0


def test_batch_create_with_a_conflict_writes_nothing(emulator: Emulator, contacts: Any) -> None:
    create(contacts, email="user1@example.com")

    error = rejection(lambda: create_batch(contacts, 3))

    assert error.status == 409
    assert emulator.stats()["contacts"] == 1


# --------------------------------------------------------------------------------------------
# Authentication and rate limits
# --------------------------------------------------------------------------------------------


def test_only_the_configured_token_is_accepted(start_emulator: Callable[..., Emulator]) -> None:
    emulator = start_emulator(required_token="the-right-token")

    error = rejection(lambda: emulator.sdk("a-wrong-token").crm.contacts.basic_api.get_page())

    assert error.status == 401
    body = body_of(error)
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["message"].startswith("Authentication credentials not found.")
    assert emulator.sdk("the-right-token").crm.contacts.basic_api.get_page().results == []


def test_sixth_request_in_the_window_gets_hubspots_429(
    start_emulator: Callable[..., Emulator],
) -> None:
    emulator = start_emulator(rate_limit_max=5, rate_limit_interval_ms=60_000)
    api = emulator.sdk().crm.contacts.basic_api

    remaining = [api.get_page_with_http_info()[2]["X-HubSpot-RateLimit-Remaining"] for _ in "12345"]
    error = rejection(api.get_page)

    assert remaining == ["4", "3", "2", "1", "0"]
    assert error.status == 429
    headers = dict(error.headers)
    body = body_of(error)
    assert body == {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": headers["X-HubSpot-Correlation-Id"],
        "policyName": "TEN_SECONDLY_ROLLING",
        "groupName": body["groupName"],
    }
    assert body["groupName"].startswith("publicapi:")
    assert set(headers) >= RATE_LIMIT_HEADERS
    assert headers["X-HubSpot-RateLimit-Max"] == "5"
    assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "60000"
    assert "Retry-After" not in headers
    assert emulator.stats()["rate_limited"] == 1
    # The window belongs to the token: another app's token is not limited.
    assert emulator.sdk("another-token").crm.contacts.basic_api.get_page().results == []


def test_requests_are_admitted_again_once_the_window_rolls_on(
    start_emulator: Callable[..., Emulator],
) -> None:
    emulator = start_emulator(rate_limit_max=2, rate_limit_interval_ms=300)
    api = emulator.sdk().crm.contacts.basic_api
    api.get_page()
    api.get_page()
    assert rejection(api.get_page).status == 429

    deadline = time.monotonic() + 10
    while True:
        try:
            _, _, headers = api.get_page_with_http_info()
            break
        except ApiException as error:
            assert error.status == 429 and time.monotonic() < deadline
            time.sleep(0.05)

    assert headers["X-HubSpot-RateLimit-Remaining"] == "1"


def test_daily_limit_gets_hubspots_daily_429(start_emulator: Callable[..., Emulator]) -> None:
    emulator = start_emulator(daily_limit=3)
    api = emulator.sdk().crm.contacts.basic_api
    for _ in range(3):
        api.get_page()

    error = rejection(api.get_page)

    assert error.status == 429
    assert body_of(error)["policyName"] == "DAILY"
    assert body_of(error)["message"] == "You have reached your daily limit."
    assert dict(error.headers)["X-HubSpot-RateLimit-Daily-Remaining"] == "0"


# --------------------------------------------------------------------------------------------
# Emulator controls
# --------------------------------------------------------------------------------------------


def test_injected_503s_reach_the_sdk_until_reset(emulator: Emulator, contacts: Any) -> None:
    create(contacts, email="ada@example.com")
    emulator.control("POST", "faults", json={"error_rate": 1.0, "status": 503, "latency_ms": 0})

    error = rejection(contacts.basic_api.get_page)

    assert error.status == 503
    assert emulator.stats()["faults_injected"] == 1
    emulator.control("POST", "reset")
    assert set(emulator.stats().values()) == {0}
    assert contacts.basic_api.get_page().results == []


def test_error_rate_draws_repeat_for_the_same_seed(emulator: Emulator, contacts: Any) -> None:
    def outcomes() -> list[int]:
        emulator.control("POST", "faults", json={"error_rate": 0.5, "status": 502, "seed": 7})
        statuses = []
        for _ in range(20):
            try:
                statuses.append(contacts.basic_api.get_page_with_http_info()[1])
            except ApiException as error:
                statuses.append(error.status)
        return statuses

    first = outcomes()

    assert first == outcomes()
    assert set(first) == {200, 502}


def test_injected_latency_delays_api_calls(emulator: Emulator, contacts: Any) -> None:
    emulator.control("POST", "faults", json={"latency_ms": 300})

    started = time.monotonic()
    contacts.basic_api.get_page()

    assert time.monotonic() - started >= 0.3


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_command_line_serves_the_api_and_keeps_the_token_out_of_its_output() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "emulators.hubspot", "--port", str(port)]
    command += ["--token", "cli-secret", "--rate-max", "7"]
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_answering(base_url, server)
        sdk = HubSpot(access_token="cli-secret", host=base_url)
        _, _, headers = sdk.crm.contacts.basic_api.get_page_with_http_info()
        wrong = HubSpot(access_token="not-it", host=base_url)
        assert rejection(wrong.crm.contacts.basic_api.get_page).status == 401
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]

    assert headers["X-HubSpot-RateLimit-Max"] == "7"
    assert "cli-secret" not in output
