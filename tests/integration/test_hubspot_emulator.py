"""The HubSpot emulator, driven through HubSpot's official Python SDK.

Every test talks to a real emulator process (``python -m emulators.hubspot --data ...``) on a
free loopback port, and to its API only through ``hubspot-api-client`` (the private
``/_emulator`` controls excepted), so what passes here is what crmsync's HubSpot client sees.
Most tests share one process, reset before each; those that need other limits, a restart or a
token start their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import hubspot.crm.companies as companies_sdk
import pytest
from aiohttp import web
from hubspot import HubSpot
from hubspot.crm.contacts import (
    ApiException,
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    BatchResponseSimplePublicObjectWithErrors,
    BatchResponseSimplePublicUpsertObjectWithErrors,
    Filter,
    FilterGroup,
    PublicGdprDeleteInput,
    PublicObjectSearchRequest,
    SimplePublicObject,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.utils.signature import Signature

from tests.conftest import free_port, wait_until

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
DEFAULT_COMPANY_PROPERTIES = {
    "createdate",
    "domain",
    "hs_lastmodifieddate",
    "hs_object_id",
    "name",
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


@dataclass
class HubSpotProcess:
    """``python -m emulators.hubspot`` on a free loopback port, keeping its records in
    ``data``; it can be killed and started again on the same file."""

    data: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    _output: IO[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.data.with_suffix(".log").read_text()

    def start(self) -> HubSpotProcess:
        return self.launch().wait_ready()

    def launch(self) -> HubSpotProcess:
        command = [sys.executable, "-m", "emulators.hubspot", "--port", str(self.port)]
        command += ["--data", str(self.data), *self.args]
        self._output = self.data.with_suffix(".log").open("a")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **self.env},
            stdout=self._output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def wait_ready(self) -> HubSpotProcess:
        wait_until(self._answering, timeout=20, interval=0.05, what=f"emulator {self.base_url}")
        return self

    def kill(self) -> None:
        """Die at once, as a crashed or OOM-killed emulator would: no clean shutdown."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_output()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._close_output()

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def _answering(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"emulator exited early:\n{self.output}")
        try:
            return httpx.get(f"{self.base_url}/_emulator/stats", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def sdk(self, token: str = TOKEN) -> HubSpot:
        return HubSpot(access_token=token, host=self.base_url)

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.base_url}/_emulator/{path}", **kwargs)
        response.raise_for_status()
        return response

    def stats(self) -> dict[str, int]:
        return self.control("GET", "stats").json()

    def reset(self) -> None:
        self.control("POST", "reset")


def launch_all(specs: dict[str, HubSpotProcess]) -> Iterator[dict[str, HubSpotProcess]]:
    """Start every process at once (start-up is mostly imports), yield them, stop them."""
    processes = {name: process.launch() for name, process in specs.items()}
    try:
        for process in processes.values():
            process.wait_ready()
        yield processes
    finally:
        for process in processes.values():
            process.stop()


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, HubSpotProcess]]:
    """This module's processes: "shared" serves most tests and is reset before each; every
    other one has the limits or credentials of the one test that uses it."""
    folder = tmp_path_factory.mktemp("hubspot")
    args: dict[str, tuple[str, ...]] = {
        # HubSpot allows 5 searches a second; the shared process more, so that tests which
        # search a lot do not trip it (the "limited" process has the real limit).
        "shared": ("--search-rate-max", "1000"),
        "limited": ("--rate-max", "5", "--rate-interval-ms", "60000"),
        "rolling": ("--rate-max", "2", "--rate-interval-ms", "300"),
        "daily": ("--daily-limit", "3"),
        "token": ("--require-token", "--rate-max", "7"),
    }
    specs = {name: HubSpotProcess(folder / f"{name}.sqlite", a) for name, a in args.items()}
    specs["token"].env["CRMSYNC_CRM_TOKEN"] = "the-right-token"
    yield from launch_all(specs)


@pytest.fixture
def emulator(emulators: dict[str, HubSpotProcess]) -> HubSpotProcess:
    emulators["shared"].reset()
    return emulators["shared"]


@pytest.fixture
def limited(emulators: dict[str, HubSpotProcess]) -> HubSpotProcess:
    """--rate-max 5 --rate-interval-ms 60000, reset."""
    emulators["limited"].reset()
    return emulators["limited"]


@pytest.fixture
def contacts(emulator: HubSpotProcess) -> Any:
    return emulator.sdk().crm.contacts


@pytest.fixture
def companies(emulator: HubSpotProcess) -> Any:
    return emulator.sdk().crm.companies


