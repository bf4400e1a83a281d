"""The Stripe emulator, driven through Stripe's official Python SDK, and crmsync's Stripe client
against it.

Every emulator here is a real ``python -m emulators.stripe`` process on a free loopback port
with its own SQLite file, so a test can kill it and start it again on the same data. The SDK
(stripe 16.1.0) is pointed at it with ``base_addresses={"api": url}`` and nothing else changed:
what passes here is what an integration written against api.stripe.com would see.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from aiohttp import web

from adapters.stripe import StripeClient
from adapters.target import Archive, Upsert
from crmsync.errors import PermanentError, RateLimited, TransientError
from tests.conftest import free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "sk_test_51EmulatorKey0000abcd"
LIVE_KEY = "sk_live_51EmulatorKey0000wxyz"
UNLIMITED = ["--test-reads", "100000", "--test-writes", "100000", "--live-reads", "100000",
             "--live-writes", "100000", "--search-rate", "100000"]  # fmt: skip
CUSTOMER_FIELDS = {
    "id", "object", "address", "balance", "created", "currency", "default_source", "delinquent",
    "description", "email", "invoice_prefix", "invoice_settings", "livemode", "metadata", "name",
    "next_invoice_sequence", "phone", "preferred_locales", "shipping", "tax_exempt", "test_clock",
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Running emulators
# --------------------------------------------------------------------------------------------


@dataclass
class Emulator:
    """One ``python -m emulators.stripe`` process and the SQLite file it keeps."""

    data: Path
    args: list[str]
    log: Path
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    clients: list[StripeClient] = field(default_factory=list)

    def start(self) -> Emulator:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "emulators.stripe", "--port", self.url.rsplit(":", 1)[1]]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--data", str(self.data), *self.args],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, timeout=20, what=f"the Stripe emulator at {self.url}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"emulator exited early:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/_emulator/stats", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def sdk(self, key: str = KEY, retries: int = 0) -> stripe.StripeClient:
        return stripe.StripeClient(
            key, base_addresses={"api": self.url}, max_network_retries=retries
        )

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/_emulator/{path}", **kwargs)
        response.raise_for_status()
        return response

    def stats(self) -> dict[str, int]:
        return self.control("GET", "stats").json()

    def inject(self, **faults: Any) -> None:
        self.control("POST", "faults", json=faults)

    def client(self, key: str = KEY) -> StripeClient:
        client = StripeClient(self.url, key, timeout=5)
        self.clients.append(client)
        return client


@pytest.fixture
def start_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(*args: str) -> Emulator:
        n = len(started)
        emulator = Emulator(tmp_path / f"stripe-{n}.sqlite", list(args), tmp_path / f"log-{n}")
        started.append(emulator)
        return emulator.start()

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="module")
def shared_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One process for the tests that do not restart it or depend on its real quotas."""
    folder = tmp_path_factory.mktemp("stripe")
    emulator = Emulator(folder / "stripe.sqlite", UNLIMITED, folder / "log").start()
    yield emulator
    emulator.stop()


@pytest.fixture
async def emulator(shared_emulator: Emulator) -> Any:
    shared_emulator.control("POST", "reset")
    yield shared_emulator
    for client in shared_emulator.clients:
        await client.aclose()
    shared_emulator.clients.clear()


@pytest.fixture
def sdk(emulator: Emulator) -> stripe.StripeClient:
    return emulator.sdk()


def create(sdk: stripe.StripeClient, options: dict[str, Any] | None = None, **params: Any) -> Any:
    return sdk.v1.customers.create(params=params, options=options or {})


def error_of(call: Callable[[], Any], kind: type[stripe.StripeError]) -> Any:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


# --------------------------------------------------------------------------------------------
# Customers through the SDK
# --------------------------------------------------------------------------------------------


