"""The inbound side (adapters.inbound) against real Postgres and the three vendor emulators over
HTTP: edits made through each vendor's API reach its staging table by webhook and by polling,
forged, stale and replayed deliveries are refused, the poll cursor and the inbox survive a
restart, and staging never goes back in time.

The runtime runs on its own event loop in a thread, as it would beside the outbound consumer in
`crmsync adapter <target>`; the test drives the vendors' APIs and reads Postgres meanwhile."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from adapters.breaker import CircuitBreaker
from adapters.clients import make_client
from adapters.inbound import InboundRuntime, build_inbound
from adapters.ratelimit import RequestWindow, Throttle
from adapters.retry import RetryPolicy
from adapters.target import Upsert
from adapters.worker import TargetAdapter, throttle_for
from canonical_db import apply_migrations
from crmsync.broker import create_topics, start_tansu, wait_for_broker
from crmsync.postgres import LocalPostgres
from crmsync.rules import load_rules
from crmsync.settings import Settings
from crmsync.stack import settings_env, subscribe_webhooks, terminate, wait_for_http
from crmsync.targets import load_plan
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(120)

VENDORS = {"hubspot": "crm", "stripe": "billing", "zendesk": "support"}
TABLES = {"crm": "crm_contacts", "billing": "billing_customers", "support": "support_users"}
EMULATOR_OPTIONS = {"zendesk": ["--export-limit", "600"]}  # tests poll every second
SECRETS = {
    "crm": "hubspot-test-client-secret",
    "billing": "whsec_inbound_tests",
    "support": "zendesk-test-signing-secret",
}
ZENDESK_AUTH = httpx.BasicAuth("crmsync@example.com/token", "local-dev-token")


# --------------------------------------------------------------------------------------------
# Real services
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster = LocalPostgres(tmp_path_factory.mktemp("inbound-pg"), free_port())
    cluster.start()
    apply_migrations(cluster.dsn)
    yield cluster.dsn
    cluster.stop()


@pytest.fixture(scope="module")
def emulators() -> Iterator[dict[str, int]]:
    ports = {vendor: free_port() for vendor in VENDORS}
    cli = [sys.executable, "-m", "crmsync.cli", "emulator"]
    processes = [
        subprocess.Popen(
            [*cli, vendor, "--port", str(port), *EMULATOR_OPTIONS.get(vendor, [])],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for vendor, port in ports.items()
    ]
    for port in ports.values():
        wait_for_http(f"http://127.0.0.1:{port}/_emulator/stats")
    yield ports
    for process in processes:
        terminate(process.pid)


@dataclass
class World:
    settings: Settings

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def staged(self, target: str, external_id: str) -> dict[str, Any] | None:
        rows = self.sql(
            f"select payload, source_updated_at, deleted, received_at, xmin::text"
            f" from staging.{TABLES[target]} where external_id = %s",
            (external_id,),
        )
        if not rows:
            return None
        payload, updated, deleted, received, xmin = rows[0]
        return {"payload": payload, "source_updated_at": updated, "deleted": deleted,
                "received_at": received, "xmin": xmin}  # fmt: skip

    def inbox(self, target: str) -> list[tuple[Any, ...]]:
        return self.sql(
            "select event_id, object_id, source, processed_at from sync.inbound_events"
            " where system = %s order by id",
            (target,),
        )

    def cursor(self, target: str) -> str | None:
        rows = self.sql("select cursor from sync.inbound_cursors where system = %s", (target,))
        return rows[0][0] if rows else None

    def api(self, vendor: str) -> VendorApi:
        return VendorApi(vendor, self.settings.target_url(VENDORS[vendor]))

    @contextmanager
    def inbound(
        self, target: str, tweak: Callable[[Any], None] | None = None, **loops: bool
    ) -> Iterator[InboundRuntime]:
        running = RunningInbound(self.settings, target, tweak, loops)
        try:
            yield running.start()
        finally:
            running.stop()


@pytest.fixture
def world(dsn: str, emulators: dict[str, int]) -> World:
    for port in emulators.values():
        httpx.post(f"http://127.0.0.1:{port}/_emulator/reset").raise_for_status()
    settings = Settings(
        database_url=SecretStr(dsn),
        emulator_port=emulators["hubspot"],
        billing_emulator_port=emulators["stripe"],
        support_emulator_port=emulators["zendesk"],
        crm_webhook_port=free_port(),
        billing_webhook_port=free_port(),
        support_webhook_port=free_port(),
        **{f"{t}_webhook_secret": SecretStr(s) for t, s in SECRETS.items()},
        poll_interval_seconds=1.0,
    )  # type: ignore[arg-type]
    world = World(settings)
    world.sql(
        "truncate staging.crm_contacts, staging.billing_customers, staging.support_users,"
        " sync.inbound_events, sync.inbound_signatures, sync.inbound_cursors,"
        " sync.identity_links, sync.dead_letters"
    )
    return world


def fast_polling(source: Any) -> None:
    """The emulators here allow more than the vendors' endpoint limits; so may the tests."""
    if hasattr(source, "settle_seconds"):
        source.settle_seconds = 1.0
    if hasattr(source, "exports"):
        source.exports = Throttle([RequestWindow(600, 60.0)])