class WebhookReceiver:
    """A subscriber's endpoint: an aiohttp server on a free port, in a thread of its own,
    keeping every delivery's headers, body and URL as the subscriber would see them."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}/hubspot/events?portal=20000001"
        app = web.Application()
        app.router.add_post("/hubspot/events", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        self._wait(self._runner.setup())
        self._wait(web.SockSite(self._runner, listener).start())

    async def _receive(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read(), str(request.url)))
        return web.Response(status=204)

    def events(self) -> list[dict[str, Any]]:
        return [event for _, body, _ in list(self.deliveries) for event in json.loads(body)]

    def stop(self) -> None:
        self._wait(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _wait(self, work: Any) -> None:
        asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.stop()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def create(contacts: Any, **properties: str) -> SimplePublicObject:
    return contacts.basic_api.create(SimplePublicObjectInputForCreate(properties=properties))


def create_company(companies: Any, **properties: str) -> Any:
    request = companies_sdk.SimplePublicObjectInputForCreate(properties=properties)
    return companies.basic_api.create(request)


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


def search(contacts: Any, *groups: list[Filter], **request: Any) -> Any:
    filter_groups = [FilterGroup(filters=filters) for filters in groups]
    body = PublicObjectSearchRequest(filter_groups=filter_groups, **request)
    return contacts.search_api.do_search(body)


def where(name: str, operator: str, value: str | None = None, **more: Any) -> Filter:
    return Filter(property_name=name, operator=operator, value=value, **more)


def rejection(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def body_of(error: ApiException) -> dict[str, Any]:
    return json.loads(error.body)


def epoch_ms(timestamp: Any) -> int:
    return int(timestamp.timestamp() * 1000)


# --------------------------------------------------------------------------------------------
# Single-object endpoints
# --------------------------------------------------------------------------------------------


def test_created_contact_reads_back_by_id_email_and_custom_unique_property(
    emulator: HubSpotProcess, contacts: Any
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


def test_archived_contact_is_404_and_left_out_of_lists(
    emulator: HubSpotProcess, contacts: Any
) -> None:
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
    emulator: HubSpotProcess, contacts: Any
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
    emulator: HubSpotProcess, contacts: Any
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
    emulator: HubSpotProcess, contacts: Any
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


def test_batch_archive_archives_every_listed_contact(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    created = create_batch(contacts, 3)

    inputs = [SimplePublicObjectId(id=contact.id) for contact in created[:2]]
    contacts.batch_api.archive(BatchInputSimplePublicObjectId(inputs=inputs))

    assert [contact.id for contact in contacts.basic_api.get_page().results] == [created[2].id]
    assert emulator.stats()["archives"] == 2


@pytest.mark.parametrize("operation", ["create", "upsert"])
def test_batch_over_100_inputs_is_rejected_whole(
    emulator: HubSpotProcess, contacts: Any, operation: str
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


def test_batch_create_with_a_conflict_writes_nothing(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    create(contacts, email="user1@example.com")

    error = rejection(lambda: create_batch(contacts, 3))

    assert error.status == 409
    assert emulator.stats()["contacts"] == 1


# --------------------------------------------------------------------------------------------
# Multi-status: per-input results for inputs carrying an objectWriteTraceId
# --------------------------------------------------------------------------------------------


def test_traced_batch_create_keeps_the_valid_inputs_and_names_the_invalid_one(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    inputs = [
        SimplePublicObjectBatchInputForCreate(
            properties={"email": email}, object_write_trace_id=trace
        )
        for trace, email in [
            ("t-ada", "ada@example.com"),
            ("t-bad", "not-an-email"),
            ("t-grace", "grace@example.com"),
        ]
    ]

    response, status, _ = contacts.batch_api.create_with_http_info(
        BatchInputSimplePublicObjectBatchInputForCreate(inputs)
    )

    # The SDK does not raise on a 207: it returns the "...WithErrors" model.
    assert status == 207
    assert isinstance(response, BatchResponseSimplePublicObjectWithErrors)
    assert response.status == "COMPLETE"
    assert response.num_errors == 1
    assert sorted(r.properties["email"] for r in response.results) == [
        "ada@example.com",
        "grace@example.com",
    ]
    assert {r.object_write_trace_id for r in response.results} == {"t-ada", "t-grace"}
    (error,) = response.errors
    assert error.status == "error"
    assert error.category == "VALIDATION_ERROR"
    assert error.context == {"objectWriteTraceId": ["t-bad"]}
    assert error.message.startswith("Property values were not valid: ")
    assert '"error":"INVALID_EMAIL"' in error.message
    assert emulator.stats()["contacts"] == 2


def test_untraced_batch_create_with_one_invalid_input_writes_nothing(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    inputs = [
        SimplePublicObjectBatchInputForCreate(properties={"email": email})
        for email in ("ada@example.com", "not-an-email")
    ]

    error = rejection(
        lambda: contacts.batch_api.create(BatchInputSimplePublicObjectBatchInputForCreate(inputs))
    )

    assert error.status == 400
    assert body_of(error)["category"] == "VALIDATION_ERROR"
    assert emulator.stats()["contacts"] == 0


def test_traced_batch_upsert_and_update_report_each_refused_input(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    create(contacts, email="taken@example.com", crmsync_id="c-taken")
    rows = [("c-1", "one@example.com"), ("c-2", "taken@example.com"), ("c-3", "3@example.com")]
    inputs = [
        SimplePublicObjectBatchInputUpsert(
            id=key, id_property="crmsync_id", properties={"email": email}, object_write_trace_id=key
        )
        for key, email in rows
    ]

    upserted, status, _ = contacts.batch_api.upsert_with_http_info(
        BatchInputSimplePublicObjectBatchInputUpsert(inputs)
    )
    updates = [
        SimplePublicObjectBatchInput(
            id=result.id, properties={"email": email}, object_write_trace_id=f"u-{n}"
        )
        for n, (result, email) in enumerate(
            zip(upserted.results, ["bad", "new@example.com"], strict=True)
        )
    ]
    updated, update_status, _ = contacts.batch_api.update_with_http_info(
        BatchInputSimplePublicObjectBatchInput(updates)
    )

    assert status == 207
    assert isinstance(upserted, BatchResponseSimplePublicUpsertObjectWithErrors)
    assert sorted(r.properties["crmsync_id"] for r in upserted.results) == ["c-1", "c-3"]
    assert all(r.new for r in upserted.results)
    assert upserted.errors[0].category == "CONFLICT"
    assert upserted.errors[0].context == {"objectWriteTraceId": ["c-2"]}
    assert update_status == 207
    assert [r.properties["email"] for r in updated.results] == ["new@example.com"]
    assert updated.errors[0].context == {"objectWriteTraceId": ["u-0"]}
    assert emulator.stats()["contacts"] == 3


def test_batch_update_by_id_sets_a_unique_property_names_unknown_ids_and_sends_webhooks(
    emulator: HubSpotProcess, contacts: Any, receiver: WebhookReceiver
) -> None:
    emulator.control("POST", "webhooks", json={"url": receiver.url, "secret": "s"})
    hand_made = create(contacts, email="ada@home.example", firstname="Ada")
    inputs = [
        SimplePublicObjectBatchInput(
            id=hand_made.id, object_write_trace_id="0",
            properties={"crmsync_id": "c-1", "email": "ada@example.com"},
        ),
        SimplePublicObjectBatchInput(
            id="999999", object_write_trace_id="1", properties={"crmsync_id": "c-2"}
        ),
    ]  # fmt: skip

    updated, status, _ = contacts.batch_api.update_with_http_info(
        BatchInputSimplePublicObjectBatchInput(inputs)
    )

    assert status == 207
    assert isinstance(updated, BatchResponseSimplePublicObjectWithErrors)
    (result,) = updated.results
    assert (result.id, result.object_write_trace_id) == (hand_made.id, "0")
    assert result.properties["crmsync_id"] == "c-1"
    (missing,) = updated.errors
    assert (missing.category, missing.context) == ("OBJECT_NOT_FOUND", {"ids": ["999999"]})
    by_key = contacts.basic_api.get_by_id("c-1", id_property="crmsync_id")
    assert (by_key.id, by_key.properties["email"]) == (hand_made.id, "ada@example.com")
    assert (emulator.stats()["contacts"], emulator.stats()["creates"]) == (1, 1)
    changed = {
        ("contact.propertyChange", hand_made.id, "crmsync_id", "c-1"),
        ("contact.propertyChange", hand_made.id, "email", "ada@example.com"),
    }

    def received() -> set[tuple[Any, ...]]:
        return {
            (e["subscriptionType"], str(e["objectId"]), e.get("propertyName"),
             e.get("propertyValue"))
            for e in receiver.events()
        }  # fmt: skip

    wait_until(lambda: changed <= received(), timeout=10, what="webhook events for the update")


def test_untraced_batch_upsert_with_one_refused_input_is_a_207_that_wrote_nothing(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    rows = {"c-1": {"email": "one@example.com"}, "c-2": {"email": "not-an-email"}}
    inputs = [
        SimplePublicObjectBatchInputUpsert(id=key, id_property="crmsync_id", properties=props)
        for key, props in rows.items()
    ]

    response, status, _ = contacts.batch_api.upsert_with_http_info(
        BatchInputSimplePublicObjectBatchInputUpsert(inputs)
    )

    assert status == 207
    assert response.results == []
    assert response.num_errors == 1
    assert response.errors[0].category == "VALIDATION_ERROR"
    assert emulator.stats()["contacts"] == 0


# --------------------------------------------------------------------------------------------
# Companies
# --------------------------------------------------------------------------------------------


def test_company_crud_with_hubspots_default_properties(
    emulator: HubSpotProcess, companies: Any
) -> None:
    acme = create_company(companies, name="Acme", domain="acme.io", city="Berlin")

    fetched = companies.basic_api.get_by_id(acme.id)
    updated = companies.basic_api.update(
        acme.id, companies_sdk.SimplePublicObjectInput(properties={"city": "Paris"})
    )
    with_city = companies.basic_api.get_by_id(acme.id, properties=["city"])
    companies.basic_api.archive(acme.id)

    assert set(fetched.properties) == DEFAULT_COMPANY_PROPERTIES
    assert fetched.properties["name"] == "Acme"
    assert "lastmodifieddate" not in acme.properties  # companies have hs_lastmodifieddate
    assert updated.properties["city"] == "Paris"
    assert with_city.properties["city"] == "Paris"
    assert with_city.properties["hs_lastmodifieddate"] >= fetched.properties["hs_lastmodifieddate"]
    with pytest.raises(companies_sdk.ApiException) as gone:
        companies.basic_api.get_by_id(acme.id)
    assert gone.value.status == 404
    assert companies.basic_api.get_by_id(acme.id, archived=True).archived is True
    stats = emulator.stats()
    assert (stats["companies"], stats["companies_archived"], stats["contacts"]) == (0, 1, 0)


def test_companies_may_share_a_domain_but_not_a_crmsync_id(companies: Any) -> None:
    first = create_company(companies, name="Acme", domain="acme.io", crmsync_id="k-1")
    second = create_company(companies, name="Acme EU", domain="acme.io")

    with pytest.raises(companies_sdk.ApiException) as clash:
        create_company(companies, name="Acme US", crmsync_id="k-1")
    with pytest.raises(companies_sdk.ApiException) as by_domain:
        companies.basic_api.get_by_id("acme.io", id_property="domain")

    assert first.id != second.id
    assert clash.value.status == 400
    assert "DUPLICATE_UNIQUE_VALUE" in json.loads(clash.value.body)["message"]
    assert by_domain.value.status == 400
    assert json.loads(by_domain.value.body)["message"] == (
        "Property domain is not a unique identifier for COMPANY objects"
    )


def test_company_batches_and_paging(emulator: HubSpotProcess, companies: Any) -> None:
    batch = companies_sdk.BatchInputSimplePublicObjectBatchInputForCreate(
        inputs=[
            companies_sdk.SimplePublicObjectBatchInputForCreate(
                properties={"name": f"Company {n}", "crmsync_id": f"k-{n}"}
            )
            for n in range(5)
        ]
    )
    created = companies.batch_api.create(batch).results
    upserted = companies.batch_api.upsert(
        companies_sdk.BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                companies_sdk.SimplePublicObjectBatchInputUpsert(
                    id=key, id_property="crmsync_id", properties={"city": "Oslo"}
                )
                for key in ("k-0", "k-9")
            ]
        )
    ).results
    read = companies.batch_api.read(
        companies_sdk.BatchReadInputSimplePublicObjectId(
            inputs=[companies_sdk.SimplePublicObjectId(id="k-0")],
            id_property="crmsync_id",
            properties=["city"],
            properties_with_history=[],
        )
    ).results
    companies.batch_api.archive(
        companies_sdk.BatchInputSimplePublicObjectId(
            inputs=[companies_sdk.SimplePublicObjectId(id=created[1].id)]
        )
    )
    first = companies.basic_api.get_page(limit=3)
    second = companies.basic_api.get_page(limit=3, after=first.paging.next.after)

    assert {r.properties["crmsync_id"]: r.new for r in upserted} == {"k-0": False, "k-9": True}
    assert read[0].properties["city"] == "Oslo"
    listed = [c.properties["name"] for c in first.results + second.results]
    assert listed == ["Company 0", "Company 2", "Company 3", "Company 4", None]
    assert second.paging is None
    assert emulator.stats()["companies"] == 5


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------


def test_search_ors_filter_groups_ands_filters_sorts_and_pages(contacts: Any) -> None:
    people = [
        ("ann@example.com", "customer", "de"),
        ("bob@example.com", "customer", "us"),
        ("cid@example.com", "lead", "de"),
        ("dee@vip.example", "lead", "fr"),
        ("eve@example.com", "customer", "fr"),
        ("fay@vip.example", "other", "us"),
    ]
    for email, stage, country in people:
        create(contacts, email=email, lifecyclestage=stage, country=country)
    customers_in_europe = [
        where("lifecyclestage", "EQ", "Customer"),  # string equality ignores case
        where("country", "IN", values=["de", "fr"]),
    ]
    vips = [where("email", "CONTAINS_TOKEN", "*@vip.example")]
    sorts = [{"propertyName": "email", "direction": "DESCENDING"}]

    pages, after = [], None
    while True:
        page = search(
            contacts,
            customers_in_europe,
            vips,
            sorts=sorts,
            limit=2,
            after=after,
            properties=["email", "country"],
        )
        pages.append(page)
        if page.paging is None:
            break
        after = page.paging.next.after

    emails = [r.properties["email"] for page in pages for r in page.results]
    assert emails == ["fay@vip.example", "eve@example.com", "dee@vip.example", "ann@example.com"]
    assert [page.total for page in pages] == [4, 4]
    assert set(pages[0].results[0].properties) == {
        "country",
        "createdate",
        "email",
        "hs_object_id",
        "lastmodifieddate",
    }


def test_search_operators(contacts: Any) -> None:
    for n, score in enumerate(["5", "10", "20", None]):
        properties = {"email": f"p{n}@example.com", "firstname": f"P{n}"}
        if score is not None:
            properties["crmsync_score"] = score
        create(contacts, **properties)

    def emails(*filters: Filter) -> list[str]:
        found = search(contacts, list(filters), sorts=["email"]).results
        return [r.properties["email"].split("@")[0] for r in found]

    assert emails(where("crmsync_score", "GT", "5")) == ["p1", "p2"]  # numerically, not "5">"10"
    assert emails(where("crmsync_score", "GTE", "10")) == ["p1", "p2"]
    assert emails(where("crmsync_score", "LT", "10")) == ["p0"]
    assert emails(where("crmsync_score", "LTE", "10")) == ["p0", "p1"]
    assert emails(where("crmsync_score", "BETWEEN", "6", high_value="20")) == ["p1", "p2"]
    assert emails(where("crmsync_score", "NEQ", "10")) == ["p0", "p2", "p3"]  # p3: unset
    assert emails(where("crmsync_score", "NOT_IN", values=["5", "20"])) == ["p1", "p3"]
    assert emails(where("crmsync_score", "HAS_PROPERTY")) == ["p0", "p1", "p2"]
    assert emails(where("crmsync_score", "NOT_HAS_PROPERTY")) == ["p3"]
    assert emails(where("firstname", "NOT_CONTAINS_TOKEN", "p1")) == ["p0", "p2", "p3"]
    assert emails(where("email", "EQ", "P2@EXAMPLE.COM")) == ["p2"]


def test_search_finds_contacts_modified_since_a_moment_and_never_archived_ones(
    contacts: Any,
) -> None:
    early = [create(contacts, email=f"e{n}@example.com") for n in range(3)]
    gone = create(contacts, email="gone@example.com")
    since = max(epoch_ms(contact.updated_at) for contact in [*early, gone])
    wait_until(lambda: time.time() * 1000 > since + 1, interval=0.001, what="the next ms")
    changed = contacts.basic_api.update(
        early[1].id, SimplePublicObjectInput(properties={"firstname": "Changed"})
    )
    contacts.basic_api.update(gone.id, SimplePublicObjectInput(properties={"firstname": "X"}))
    contacts.basic_api.archive(gone.id)
    late = create(contacts, email="late@example.com")

    modified = search(
        contacts,
        [where("lastmodifieddate", "GT", str(since))],  # epoch milliseconds, as HubSpot takes
        sorts=[{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        properties=["email", "lastmodifieddate"],
    )
    by_iso = search(
        contacts, [where("lastmodifieddate", "GTE", changed.properties["lastmodifieddate"])]
    )

    assert [r.id for r in modified.results] == [changed.id, late.id]
    assert modified.total == 2
    assert (
        modified.results[0].properties["lastmodifieddate"] == changed.properties["lastmodifieddate"]
    )
    assert {r.id for r in by_iso.results} == {changed.id, late.id}


@pytest.mark.parametrize(
    ("request_fields", "problem"),
    [
        ({"limit": 201}, "limit"),
        ({"after": "10000"}, "10000"),
        ({"filter_groups": [FilterGroup(filters=[where("email", "HAS_PROPERTY")])] * 6}, "group"),
        ({"filter_groups": [FilterGroup(filters=[where("email", "HAS_PROPERTY")] * 7)]}, "filters"),
        ({"filter_groups": [FilterGroup(filters=[where("email", "EQ")])]}, "value"),
    ],
)
def test_search_refuses_what_hubspot_refuses(
    contacts: Any, request_fields: dict[str, Any], problem: str
) -> None:
    error = rejection(
        lambda: contacts.search_api.do_search(PublicObjectSearchRequest(**request_fields))
    )

    assert error.status == 400
    assert body_of(error)["category"] == "VALIDATION_ERROR"
    assert problem in body_of(error)["message"]


def test_company_search_and_free_text_query(companies: Any) -> None:
    for name, domain in [("Acme Rockets", "acme.io"), ("Globex", "globex.com"), ("Acme", "a.co")]:
        create_company(companies, name=name, domain=domain)

    found = companies.search_api.do_search(
        companies_sdk.PublicObjectSearchRequest(query="acme", sorts=["-name"])
    )
    by_domain = companies.search_api.do_search(
        companies_sdk.PublicObjectSearchRequest(
            filter_groups=[
                companies_sdk.FilterGroup(
                    filters=[
                        companies_sdk.Filter(
                            property_name="domain", operator="EQ", value="globex.com"
                        )
                    ]
                )
            ]
        )
    )

    assert [r.properties["name"] for r in found.results] == ["Acme Rockets", "Acme"]
    assert [r.properties["name"] for r in by_domain.results] == ["Globex"]
    assert set(by_domain.results[0].properties) == DEFAULT_COMPANY_PROPERTIES


def test_search_has_its_own_limit_of_five_a_second_and_no_rate_limit_headers(
    limited: HubSpotProcess,
) -> None:
    emulator = limited
    contacts = emulator.sdk().crm.contacts
    request = PublicObjectSearchRequest(filter_groups=[])

    headers = [contacts.search_api.do_search_with_http_info(request)[2] for _ in range(5)]
    error = rejection(lambda: contacts.search_api.do_search(request))
    _, _, list_headers = contacts.basic_api.get_page_with_http_info()

    assert error.status == 429
    body = body_of(error)
    assert body["policyName"] == "SECONDLY"
    assert body["message"] == "You have reached your secondly limit."
    assert body["errorType"] == "RATE_LIMIT"
    assert not any(RATE_LIMIT_HEADERS & set(h) for h in [*headers, dict(error.headers)])
    # Searches are exempt from the ten-secondly window: the list call is its first request.
    assert list_headers["X-HubSpot-RateLimit-Remaining"] == "4"


# --------------------------------------------------------------------------------------------
# GDPR delete
# --------------------------------------------------------------------------------------------


def test_gdpr_delete_removes_the_contact_for_good(emulator: HubSpotProcess, contacts: Any) -> None:
    ada = create(contacts, email="ada@example.com", crmsync_id="c-ada")

    assert contacts.basic_api.purge(PublicGdprDeleteInput(object_id=ada.id)) is None

    for archived in (False, True):
        error = rejection(lambda a=archived: contacts.basic_api.get_by_id(ada.id, archived=a))
        assert error.status == 404
    assert contacts.basic_api.get_page(archived=True).results == []
    stats = emulator.stats()
    assert (stats["contacts"], stats["archived"], stats["gdpr_deletes"]) == (0, 0, 1)
    assert stats["gdpr_blocklisted"] == 1
    # The blocklist keeps the email out of HubSpot's UI and imports, not out of the API.
    again = create(contacts, email="ada@example.com")
    assert int(again.id) > int(ada.id)


def test_gdpr_delete_by_unknown_email_blocklists_it_and_unknown_id_is_404(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    contacts.basic_api.purge(
        PublicGdprDeleteInput(object_id="nobody@example.com", id_property="email")
    )
    by_email = create(contacts, email="someone@example.com")
    contacts.basic_api.purge(
        PublicGdprDeleteInput(object_id="SOMEONE@example.com", id_property="email")
    )
    error = rejection(lambda: contacts.basic_api.purge(PublicGdprDeleteInput(object_id="99999")))

    assert error.status == 404
    assert rejection(lambda: contacts.basic_api.get_by_id(by_email.id)).status == 404
    stats = emulator.stats()
    assert (stats["gdpr_deletes"], stats["gdpr_blocklisted"]) == (1, 2)


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------


def test_webhooks_are_hubspots_events_signed_with_its_v3_signature(
    emulator: HubSpotProcess, contacts: Any, companies: Any, receiver: WebhookReceiver
) -> None:
    secret = "the-app-client-secret"
    emulator.control("POST", "webhooks", json={"url": receiver.url, "secret": secret})
    started = time.time() * 1000

    ada = create(contacts, email="ada@example.com", firstname="Ada")
    contacts.basic_api.update(
        ada.id, SimplePublicObjectInput(properties={"firstname": "Augusta", "lastname": ""})
    )
    contacts.basic_api.archive(ada.id)
    grace = create(contacts, email="grace@example.com")
    contacts.basic_api.purge(PublicGdprDeleteInput(object_id=grace.id))
    acme = create_company(companies, name="Acme")

    expected = [
        ("contact.creation", ada.id, None, None),
        ("contact.propertyChange", ada.id, "email", "ada@example.com"),
        ("contact.propertyChange", ada.id, "firstname", "Ada"),
        ("contact.propertyChange", ada.id, "firstname", "Augusta"),  # lastname was unset
        ("contact.deletion", ada.id, None, None),
        ("contact.creation", grace.id, None, None),
        ("contact.propertyChange", grace.id, "email", "grace@example.com"),
        ("contact.privacyDeletion", grace.id, None, None),
        ("company.creation", acme.id, None, None),
        ("company.propertyChange", acme.id, "name", "Acme"),
    ]

    def received() -> list[tuple[Any, ...]]:
        return [
            (
                e["subscriptionType"],
                str(e["objectId"]),
                e.get("propertyName"),
                e.get("propertyValue"),
            )
            for e in receiver.events()
        ]

    wait_until(lambda: len(received()) >= len(expected), timeout=10, what="webhook events")
    assert received() == expected
    creation = receiver.events()[0]
    assert creation["changeFlag"] == "CREATED"
    assert (creation["portalId"], creation["attemptNumber"]) == (20000001, 0)
    assert creation["changeSource"] == "INTEGRATION"
    assert isinstance(creation["eventId"], int) and isinstance(creation["appId"], int)
    assert started - 1 <= creation["occurredAt"] <= time.time() * 1000
    assert receiver.events()[4]["changeFlag"] == "DELETED"
    for headers, body, url in receiver.deliveries:
        signature = headers["X-HubSpot-Signature-v3"]
        verify = dict(
            request_body=body.decode(),
            http_uri=url,  # as the receiver saw it
            http_method="POST",
            signature_version="v3",
            timestamp=headers["X-HubSpot-Request-Timestamp"],
        )
        assert Signature.is_valid(signature=signature, client_secret=secret, **verify)
        assert not Signature.is_valid(signature=signature, client_secret="not-it", **verify)
        assert Signature.is_valid(
            signature=headers["X-HubSpot-Signature"],
            client_secret=secret,
            request_body=body.decode(),
            signature_version="v1",
        )
    assert emulator.stats()["webhooks_delivered"] == len(receiver.deliveries)


# --------------------------------------------------------------------------------------------
# Authentication and rate limits
# --------------------------------------------------------------------------------------------


def test_command_line_accepts_only_crmsyncs_token_and_keeps_it_out_of_its_output(
    emulators: dict[str, HubSpotProcess],
) -> None:
    # --require-token --rate-max 7, CRMSYNC_CRM_TOKEN=the-right-token: as `crmsync emulator
    # hubspot` is started by the integration tests' conftest.
    emulator = emulators["token"]

    error = rejection(lambda: emulator.sdk("a-wrong-token").crm.contacts.basic_api.get_page())
    right = emulator.sdk("the-right-token").crm.contacts.basic_api.get_page_with_http_info()
    emulator.stop()

    assert error.status == 401
    body = body_of(error)
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["message"].startswith("Authentication credentials not found.")
    response, _, headers = right
    assert response.results == []
    assert headers["X-HubSpot-RateLimit-Max"] == "7"
    assert "Running on" in emulator.output
    assert "the-right-token" not in emulator.output


def test_sixth_request_in_the_window_gets_hubspots_429(limited: HubSpotProcess) -> None:
    emulator = limited
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
    emulators: dict[str, HubSpotProcess],
) -> None:
    emulator = emulators["rolling"]  # --rate-max 2 --rate-interval-ms 300
    api = emulator.sdk().crm.contacts.basic_api
    api.get_page()
    api.get_page()
    assert rejection(api.get_page).status == 429

    def admitted() -> dict[str, str] | None:
        try:
            return api.get_page_with_http_info()[2]
        except ApiException as error:
            assert error.status == 429
            return None

    headers = wait_until(admitted, timeout=10, interval=0.05, what="the window to roll on")

    assert headers["X-HubSpot-RateLimit-Remaining"] == "1"


def test_daily_limit_gets_hubspots_daily_429(emulators: dict[str, HubSpotProcess]) -> None:
    emulator = emulators["daily"]  # --daily-limit 3
    api = emulator.sdk().crm.contacts.basic_api
    for _ in range(3):
        api.get_page()

    error = rejection(api.get_page)

    assert error.status == 429
    assert body_of(error)["policyName"] == "DAILY"
    assert body_of(error)["message"] == "You have reached your daily limit."
    assert dict(error.headers)["X-HubSpot-RateLimit-Daily-Remaining"] == "0"


# --------------------------------------------------------------------------------------------
# Durability
# --------------------------------------------------------------------------------------------


def test_a_killed_emulator_restarts_with_every_record_and_continues_the_ids(
    emulator: HubSpotProcess, receiver: WebhookReceiver
) -> None:
    emulator.control("POST", "webhooks", json={"url": receiver.url, "secret": "s"})
    sdk = emulator.sdk()
    ada = create(sdk.crm.contacts, email="ada@example.com", crmsync_id="c-ada", firstname="Ada")
    gone = create(sdk.crm.contacts, email="gone@example.com")
    purged = create(sdk.crm.contacts, email="purged@example.com")
    sdk.crm.contacts.basic_api.archive(gone.id)
    sdk.crm.contacts.basic_api.purge(PublicGdprDeleteInput(object_id=purged.id))
    acme = create_company(sdk.crm.companies, name="Acme", domain="acme.io")

    emulator.kill()
    emulator.start()

    sdk = emulator.sdk()
    again = sdk.crm.contacts.basic_api.get_by_id("c-ada", id_property="crmsync_id")
    assert again.id == ada.id
    assert again.properties["firstname"] == "Ada"
    assert again.created_at == ada.created_at
    assert sdk.crm.contacts.basic_api.get_by_id(gone.id, archived=True).archived is True
    assert rejection(lambda: sdk.crm.contacts.basic_api.get_by_id(purged.id)).status == 404
    assert sdk.crm.companies.basic_api.get_by_id(acme.id).properties["domain"] == "acme.io"
    # The unique index came back too, and the id sequence carries on where it stopped.
    assert rejection(lambda: create(sdk.crm.contacts, email="ADA@example.com")).status == 409
    assert int(create(sdk.crm.contacts, email="new@example.com").id) == int(purged.id) + 1
    assert int(create_company(sdk.crm.companies, name="Initech").id) == int(acme.id) + 1
    assert emulator.control("GET", "webhooks").json() == {"subscriptions": [receiver.url]}
    stats = emulator.stats()
    assert (stats["contacts"], stats["archived"], stats["companies"]) == (2, 1, 2)


# --------------------------------------------------------------------------------------------
# Emulator controls and faults
# --------------------------------------------------------------------------------------------


def test_injected_503s_reach_the_sdk_until_reset(emulator: HubSpotProcess, contacts: Any) -> None:
    create(contacts, email="ada@example.com")
    emulator.control("POST", "faults", json={"error_rate": 1.0, "error_status": 503})

    error = rejection(contacts.basic_api.get_page)

    assert error.status == 503
    assert body_of(error)["status"] == "error"
    assert body_of(error)["correlationId"] == dict(error.headers)["X-HubSpot-Correlation-Id"]
    assert emulator.stats()["faults_injected"] == 1
    emulator.reset()
    assert set(emulator.stats().values()) == {0}
    assert contacts.basic_api.get_page().results == []


def test_error_rate_draws_repeat_for_the_same_seed(emulator: HubSpotProcess, contacts: Any) -> None:
    def outcomes() -> list[int]:
        emulator.control("POST", "faults", json={"error_rate": 0.5, "error_status": 502, "seed": 7})
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


def test_injected_latency_delays_api_calls(emulator: HubSpotProcess, contacts: Any) -> None:
    emulator.control("POST", "faults", json={"latency_ms": 300})

    started = time.monotonic()
    contacts.basic_api.get_page()

    assert time.monotonic() - started >= 0.3


def test_throttle_fault_is_hubspots_429_with_its_headers(
    emulator: HubSpotProcess, contacts: Any
) -> None:
    emulator.control("POST", "faults", json={"throttle": True})

    error = rejection(contacts.basic_api.get_page)

    assert error.status == 429
    assert body_of(error)["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body_of(error)["errorType"] == "RATE_LIMIT"
    headers = dict(error.headers)
    assert set(headers) >= RATE_LIMIT_HEADERS
    assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert emulator.stats()["faults_injected"] == 1


def test_outage_is_a_bare_503_until_it_lifts(emulator: HubSpotProcess, contacts: Any) -> None:
    create(contacts, email="ada@example.com")
    emulator.control("POST", "faults", json={"outage": True, "for_seconds": 0.5})

    error = rejection(contacts.basic_api.get_page)

    assert error.status == 503
    assert error.body == "503 Service Unavailable"  # a load balancer, not HubSpot
    assert "X-HubSpot-Correlation-Id" not in dict(error.headers)

    def answers() -> bool:
        try:
            return len(contacts.basic_api.get_page().results) == 1
        except ApiException as failure:
            assert failure.status == 503
            return False

    wait_until(answers, timeout=10, interval=0.05, what="the outage to lift")