def test_created_customer_has_stripes_fields_and_reads_back(sdk: stripe.StripeClient) -> None:
    before = int(time.time())
    created = create(
        sdk,
        email="ada@example.com",
        name="Ada Lovelace",
        phone="+442071234567",
        address={
            "line1": "12 St James's Sq",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB",
        },
        metadata={"crmsync_id": "c-1", "plan_tier": "pro"},
    )

    assert created.id.startswith("cus_") and len(created.id) == 18 and created.id[4:].isalnum()
    raw = created.to_dict()
    assert set(raw) == CUSTOMER_FIELDS
    assert raw["address"] == {
        "city": "London",
        "country": "GB",
        "line1": "12 St James's Sq",
        "line2": None,
        "postal_code": "SW1Y 4JH",
        "state": None,
    }
    assert raw["metadata"] == {"crmsync_id": "c-1", "plan_tier": "pro"}
    assert raw["balance"] == 0 and raw["currency"] is None
    assert raw["delinquent"] is False and raw["livemode"] is False
    assert raw["tax_exempt"] == "none" and raw["preferred_locales"] == []
    assert len(raw["invoice_prefix"]) == 8 and raw["invoice_prefix"].isupper()
    assert before <= raw["created"] <= time.time() + 1
    headers = created.last_response.headers
    assert headers["Request-Id"].startswith("req_") and len(headers["Request-Id"]) == 18
    assert headers["Stripe-Version"] == stripe.api_version
    assert sdk.v1.customers.retrieve(created.id).to_dict() == raw


def test_update_merges_hashes_and_empty_strings_unset(sdk: stripe.StripeClient) -> None:
    created = create(
        sdk,
        name="Ada",
        phone="+441234",
        address={"line1": "1 Main St", "city": "London"},
        metadata={"crmsync_id": "c-1", "plan_tier": "pro"},
    )

    updated = sdk.v1.customers.update(
        created.id,
        params={"name": "", "address": {"city": "Paris"}, "metadata": {"plan_tier": ""}},
    )

    assert updated.name is None
    assert updated.phone == "+441234"
    assert updated.address.line1 == "1 Main St" and updated.address.city == "Paris"
    assert updated.metadata.to_dict() == {"crmsync_id": "c-1"}
    cleared = sdk.v1.customers.update(created.id, params={"address": "", "metadata": ""})
    assert cleared.address is None and cleared.metadata.to_dict() == {}
    assert sdk.v1.customers.retrieve(created.id).to_dict() == cleared.to_dict()


def test_invalid_values_and_unknown_parameters_are_stripes_400s(
    emulator: Emulator, sdk: stripe.StripeClient
) -> None:
    bad_email = error_of(lambda: create(sdk, email="not-an-email"), stripe.InvalidRequestError)
    unknown = error_of(lambda: create(sdk, nickname="Ada"), stripe.InvalidRequestError)
    nested = error_of(lambda: create(sdk, address={"street": "x"}), stripe.InvalidRequestError)

    assert bad_email.http_status == 400
    assert (bad_email.code, bad_email.param) == ("email_invalid", "email")
    assert bad_email.user_message == "Invalid email address: not-an-email"
    assert bad_email.json_body["error"]["type"] == "invalid_request_error"
    assert bad_email.json_body["error"]["doc_url"].endswith("/error-codes/email-invalid")
    assert bad_email.headers["Stripe-Should-Retry"] == "false"
    assert (unknown.code, unknown.param) == ("parameter_unknown", "nickname")
    assert unknown.user_message == "Received unknown parameter: nickname"
    assert (nested.code, nested.param) == ("parameter_unknown", "address[street]")
    assert emulator.stats()["customers"] == 0


def test_missing_customer_is_a_404_resource_missing(sdk: stripe.StripeClient) -> None:
    error = error_of(
        lambda: sdk.v1.customers.retrieve("cus_NoSuchOne0000"), stripe.InvalidRequestError
    )

    assert (error.http_status, error.code, error.param) == (404, "resource_missing", "id")
    assert error.user_message == "No such customer: 'cus_NoSuchOne0000'"
    assert error.request_id == error.headers["Request-Id"]


def test_test_and_live_mode_customers_are_separate(emulator: Emulator) -> None:
    test_customer = create(emulator.sdk(), email="t@example.com")

    live = emulator.sdk(LIVE_KEY)
    error = error_of(
        lambda: live.v1.customers.retrieve(test_customer.id), stripe.InvalidRequestError
    )

    assert error.http_status == 404
    assert "a similar object exists in test mode, but a live mode key" in error.user_message
    assert live.v1.customers.list().data == []
    assert create(live, email="l@example.com").livemode is True