class RunningInbound:
    """The inbound side of one target on its own loop (a thread), built the way run_adapter
    builds it: a TargetAdapter's `call`, the vendor client, the settings."""

    def __init__(
        self, settings: Settings, target: str, tweak: Callable[[Any], None] | None,
        loops: dict[str, bool],
    ) -> None:  # fmt: skip
        self.settings, self.target, self.tweak, self.loops = settings, target, tweak, loops
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> InboundRuntime:
        self.thread.start()
        assert self.ready.wait(20), "the inbound side did not start"
        if self.error is not None:
            raise self.error
        if self.loops.get("receive", True):
            wait_until(self.runtime.listening.is_set, timeout=10, what="the receiver")
        return self.runtime

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.halt.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the inbound side did not stop"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        settings, target = self.settings, self.target
        plan = load_plan(settings, target)
        client = make_client(settings, target, plan)
        conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        rules = load_rules(settings.ownership_file, settings.mapping_file, {"crm": "hubspot"})
        adapter = TargetAdapter(
            target, client, conn, rules, throttle_for(plan),
            RetryPolicy(base=0.01, cap=0.2, give_up_after=10),
            CircuitBreaker(threshold=5, cooldown=0.05, max_cooldown=0.2), plan.concurrency,
        )  # fmt: skip
        runtime = build_inbound(settings, target, adapter.call, client, rules, **self.loops)
        assert runtime is not None
        if self.tweak is not None:
            self.tweak(runtime.source)
        self.runtime, self.loop, self.halt = runtime, asyncio.get_running_loop(), asyncio.Event()
        self.ready.set()
        try:
            await runtime.run(self.halt)
        finally:
            await client.aclose()
            await conn.close()


# --------------------------------------------------------------------------------------------
# Each vendor's API, as any client would call it
# --------------------------------------------------------------------------------------------


class VendorApi:
    def __init__(self, vendor: str, url: str) -> None:
        self.vendor = vendor
        if vendor == "zendesk":
            self.http = httpx.Client(base_url=url, auth=ZENDESK_AUTH, timeout=10)
        else:
            token = "sk_test_crmsync_local" if vendor == "stripe" else "local-dev-token"
            self.http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
        self.properties: list[str] = []

    def _ok(self, response: httpx.Response) -> dict[str, Any]:
        response.raise_for_status()
        return response.json() if response.content else {}

    def create(self, n: int) -> str:
        email = f"inbound.{n}.{uuid.uuid4().hex[:6]}@example.com"
        if self.vendor == "hubspot":
            body = {"properties": {"email": email, "firstname": f"First{n}"}}
            return str(self._ok(self.http.post("/crm/v3/objects/contacts", json=body))["id"])
        if self.vendor == "stripe":
            return str(self._ok(self.http.post("/v1/customers", data={"email": email}))["id"])
        user = {"user": {"name": f"First{n} Last", "email": email}}
        return str(self._ok(self.http.post("/api/v2/users.json", json=user))["user"]["id"])

    def update(self, object_id: str, name: str) -> None:
        if self.vendor == "hubspot":
            body = {"properties": {"firstname": name}}
            self._ok(self.http.patch(f"/crm/v3/objects/contacts/{object_id}", json=body))
        elif self.vendor == "stripe":
            self._ok(self.http.post(f"/v1/customers/{object_id}", data={"name": name}))
        else:
            body = {"user": {"name": name}}
            self._ok(self.http.put(f"/api/v2/users/{object_id}.json", json=body))

    def delete(self, object_id: str) -> None:
        path = {
            "hubspot": f"/crm/v3/objects/contacts/{object_id}",
            "stripe": f"/v1/customers/{object_id}",
            "zendesk": f"/api/v2/users/{object_id}.json",
        }[self.vendor]
        self.http.delete(path).raise_for_status()

    def read(self, object_id: str, properties: list[str], archived: bool = False) -> Any:
        """The object exactly as the API returns it (HubSpot: with the inbound properties)."""
        if self.vendor == "hubspot":
            params = {"properties": ",".join(properties), "archived": str(archived).lower()}
            return self._ok(self.http.get(f"/crm/v3/objects/contacts/{object_id}", params=params))
        if self.vendor == "stripe":
            return self._ok(self.http.get(f"/v1/customers/{object_id}"))
        return self._ok(self.http.get(f"/api/v2/users/{object_id}.json"))["user"]

    def gdpr_delete(self, object_id: str) -> None:
        body = {"objectId": object_id}
        self._ok(self.http.post("/crm/v3/objects/contacts/gdpr-delete", json=body))


