"""crmsync's HubSpot client (adapters.hubspot.HubSpotClient) against the HubSpot emulator over
real HTTP: what the adapter runtime gets back for writes, refusals, limits and failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest

from adapters.hubspot import HubSpotClient, encode_value
from adapters.target import Archive, Outcome, Quota, TargetClient, Upsert
from crmsync.errors import PermanentError, RateLimited, TransientError
from tests.conftest import free_port, wait_until
from tests.integration.test_hubspot_emulator import TOKEN, HubSpotProcess, launch_all

ENCODED = (
    "email,firstname,lastname,date_of_birth,crmsync_consent_email,crmsync_do_not_contact,"
    "crmsync_score,crmsync_balance,crmsync_rating,crmsync_tags"
)


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, HubSpotProcess]]:
    folder = tmp_path_factory.mktemp("hubspot-client")
    yield from launch_all(
        {
            "shared": HubSpotProcess(folder / "shared.sqlite"),
            "daily": HubSpotProcess(folder / "daily.sqlite", ("--daily-limit", "2")),
            "token": HubSpotProcess(folder / "token.sqlite", ("--token", "the-right-token")),
        }
    )


@pytest.fixture
def emulator(emulators: dict[str, HubSpotProcess]) -> HubSpotProcess:
    emulators["shared"].reset()
    return emulators["shared"]


@pytest.fixture
async def client(emulator: HubSpotProcess) -> AsyncIterator[HubSpotClient]:
    client = HubSpotClient(emulator.base_url, TOKEN)
    yield client
    await client.aclose()


def customer(n: int, **properties: Any) -> Upsert:
    key = f"cust-{n}"
    values = {"crmsync_id": key, "email": f"c{n}@example.com", **properties}
    return Upsert(customer_id=key, properties=values, external_id=None, idempotency_key=f"k-{n}")


def contact(emulator: HubSpotProcess, contact_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{emulator.base_url}/crm/v3/objects/contacts/{contact_id}",
        params={"properties": ENCODED},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.raise_for_status()
    return response.json()["properties"]


def by_customer(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {outcome.customer_id: outcome for outcome in outcomes}


async def test_the_client_is_a_target_client_that_never_shows_its_token() -> None:
    client: TargetClient = HubSpotClient("http://127.0.0.1:1", "pat-na1-secret")
    await client.aclose()

    assert (client.vendor, client.max_batch) == ("hubspot", 100)
    assert "pat-na1-secret" not in repr(client)


async def test_upsert_creates_then_updates_with_values_encoded_the_hubspot_way(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    first = customer(
        1,
        firstname="Ada",
        date_of_birth=date(1815, 12, 10),
        crmsync_consent_email=True,
        crmsync_do_not_contact=False,
        crmsync_score=42,
        crmsync_balance=Decimal("12.50"),
        crmsync_rating=1e-7,
        crmsync_tags=["vip", "beta"],
    )

    (created,) = await client.upsert([first])
    change = {"crmsync_id": "cust-1", "firstname": None, "lastname": "Lovelace"}
    (updated,) = await client.upsert(
        [Upsert("cust-1", change, external_id=created.external_id, idempotency_key="k-2")]
    )

    assert created.error is None and created.external_id is not None
    assert updated == Outcome("cust-1", external_id=created.external_id)
    stored = contact(emulator, created.external_id)
    assert {name: stored[name] for name in ENCODED.split(",")} == {
        "email": "c1@example.com",
        "firstname": None,  # None cleared it
        "lastname": "Lovelace",
        "date_of_birth": "1815-12-10",
        "crmsync_consent_email": "true",
        "crmsync_do_not_contact": "false",
        "crmsync_score": "42",
        "crmsync_balance": "12.50",
        "crmsync_rating": "0.0000001",
        "crmsync_tags": "vip;beta",
    }
    stats = emulator.stats()
    assert (stats["contacts"], stats["creates"], stats["updates"]) == (1, 1, 1)


async def test_replayed_upserts_create_no_duplicate(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    batch = [customer(n, firstname=f"C{n}") for n in range(100)]

    first = await client.upsert(batch)
    replays = [await client.upsert(batch) for _ in range(2)]

    assert len(first) == 100
    assert all(outcome.error is None for outcome in first)
    for replay in replays:
        assert by_customer(replay) == by_customer(first)
    stats = emulator.stats()
    assert (stats["contacts"], stats["creates"], stats["updates"]) == (100, 100, 0)


async def test_a_refused_record_is_its_own_outcome_and_the_others_are_written(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    (taken,) = await client.upsert([customer(0)])
    batch = [
        customer(1),
        customer(2, email="not-an-email"),
        customer(3, email="c0@example.com"),  # cust-0's email: HubSpot's 409 conflict
        customer(4),
    ]

    outcomes = by_customer(await client.upsert(batch))

    assert outcomes["cust-1"].external_id is not None and outcomes["cust-1"].error is None
    assert outcomes["cust-4"].external_id is not None and outcomes["cust-4"].error is None
    invalid = json.loads(outcomes["cust-2"].error or "")
    assert invalid["category"] == "VALIDATION_ERROR"
    assert '"error":"INVALID_EMAIL"' in invalid["message"]
    conflict = json.loads(outcomes["cust-3"].error or "")
    assert conflict["category"] == "CONFLICT"
    assert conflict["message"] == f"Contact already exists. Existing ID: {taken.external_id}"
    assert outcomes["cust-2"].external_id is None
    assert emulator.stats()["contacts"] == 3


async def test_an_adopted_contact_is_updated_by_its_id_and_nothing_is_created(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    made = httpx.post(
        f"{emulator.base_url}/crm/v3/objects/contacts",
        json={"properties": {"email": "ada@home.example", "firstname": "Ada"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    hand_made = made.json()["id"]
    adopt = Upsert("cust-1", customer(1, lastname="Lovelace").properties, hand_made, "k-1",
                   adopt=True)  # fmt: skip
    gone = Upsert("cust-3", customer(3).properties, "999999", "k-3", adopt=True)

    outcomes = by_customer(await client.upsert([customer(2), adopt, gone]))
    replayed = await client.upsert([adopt])

    assert outcomes["cust-1"] == Outcome("cust-1", external_id=hand_made)
    assert replayed == [Outcome("cust-1", external_id=hand_made)]
    assert outcomes["cust-2"].error is None and outcomes["cust-2"].external_id != hand_made
    assert outcomes["cust-3"].external_id is None
    assert json.loads(outcomes["cust-3"].error or "")["category"] == "OBJECT_NOT_FOUND"
    stored = contact(emulator, hand_made)
    assert (stored["email"], stored["firstname"]) == ("c1@example.com", "Ada")
    by_key = httpx.get(
        f"{emulator.base_url}/crm/v3/objects/contacts/cust-1",
        params={"idProperty": "crmsync_id"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert by_key.json()["id"] == hand_made
    stats = emulator.stats()
    assert (stats["contacts"], stats["creates"]) == (2, 2)  # the hand-made contact and cust-2


async def test_an_item_without_its_id_property_is_refused_without_a_request(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    keyless = Upsert("cust-9", {"email": "c9@example.com"}, None, "k-9")

    (outcome,) = await client.upsert([keyless])

    assert outcome == Outcome("cust-9", error="no crmsync_id to upsert by")
    assert emulator.stats()["requests"] == 0


async def test_archive_succeeds_for_live_already_archived_and_unknown_records(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    written = await client.upsert([customer(1), customer(2)])
    archives = [Archive(o.customer_id, o.external_id or "", f"a-{o.customer_id}") for o in written]
    archives.append(Archive("cust-unknown", "99999999", "a-unknown"))

    first = await client.archive(archives)
    again = await client.archive(archives[:1])

    assert by_customer(first) == {
        a.customer_id: Outcome(a.customer_id, external_id=a.external_id) for a in archives
    }
    assert again == [Outcome("cust-1", external_id=archives[0].external_id)]
    stats = emulator.stats()
    assert (stats["contacts"], stats["archived"], stats["archives"]) == (0, 2, 2)
    assert await client.archive([]) == []


async def test_a_429_is_rate_limited_for_hubspots_window(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    emulator.control("POST", "faults", json={"throttle": True})

    with pytest.raises(RateLimited) as limited:
        await client.upsert([customer(1)])

    assert limited.value.retry_after == 10.0  # the rolling window's length; HubSpot sends none
    assert "TEN_SECONDLY_ROLLING" in limited.value.body
    assert client.quotas()[0].remaining == 0
    assert emulator.stats()["contacts"] == 0


async def test_the_daily_limit_is_rate_limited_until_midnight(
    emulators: dict[str, HubSpotProcess],
) -> None:
    emulator = emulators["daily"]  # --daily-limit 2
    emulator.reset()
    client = HubSpotClient(emulator.base_url, TOKEN)
    try:
        await client.upsert([customer(1)])
        await client.upsert([customer(2)])
        with pytest.raises(RateLimited) as limited:
            await client.upsert([customer(3)])
    finally:
        await client.aclose()

    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert limited.value.retry_after is not None
    assert abs(limited.value.retry_after - (midnight - now).total_seconds()) < 60
    assert client.quotas()[1] == Quota(limit=2, remaining=0, window=86_400.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_transient(
    emulator: HubSpotProcess, client: HubSpotClient, status: int
) -> None:
    emulator.control("POST", "faults", json={"error_rate": 1.0, "error_status": status})

    with pytest.raises(TransientError) as failed:
        await client.upsert([customer(1)])
    with pytest.raises(TransientError):
        await client.archive([Archive("cust-1", "1001", "a-1")])

    assert failed.value.status == status


async def test_outages_timeouts_and_dead_servers_are_transient(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    emulator.control("POST", "faults", json={"outage": True})
    with pytest.raises(TransientError) as outage:
        await client.upsert([customer(1)])

    emulator.control("POST", "faults", json={"latency_ms": 600})
    impatient = HubSpotClient(emulator.base_url, TOKEN, timeout=0.25)
    dead = HubSpotClient(f"http://127.0.0.1:{free_port()}", TOKEN)
    try:
        with pytest.raises(TransientError, match="timeout"):
            await impatient.upsert([customer(1)])
        with pytest.raises(TransientError, match="connection failed"):
            await dead.archive([Archive("cust-1", "1001", "a-1")])
    finally:
        await impatient.aclose()
        await dead.aclose()

    assert outage.value.status == 503
    # The request that timed out was still applied: why a retry must be an idempotent upsert.
    wait_until(lambda: emulator.stats()["contacts"] == 1, timeout=10, what="the late write")


async def test_a_request_hubspot_refuses_whole_is_permanent(
    emulator: HubSpotProcess, client: HubSpotClient
) -> None:
    twice = [customer(1), customer(1, firstname="Again")]

    with pytest.raises(PermanentError) as refused:
        await client.upsert(twice)

    assert refused.value.status == 400
    assert "Duplicate IDs found in batch input" in refused.value.body
    assert emulator.stats()["contacts"] == 0


async def test_a_wrong_token_is_permanent(emulators: dict[str, HubSpotProcess]) -> None:
    client = HubSpotClient(emulators["token"].base_url, "a-wrong-token")  # --token the-right-token
    try:
        with pytest.raises(PermanentError) as refused:
            await client.upsert([customer(1)])
    finally:
        await client.aclose()

    assert refused.value.status == 401
    assert "a-wrong-token" not in repr(client)


async def test_quotas_are_read_from_the_latest_response(client: HubSpotClient) -> None:
    assert client.quotas() == []

    await client.upsert([customer(1)])
    after_one = client.quotas()
    await client.archive([Archive("cust-1", "1", "a-1")])

    assert after_one == [
        Quota(limit=100, remaining=99, window=10.0),
        Quota(limit=250_000, remaining=249_999, window=86_400.0),
    ]
    assert [quota.remaining for quota in client.quotas()] == [98, 249_998]


async def test_the_client_writes_companies_too(emulator: HubSpotProcess) -> None:
    client = HubSpotClient(emulator.base_url, TOKEN, object_type="companies")
    acme = Upsert(
        "cust-1", {"crmsync_id": "cust-1", "name": "Acme", "domain": "acme.io"}, None, "k"
    )
    try:
        (created,) = await client.upsert([acme])
        (replayed,) = await client.upsert([acme])
        (archived,) = await client.archive([Archive("cust-1", created.external_id or "", "a")])
    finally:
        await client.aclose()

    assert replayed == created == archived
    stats = emulator.stats()
    assert (stats["companies"], stats["companies_archived"], stats["contacts"]) == (0, 1, 0)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (3.5, "3.5"),
        (1e21, "1000000000000000000000"),
        (Decimal("0.10"), "0.10"),
        (date(2024, 2, 29), "2024-02-29"),
        (datetime(2024, 2, 29, 23, 30, tzinfo=timezone(timedelta(hours=-2))),
         "2024-03-01T01:30:00.000Z"),
        (datetime(2024, 1, 1, 12, 0, 0, 123456), "2024-01-01T12:00:00.123Z"),
        (["a", "b"], "a;b"),
        ("text", "text"),
    ],
)  # fmt: skip
def test_values_are_encoded_as_hubspot_takes_them(value: Any, encoded: str) -> None:
    assert encode_value(value) == encoded