def test_deleted_customer_reads_as_stub_and_cannot_be_updated(
    emulator: Emulator, sdk: stripe.StripeClient
) -> None:
    created = create(sdk, email="gone@example.com")

    deleted = sdk.v1.customers.delete(created.id)

    assert deleted.to_dict() == {"id": created.id, "object": "customer", "deleted": True}
    assert sdk.v1.customers.retrieve(created.id).to_dict() == deleted.to_dict()
    update = error_of(
        lambda: sdk.v1.customers.update(created.id, params={"name": "x"}),
        stripe.InvalidRequestError,
    )
    again = error_of(lambda: sdk.v1.customers.delete(created.id), stripe.InvalidRequestError)
    assert (update.http_status, update.code) == (404, "resource_missing")
    assert (again.http_status, again.code) == (404, "resource_missing")
    assert sdk.v1.customers.list().data == []
    assert emulator.stats()["deleted_customers"] == 1


# --------------------------------------------------------------------------------------------
# Lists and search
# --------------------------------------------------------------------------------------------


def test_list_runs_newest_first_and_auto_paginates_past_100(sdk: stripe.StripeClient) -> None:
    created = [create(sdk, email=f"user{n}@example.com").id for n in range(130)]

    first = sdk.v1.customers.list(params={"limit": 100})
    everyone = [customer.id for customer in first.auto_paging_iter()]

    assert first.object == "list" and first.url == "/v1/customers" and first.has_more is True
    assert len(first.data) == 100
    assert everyone == created[::-1]
    assert len(sdk.v1.customers.list().data) == 10  # Stripe's default page size
    too_many = error_of(
        lambda: sdk.v1.customers.list(params={"limit": 101}), stripe.InvalidRequestError
    )
    assert (too_many.param, too_many.http_status) == ("limit", 400)


def test_list_pages_both_ways_and_filters_by_email(sdk: stripe.StripeClient) -> None:
    ids = [create(sdk, email=f"user{n}@example.com").id for n in range(5)]  # ids[4] is newest

    older = sdk.v1.customers.list(params={"starting_after": ids[3], "limit": 2})
    newer = sdk.v1.customers.list(params={"ending_before": ids[1], "limit": 2})
    by_email = sdk.v1.customers.list(params={"email": "user2@example.com"})

    assert [c.id for c in older.data] == [ids[2], ids[1]] and older.has_more is True
    assert [c.id for c in newer.data] == [ids[3], ids[2]] and newer.has_more is True
    assert [c.id for c in by_email.data] == [ids[2]]
    # The list's email filter is case-sensitive, as Stripe documents it.
    assert sdk.v1.customers.list(params={"email": "USER2@example.com"}).data == []


def test_search_by_email_and_metadata_with_pages(sdk: stripe.StripeClient) -> None:
    for n in range(5):
        create(sdk, email=f"u{n}@example.com", metadata={"crmsync_id": f"c-{n}", "tier": "pro"})
    create(sdk, email="other@example.com", metadata={"tier": "free"})

    by_email = sdk.v1.customers.search(params={"query": "email:'U3@EXAMPLE.COM'"})
    both = sdk.v1.customers.search(
        params={"query": "metadata['crmsync_id']:'c-1' AND email:'u1@example.com'"}
    )
    page = sdk.v1.customers.search(params={"query": "metadata['tier']:'pro'", "limit": 2})
    pros = [customer.email for customer in page.auto_paging_iter()]

    assert by_email.object == "search_result" and by_email.url == "/v1/customers/search"
    assert [c.email for c in by_email.data] == ["u3@example.com"]
    assert [c.metadata["crmsync_id"] for c in both.data] == ["c-1"]
    assert page.has_more is True and isinstance(page.next_page, str)
    assert pros == [f"u{n}@example.com" for n in range(4, -1, -1)]
    mixed = error_of(
        lambda: sdk.v1.customers.search(
            params={"query": "email:'a@b.co' AND name:'x' OR name:'y'"}
        ),
        stripe.InvalidRequestError,
    )
    assert (mixed.http_status, mixed.param) == (400, "query")