def updated_at(vendor: str, obj: dict[str, Any]) -> datetime | None:
    if vendor == "hubspot":
        return datetime.fromisoformat(obj["updatedAt"])
    if vendor == "zendesk":
        return datetime.fromisoformat(obj["updated_at"])
    return None  # a Stripe customer carries no time of change: the event's `created` is used


# --------------------------------------------------------------------------------------------
# Signed deliveries, made the way each vendor documents it
# --------------------------------------------------------------------------------------------


def signed(vendor: str, body: bytes, secret: str, url: str, at: float) -> dict[str, str]:
    if vendor == "hubspot":
        timestamp = str(int(at * 1000))
        message = b"POST" + url.encode() + body + timestamp.encode()
        digest = base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest())
        return {"X-HubSpot-Signature-v3": digest.decode(),
                "X-HubSpot-Request-Timestamp": timestamp}  # fmt: skip
    if vendor == "stripe":
        t = int(at)
        v1 = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return {"Stripe-Signature": f"t={t},v1={v1}"}
    timestamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = base64.b64encode(
        hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    )
    return {"X-Zendesk-Webhook-Signature": digest.decode(),
            "X-Zendesk-Webhook-Signature-Timestamp": timestamp}  # fmt: skip


def event_body(vendor: str, n: int, **customer: Any) -> bytes:
    """One delivery of the vendor's shape, about an object no one has."""
    if vendor == "hubspot":
        return orjson.dumps([{
            "eventId": 7_000 + n, "subscriptionType": "contact.propertyChange",
            "objectId": 9_000_000 + n, "occurredAt": int(time.time() * 1000),
            "propertyName": "firstname", "propertyValue": "X",
        }])  # fmt: skip
    if vendor == "stripe":
        created = customer.pop("created", int(time.time()))
        kind = customer.pop("type", "customer.updated")
        return orjson.dumps({
            "id": f"evt_test_{n}", "object": "event", "type": kind,
            "created": created,
            "data": {"object": {"id": "cus_test", "object": "customer", **customer}},
        })  # fmt: skip
    return orjson.dumps({
        "type": "zen:event-type:user.name_changed", "id": f"zen-event-{n}",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "detail": {"id": str(1_600_000_000_000 + n)}, "event": {"current": "X"},
    })  # fmt: skip