# --------------------------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_first_response(
    emulator: Emulator, sdk: stripe.StripeClient
) -> None:
    first = create(sdk, {"idempotency_key": "order-1"}, email="ada@example.com")
    replay = create(sdk, {"idempotency_key": "order-1"}, email="ada@example.com")

    assert replay.to_dict() == first.to_dict()
    assert replay.last_response.headers["Idempotent-Replayed"] == "true"
    assert replay.last_response.headers["Original-Request"] == first.last_response.request_id
    assert replay.last_response.request_id != first.last_response.request_id
    assert "Idempotent-Replayed" not in first.last_response.headers
    stats = emulator.stats()
    assert (stats["customers"], stats["creates"], stats["idempotent_replays"]) == (1, 1, 1)


def test_same_key_with_other_parameters_is_an_idempotency_error(
    emulator: Emulator, sdk: stripe.StripeClient
) -> None:
    create(sdk, {"idempotency_key": "order-2"}, email="ada@example.com")

    error = error_of(
        lambda: create(sdk, {"idempotency_key": "order-2"}, email="grace@example.com"),
        stripe.IdempotencyError,
    )

    assert error.http_status == 400
    assert error.json_body["error"]["type"] == "idempotency_error"
    assert error.user_message.startswith(
        "Keys for idempotent requests can only be used with the same parameters they were"
        " first used with. Try using a key other than 'order-2'"
    )
    assert emulator.stats()["customers"] == 1
    # Keys belong to an API key: the same key under another API key is a new request.
    other = create(emulator.sdk(LIVE_KEY), {"idempotency_key": "order-2"}, email="g@example.com")
    assert other.livemode is True


def test_results_are_saved_only_once_the_endpoint_ran(sdk: stripe.StripeClient) -> None:
    # Refused by parameter validation: nothing saved, so the key may carry a corrected request.
    bad = {"idempotency_key": "k-1"}
    error_of(lambda: create(sdk, bad, email="not-an-email"), stripe.InvalidRequestError)
    fixed = create(sdk, bad, email="ada@example.com")
    assert "Idempotent-Replayed" not in fixed.last_response.headers

    # A missing customer is the endpoint's own answer: saved, and replayed as it was.
    def update_missing() -> Any:
        return sdk.v1.customers.update(
            "cus_NoSuchOne0000", params={"name": "x"}, options={"idempotency_key": "k-2"}
        )

    first = error_of(update_missing, stripe.InvalidRequestError)
    second = error_of(update_missing, stripe.InvalidRequestError)
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json_body == first.json_body and second.code == "resource_missing"


# --------------------------------------------------------------------------------------------
# Authentication, rate limits, faults
# --------------------------------------------------------------------------------------------


def test_only_the_configured_key_is_accepted_and_never_printed(
    start_emulator: Callable[..., Emulator],
) -> None:
    secret = "sk_test_TheRightOne0000RIGHT"
    emulator = start_emulator(*UNLIMITED, "--token", secret)

    wrong = error_of(
        lambda: emulator.sdk("sk_test_SomeoneElse000abcd").v1.customers.list(),
        stripe.AuthenticationError,
    )
    basic = httpx.get(f"{emulator.url}/v1/customers", auth=(secret, ""))
    missing = httpx.get(f"{emulator.url}/v1/customers")
    publishable = httpx.get(f"{emulator.url}/v1/customers", auth=("pk_test_abc", ""))

    assert wrong.http_status == 401
    assert wrong.json_body == {
        "error": {
            "message": "Invalid API Key provided: sk_test_" + "*" * 14 + "abcd",
            "type": "invalid_request_error",
        }
    }
    assert emulator.sdk(secret).v1.customers.list().data == []
    assert basic.status_code == 200 and basic.json()["object"] == "list"
    assert missing.status_code == 401
    assert missing.json()["error"]["message"].startswith("You did not provide an API key.")
    assert publishable.status_code == 401
    emulator.stop()
    assert secret not in emulator.log.read_text()


def test_requests_over_stripes_test_mode_limits_get_its_429(
    start_emulator: Callable[..., Emulator],
) -> None:
    emulator = start_emulator()  # Stripe's defaults: 25 reads/s in test mode, 100 live, search 20
    api = emulator.sdk().v1.customers

    started = time.monotonic()
    for _ in range(25):
        api.list()
    error = error_of(api.list, stripe.RateLimitError)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, "the 26 reads must land inside one second for this test to mean much"
    assert error.http_status == 429
    assert error.json_body == {
        "error": {
            "code": "rate_limit",
            "doc_url": "https://stripe.com/docs/error-codes/rate-limit",
            "message": "Testmode request rate limit exceeded, the rate limits in testmode are"
            " lower than livemode. You can learn more about rate limits here"
            " https://stripe.com/docs/rate-limits.",
            "type": "invalid_request_error",
        }
    }
    assert error.headers["Stripe-Rate-Limited-Reason"] == "global-rate"
    assert "Stripe-Should-Retry" not in error.headers
    live = emulator.sdk(LIVE_KEY).v1.customers
    searches = [live.search(params={"query": "email:'a@b.co'"}) for _ in range(20)]
    refused = error_of(
        lambda: live.search(params={"query": "email:'a@b.co'"}), stripe.RateLimitError
    )
    assert len(searches) == 20
    assert refused.headers["Stripe-Rate-Limited-Reason"] == "endpoint-rate"
    assert "Request rate limit exceeded." in refused.user_message
    assert emulator.stats()["rate_limited"] == 2

    def admitted() -> bool:
        try:
            return api.list() is not None
        except stripe.RateLimitError:
            return False

    wait_until(admitted, timeout=5, interval=0.05, what="the one-second window to roll on")


def test_injected_errors_reach_the_sdk_as_api_errors(
    emulator: Emulator, sdk: stripe.StripeClient
) -> None:
    emulator.inject(error_rate=1.0, error_status=500)
    error = error_of(sdk.v1.customers.list, stripe.APIError)
    emulator.inject(outage=True)
    outage = error_of(sdk.v1.customers.list, stripe.APIError)
    emulator.inject(throttle=True)
    throttled = error_of(sdk.v1.customers.list, stripe.RateLimitError)

    assert error.http_status == 500
    assert error.json_body["error"]["type"] == "api_error"
    assert error.headers["Stripe-Should-Retry"] == "true"
    assert outage.http_status == 503
    assert throttled.http_status == 429
    assert emulator.stats()["faults_injected"] == 3


def test_the_sdk_retries_a_passing_fault_into_exactly_one_customer(emulator: Emulator) -> None:
    emulator.inject(error_rate=1.0, error_status=503, for_seconds=0.3)

    created = create(emulator.sdk(retries=5), email="ada@example.com")

    stats = emulator.stats()
    assert stats["faults_injected"] >= 1
    assert (stats["customers"], stats["creates"]) == (1, 1)
    assert created.last_response.headers["Idempotency-Key"]


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


def test_customers_events_and_idempotency_keys_survive_a_crash(
    start_emulator: Callable[..., Emulator],
) -> None:
    emulator = start_emulator(*UNLIMITED)
    sdk = emulator.sdk()
    first = create(sdk, {"idempotency_key": "durable-1"}, email="ada@example.com")
    sdk.v1.customers.update(first.id, params={"metadata": {"tier": "pro"}})
    before = sdk.v1.customers.retrieve(first.id).to_dict()

    emulator.kill()
    emulator.start()
    sdk = emulator.sdk()

    assert sdk.v1.customers.retrieve(first.id).to_dict() == before
    replay = create(sdk, {"idempotency_key": "durable-1"}, email="ada@example.com")
    assert replay.id == first.id
    assert replay.last_response.headers["Idempotent-Replayed"] == "true"
    assert [e.type for e in sdk.v1.events.list().data] == ["customer.updated", "customer.created"]
    assert emulator.stats()["customers"] == 1
    assert [c.id for c in sdk.v1.customers.search(params={"query": "metadata['tier']:'pro'"})] == [
        first.id
    ]


# --------------------------------------------------------------------------------------------
# Events and webhooks
# --------------------------------------------------------------------------------------------