def rejected(target: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "crmsync_inbound_webhooks_rejected_total", {"target": target, "reason": reason}
    )
    return value or 0.0


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_each_targets_edits_reach_staging_by_webhook_as_its_api_returns_them(
    world: World, vendor: str
) -> None:
    target, api = VENDORS[vendor], world.api(vendor)
    with world.inbound(target, poll=False) as inbound:
        assert world.settings.webhook_url_of(target) in subscribe_webhooks(world.settings)
        properties = getattr(inbound.source, "properties", [])
        object_id = api.create(1)

        row = wait_until(lambda: world.staged(target, object_id), timeout=20, what="staging")
        current = api.read(object_id, properties)
        assert row["payload"] == current
        assert row["deleted"] is False
        expected_time = updated_at(vendor, current) or row["source_updated_at"]
        assert row["source_updated_at"] == expected_time
        if vendor == "hubspot":
            assert "crmsync_id" in current["properties"]  # the mapping's properties are read

        api.update(object_id, "Changed")
        wait_until(
            lambda: world.staged(target, object_id)["payload"] == api.read(object_id, properties),
            timeout=20, what="the update in staging",
        )  # fmt: skip
        before_delete = api.read(object_id, properties)
        world.sql(
            "insert into sync.identity_links (system, external_id, customer_id, method,"
            " pushed_hash) values (%s, %s, %s, 'created', 'hash-of-what-we-pushed')",
            (target, object_id, str(uuid.uuid4())),
        )
        api.delete(object_id)
        row = wait_until(
            lambda: (r := world.staged(target, object_id)) and r["deleted"] and r,
            timeout=20, what="the delete in staging",
        )  # fmt: skip
        if vendor == "stripe":  # the deleted event carries the customer as it was
            assert row["payload"] == before_delete
        else:
            assert row["payload"] == api.read(object_id, properties, archived=True)
        assert world.sql(
            "select archived_at is not null, pushed_hash from sync.identity_links"
            " where system = %s and external_id = %s",
            (target, object_id),
        ) == [(True, None)]
        assert all(processed for *_, processed in world.inbox(target))
        assert {source for _, _, source, _ in world.inbox(target)} == {"webhook"}


def test_stripe_events_of_our_own_updates_are_not_staged_but_edits_made_there_are(
    world: World,
) -> None:
    """Stripe names the idempotency key of the request behind each event: the events of our
    own updates (the adapter's client, its keys) stop at the inbox; our create (the record's
    first copy) and the edits made in Stripe go on to staging."""
    api = world.api("stripe")
    client = make_client(world.settings, "billing", load_plan(world.settings, "billing"))
    email = f"ours.{uuid.uuid4().hex[:6]}@example.com"

    async def our_write(external_id: str | None, name: str, key: str) -> str:
        upsert = Upsert("cust-ours", {"email": email, "name": name}, external_id, key)
        (outcome,) = await client.upsert([upsert])
        return str(outcome.external_id)

    def own_writes() -> float:
        sample = {"target": "billing"}
        return REGISTRY.get_sample_value("crmsync_inbound_own_writes_total", sample) or 0.0

    def drained(events: int) -> bool:
        inbox = world.inbox("billing")
        return len(inbox) == events and all(processed for *_, processed in inbox)

    own_before = own_writes()
    with world.inbound("billing", poll=False):
        subscribe_webhooks(world.settings)
        loop = asyncio.new_event_loop()
        try:
            stripe_id = loop.run_until_complete(our_write(None, "Ours", "k-1"))
            row = wait_until(lambda: world.staged("billing", stripe_id), what="our create")
            assert row["payload"]["name"] == "Ours"

            loop.run_until_complete(our_write(stripe_id, "Ours again", "k-2"))
            wait_until(lambda: drained(2), timeout=20, what="our update drained")
            assert world.staged("billing", stripe_id)["payload"]["name"] == "Ours"
            assert own_writes() - own_before == 1

            api.update(stripe_id, "Theirs")  # a person, in Stripe
            wait_until(lambda: world.staged("billing", stripe_id)["payload"]["name"] == "Theirs",
                       what="their edit")  # fmt: skip
            assert own_writes() - own_before == 1
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_forged_stale_and_replayed_webhooks_are_refused_and_change_nothing(
    world: World, vendor: str, caplog: pytest.LogCaptureFixture
) -> None:
    target = VENDORS[vendor]
    secret = SECRETS[target]
    url = world.settings.webhook_url_of(target)
    with world.inbound(target, drain=False, poll=False), httpx.Client(timeout=10) as http:

        def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
            return http.post(url, content=body, headers=headers)

        body, now = event_body(vendor, 1), time.time()
        before = {r: rejected(target, r) for r in ("bad_signature", "stale", "replayed")}

        forged = post(body, signed(vendor, body, "not-the-secret", url, now))
        assert (forged.status_code, forged.json()) == (401, {"error": "bad_signature"})
        assert post(body, {}).status_code == 401
        tampered = post(body + b"\n", signed(vendor, body, secret, url, now))
        assert tampered.status_code == 401
        stale = post(body, signed(vendor, body, secret, url, now - 400))
        assert (stale.status_code, stale.json()) == (401, {"error": "stale"})
        assert world.inbox(target) == []

        headers = signed(vendor, body, secret, url, now)
        accepted = post(body, headers)
        assert (accepted.status_code, accepted.json()) == (200, {"events": 1, "new": 1})
        replayed = post(body, headers)  # the same delivery, captured and sent again
        assert (replayed.status_code, replayed.json()) == (409, {"error": "replayed"})
        retried = post(body, signed(vendor, body, secret, url, now + 1))  # a vendor retry
        assert (retried.status_code, retried.json()) == (200, {"events": 1, "new": 0})
        assert len(world.inbox(target)) == 1

        garbage = b'{"not": "an event"}'
        unreadable = post(garbage, signed(vendor, garbage, secret, url, now))
        assert (unreadable.status_code, unreadable.json()) == (400, {"error": "unparseable"})
        assert len(world.inbox(target)) == 1

    assert rejected(target, "bad_signature") - before["bad_signature"] == 2
    assert rejected(target, "stale") - before["stale"] == 1
    assert rejected(target, "replayed") - before["replayed"] == 1
    assert secret not in caplog.text
    assert secret not in repr(world.settings)


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_without_webhooks_polling_brings_edits_and_its_cursor_survives_a_restart(
    world: World, vendor: str
) -> None:
    target, api = VENDORS[vendor], world.api(vendor)
    with world.inbound(target, fast_polling, receive=False):
        wait_until(lambda: world.cursor(target) is not None, timeout=10, what="a first cursor")
        first, second = api.create(1), api.create(2)
        wait_until(lambda: world.staged(target, first) and world.staged(target, second),
                   timeout=20, what="both polled")  # fmt: skip
        if vendor == "hubspot":  # the cursor passes the first edit once the search settled
            at = int(datetime.fromisoformat(api.read(second, [])["updatedAt"]).timestamp() * 1000)
            wait_until(lambda: int(world.cursor(target) or 0) >= at, timeout=10,
                       what="the cursor to pass the second edit")  # fmt: skip
        cursor = world.cursor(target)
    assert world.inbox(target) == [] or {s for _, _, s, _ in world.inbox(target)} == {"poll"}

    world.sql(f"delete from staging.{TABLES[target]} where external_id = %s", (first,))
    while_down = api.create(3)  # the inbound side is not running: only the cursor finds it
    with world.inbound(target, fast_polling, receive=False):
        wait_until(lambda: world.staged(target, while_down), timeout=20, what="the later edit")
    assert world.staged(target, first) is None  # not read again from the beginning
    assert world.cursor(target) != cursor