def test_every_write_is_an_event_in_v1_events(sdk: stripe.StripeClient) -> None:
    created = create(
        sdk, {"idempotency_key": "ev-1"}, email="ada@example.com", metadata={"tier": "free"}
    )
    sdk.v1.customers.update(created.id, params={"metadata": {"tier": "pro"}, "name": "Ada"})
    sdk.v1.customers.update(created.id, params={"name": "Ada"})  # no change: no event
    sdk.v1.customers.delete(created.id)

    events = sdk.v1.events.list().data
    updated = sdk.v1.events.list(params={"type": "customer.updated"}).data
    recent = sdk.v1.events.list(params={"created": {"gte": created.created}, "limit": 1})

    assert [e.type for e in events] == ["customer.deleted", "customer.updated", "customer.created"]
    created_event = events[2]
    assert created_event.id.startswith("evt_")
    assert created_event.data.object.id == created.id
    assert created_event.request.idempotency_key == "ev-1"
    assert created_event.request.id == created.last_response.request_id
    assert created_event.api_version == stripe.api_version
    assert [e.id for e in updated] == [events[1].id]
    assert updated[0].data.previous_attributes.to_dict() == {
        "metadata": {"tier": "free"},
        "name": None,
    }
    assert events[0].data.object.email == "ada@example.com"
    assert recent.has_more is True and [e.id for e in recent.data] == [events[0].id]
    assert sdk.v1.events.retrieve(events[2].id).type == "customer.created"


async def test_webhooks_carry_a_signature_the_sdk_verifies(emulator: Emulator) -> None:
    secret = "whsec_emulator_test_secret"
    received: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put((await request.read(), request.headers["Stripe-Signature"]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with httpx.AsyncClient() as control:
            subscription = {"url": f"http://127.0.0.1:{port}/hooks", "secret": secret}
            response = await control.post(f"{emulator.url}/_emulator/webhooks", json=subscription)
            assert response.status_code == 201
        customer = await emulator.sdk().v1.customers.create_async(params={"email": "a@b.co"})
        payload, signature = await asyncio.wait_for(received.get(), timeout=10)
    finally:
        await runner.cleanup()

    event = stripe.Webhook.construct_event(payload, signature, secret)
    assert event.type == "customer.created"
    assert event.data.object.id == customer.id
    assert event.pending_webhooks == 1
    assert signature.startswith("t=") and ",v1=" in signature
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.replace(b"a@b.co", b"x@b.co"), signature, secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_another_secret")


# --------------------------------------------------------------------------------------------
# crmsync's Stripe client (adapters.stripe) against the emulator
# --------------------------------------------------------------------------------------------


def upsert(
    customer_id: str, external_id: str | None = None, key: str = "w1", **props: Any
) -> Upsert:
    properties = {"metadata.crmsync_id": customer_id, **props}
    return Upsert(customer_id, properties, external_id, idempotency_key=key)


async def test_client_creates_then_updates_one_customer(emulator: Emulator) -> None:
    client = emulator.client()
    item = upsert(
        "c-1", email="ada@example.com", **{"address.city": "London", "metadata.plan_tier": "pro"}
    )

    (created,) = await client.upsert([item])
    changes = {"address.city": "Paris", "metadata.plan_tier": None, "name": "Ada Lovelace"}
    (updated,) = await client.upsert([upsert("c-1", created.external_id, "w2", **changes)])

    assert created.error is None and created.external_id is not None
    assert updated.external_id == created.external_id and updated.error is None
    customer = emulator.sdk().v1.customers.retrieve(created.external_id)
    assert customer.address.city == "Paris" and customer.name == "Ada Lovelace"
    assert customer.metadata.to_dict() == {"crmsync_id": "c-1"}
    assert customer.email == "ada@example.com"
    assert client.vendor == "stripe" and client.max_batch == 1


async def test_client_replayed_create_returns_the_same_customer(emulator: Emulator) -> None:
    client = emulator.client()
    item = upsert("c-2", email="grace@example.com")

    first = await client.upsert([item])
    replay = await client.upsert([item])  # a crash before the link was recorded, then redelivery

    assert replay == first
    stats = emulator.stats()
    assert (stats["customers"], stats["creates"], stats["idempotent_replays"]) == (1, 1, 1)


async def test_client_create_with_newer_values_updates_the_customer_it_made(
    emulator: Emulator,
) -> None:
    client = emulator.client()
    (first,) = await client.upsert([upsert("c-3", email="old@example.com")])

    # The link was lost and the change coalesced with a later one: same create key, new values.
    (second,) = await client.upsert([upsert("c-3", key="w2", email="new@example.com")])

    assert second.external_id == first.external_id and second.error is None
    assert emulator.sdk().v1.customers.retrieve(first.external_id).email == "new@example.com"
    stats = emulator.stats()
    assert (stats["customers"], stats["creates"], stats["updates"]) == (1, 1, 1)


async def test_client_retries_later_rather_than_duplicate_while_search_trails(
    start_emulator: Callable[..., Emulator],
) -> None:
    emulator = start_emulator(*UNLIMITED, "--search-lag", "60")
    client = emulator.client()
    try:
        await client.upsert([upsert("c-4", email="old@example.com")])
        with pytest.raises(TransientError, match="not searchable"):
            await client.upsert([upsert("c-4", key="w2", email="new@example.com")])
    finally:
        await client.aclose()

    assert emulator.stats()["customers"] == 1


async def test_client_replaces_a_customer_deleted_in_stripe_exactly_once(
    emulator: Emulator,
) -> None:
    client = emulator.client()
    (first,) = await client.upsert([upsert("c-5", email="ada@example.com")])
    emulator.sdk().v1.customers.delete(first.external_id)

    item = upsert("c-5", first.external_id, "w2", name="Ada")
    (replaced,) = await client.upsert([item])
    (again,) = await client.upsert([item])  # redelivered before the new link was recorded

    assert replaced.external_id not in (None, first.external_id)
    assert again.external_id == replaced.external_id
    replacement = emulator.sdk().v1.customers.retrieve(replaced.external_id)
    assert replacement.metadata["crmsync_id"] == "c-5" and replacement.name == "Ada"
    assert emulator.stats()["customers"] == 1


async def test_client_reports_a_refused_record_in_its_outcome(emulator: Emulator) -> None:
    client = emulator.client()

    (outcome,) = await client.upsert([upsert("c-6", email="not-an-email")])

    assert outcome.external_id is None
    assert outcome.error is not None and '"email_invalid"' in outcome.error
    assert emulator.stats()["customers"] == 0


async def test_client_archive_deletes_and_already_gone_is_success(emulator: Emulator) -> None:
    client = emulator.client()
    (created,) = await client.upsert([upsert("c-7", email="ada@example.com")])
    archive = Archive("c-7", str(created.external_id), idempotency_key="a1")

    assert await client.archive([archive]) == await client.archive([archive])
    assert emulator.stats()["deleted_customers"] == 1
    assert emulator.stats()["deletes"] == 1


async def test_client_maps_stripes_failures_onto_the_error_tree(emulator: Emulator) -> None:
    client = emulator.client()
    item = upsert("c-8", email="ada@example.com")

    emulator.inject(throttle=True)
    with pytest.raises(RateLimited) as limited:
        await client.upsert([item])
    emulator.inject(error_rate=1.0, error_status=500)
    with pytest.raises(TransientError) as failed:
        await client.upsert([item])
    emulator.inject(outage=True)
    with pytest.raises(TransientError):
        await client.upsert([item])
    emulator.inject()
    with pytest.raises(PermanentError) as refused:
        await emulator.client("not-a-stripe-key").upsert([item])

    assert limited.value.retry_after is None  # Stripe sends no Retry-After
    assert failed.value.status == 500
    assert refused.value.status == 401 and "Invalid API Key provided" in refused.value.body
    unreachable = StripeClient(f"http://127.0.0.1:{free_port()}", KEY, timeout=2)
    with pytest.raises(TransientError, match="connection failed"):
        await unreachable.upsert([item])
    await unreachable.aclose()
    assert client.quotas() == []
    assert KEY not in repr(client) and emulator.url in repr(client)


def test_basic_auth_header_is_what_stripe_docs_show(emulator: Emulator) -> None:
    token = base64.b64encode(f"{KEY}:".encode()).decode()
    response = httpx.post(
        f"{emulator.url}/v1/customers",
        headers={"Authorization": f"Basic {token}"},
        data={"email": "ada@example.com", "address[line1]": "1 Main St", "metadata[k]": "v"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["address"]["line1"] == "1 Main St" and body["metadata"] == {"k": "v"}