def test_an_older_object_never_replaces_a_newer_one_and_an_identical_one_changes_nothing(
    world: World,
) -> None:
    target, secret = "billing", SECRETS["billing"]
    url = world.settings.webhook_url_of(target)
    created = int(time.time())
    with world.inbound(target, poll=False), httpx.Client(timeout=10) as http:

        def deliver(n: int, **customer: Any) -> None:
            body = event_body("stripe", n, **customer)
            headers = signed("stripe", body, secret, url, time.time())
            assert http.post(url, content=body, headers=headers).status_code == 200
            wait_until(lambda: all(p for *_, p in world.inbox(target)), timeout=10,
                       what="the event staged")  # fmt: skip

        deliver(1, created=created, name="Newer")
        newer = world.staged(target, "cus_test")
        assert newer is not None and newer["payload"]["name"] == "Newer"

        deliver(2, created=created - 60, name="Older")  # arrives late
        assert world.staged(target, "cus_test") == newer

        deliver(3, created=created, name="Newer")  # the same object again, another event
        assert world.staged(target, "cus_test") == newer  # not even touched (xmin)

        deliver(4, created=created, name="Newest")  # same second, different: a later edit
        assert world.staged(target, "cus_test")["payload"]["name"] == "Newest"

        deliver(5, created=created + 1, name="Newest", type="customer.deleted")
        deleted = world.staged(target, "cus_test")
        assert deleted is not None and deleted["deleted"]
        deliver(6, created=created + 1, name="Edited")  # same second: before the deletion
        assert world.staged(target, "cus_test") == deleted


def test_an_acknowledged_delivery_left_undrained_is_drained_after_a_restart(
    world: World,
) -> None:
    target, api = "crm", world.api("hubspot")
    emulator = world.settings.target_url(target)
    with world.inbound(target, drain=False, poll=False):
        subscribe_webhooks(world.settings)
        contact = api.create(1)
        wait_until(lambda: httpx.get(f"{emulator}/_emulator/stats").json()["webhooks_delivered"],
                   timeout=20, what="an acknowledged delivery")  # fmt: skip
        # ...and then the process dies before its drain ran.
    pending = world.inbox(target)
    assert pending and all(processed is None for *_, processed in pending)
    assert world.staged(target, contact) is None

    with world.inbound(target, receive=False, poll=False):
        wait_until(lambda: world.staged(target, contact), timeout=20, what="the drained row")
        wait_until(lambda: all(p for *_, p in world.inbox(target)), timeout=10)


def test_a_contact_purged_from_hubspot_is_marked_deleted(world: World) -> None:
    target, api = "crm", world.api("hubspot")
    with world.inbound(target, poll=False):
        subscribe_webhooks(world.settings)
        contact = api.create(1)
        row = wait_until(lambda: world.staged(target, contact), timeout=20)
        api.gdpr_delete(contact)  # no archived object left to read
        gone = wait_until(
            lambda: (r := world.staged(target, contact)) and r["deleted"] and r, timeout=20
        )
    assert gone["payload"] == row["payload"]  # the last object known, now marked deleted
    assert gone["source_updated_at"] >= row["source_updated_at"]


def test_the_stack_subscribes_each_emulator_to_its_receiver(world: World) -> None:
    urls = subscribe_webhooks(world.settings)
    assert urls == [world.settings.webhook_url_of(t) for t in ("crm", "billing", "support")]
    for target, url in zip(("crm", "billing", "support"), urls, strict=True):
        listed = httpx.get(f"{world.settings.target_url(target)}/_emulator/webhooks").json()
        assert listed["subscriptions"] == [url]
    assert subscribe_webhooks(world.settings) == urls  # again: replaced, not added
    listed = httpx.get(f"{world.settings.target_url('billing')}/_emulator/webhooks").json()
    assert len(listed["subscriptions"]) == 1


def test_unused_path_is_not_served(world: World) -> None:
    with world.inbound("billing", drain=False, poll=False):
        url = world.settings.webhook_url_of("billing").replace("stripe", "hubspot")
        assert httpx.post(url, content=b"{}").status_code == 404


def test_the_adapter_process_runs_the_inbound_side_through_its_quota(
    world: World, tmp_path: Path
) -> None:
    """`crmsync adapter billing` as the stack runs it: a Stripe edit reaches staging by
    webhook, and the poll's requests count as the adapter's own API calls."""
    broker_port = free_port()
    broker = start_tansu(broker_port, tmp_path / "broker.log")
    settings = world.settings.model_copy(
        update={"kafka_bootstrap": f"127.0.0.1:{broker_port}", "partitions": 1,
                "billing_adapter_metrics_port": free_port()}
    )  # fmt: skip
    metrics_url = f"http://127.0.0.1:{settings.billing_adapter_metrics_port}/metrics"

    def metric(name: str) -> float:
        try:
            families = text_string_to_metric_families(httpx.get(metrics_url).text)
        except httpx.TransportError:
            return 0.0
        return sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == name and sample.labels.get("target") == "billing"
        )

    adapter = None
    try:
        wait_for_broker(settings.bootstrap)
        create_topics(settings)
        subscribe_webhooks(settings)
        with (tmp_path / "adapter.log").open("wb") as log:
            adapter = subprocess.Popen(
                [sys.executable, "-m", "crmsync.cli", "adapter", "billing"],
                env=settings_env(settings), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: metric("crmsync_inbound_receiver_up"), timeout=30, what="receiver")
        wait_until(lambda: world.cursor("billing") is not None, timeout=10, what="a first poll")
        assert metric("crmsync_adapter_api_calls_total") >= 1  # the poll, through the quota

        customer = world.api("stripe").create(1)
        wait_until(lambda: world.staged("billing", customer), timeout=20, what="staging")
        assert metric("crmsync_inbound_webhooks_accepted_total") >= 1
        assert metric("crmsync_inbound_staging_writes_total") >= 1
    finally:
        if adapter is not None:
            terminate(adapter.pid)
        terminate(broker.pid)
    assert b"whsec_" not in (tmp_path / "adapter.log").read_bytes()  # the secret is not logged
