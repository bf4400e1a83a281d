"""Every target end to end: canonical inserts reach HubSpot (or Salesforce), Stripe and
Zendesk through the real pipeline, within the vendors' real default quotas, through faults
and an outage, and a refused record comes back through `crmsync dlq replay`."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from crmsync.stack import settings_env
from crmsync.status import collect_status
from tests.conftest import wait_until
from tests.integration.conftest import RunningStack
from tests.integration.targets import Target, targets_of

pytestmark = pytest.mark.timeout(600)

StartStack = Callable[..., RunningStack]
LIVE_STRIPE_KEY = "sk_live_crmsync_tests"  # Stripe's live-mode quota: 100 writes/s


def person(n: int, **extra: object) -> dict[str, object]:
    return {
        "email": f"Person.{n}@Example.com",
        "first_name": f"First{n}",
        "last_name": f"Last{n}",
        "phone": "030 1234567",
        "country": "germany",
        "plan_tier": "pro",
        **extra,
    }


def created(target: Target, count: int) -> Callable[[], dict[str, Any] | None]:
    """Probe: the emulator's stats once it has created `count` records (no API quota spent)."""

    def probe() -> dict[str, Any] | None:
        stats = target.stats()
        return stats if stats["creates"] >= count else None

    return probe


def test_a_customer_reaches_every_target_with_each_vendors_field_values(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    targets = targets_of(stack.settings)
    (cid,) = stack.insert_customers(
        [person(1, email=" Grace.Hopper@Example.com ", first_name="Grace", last_name="Hopper",
                street="Unter den Linden 1", city="Berlin", postal_code="10117",
                timezone="Europe/Berlin", language="de", status="active")]
    )  # fmt: skip

    def holds(name: str) -> Callable[[], dict[str, Any] | None]:
        return lambda: targets[name].records().get(cid)

    contact = wait_until(holds("crm"), what="the HubSpot contact")["properties"]
    assert contact["email"] == "grace.hopper@example.com"
    assert (contact["firstname"], contact["lastname"]) == ("Grace", "Hopper")
    assert (contact["phone"], contact["country"]) == ("+49301234567", "DE")
    assert contact["crmsync_plan_tier"] == "pro"

    customer = wait_until(holds("billing"), what="the Stripe customer")
    assert customer["email"] == "grace.hopper@example.com"
    assert customer["name"] == "Grace Hopper"
    assert customer["phone"] == "+49301234567"
    assert customer["address"]["line1"] == "Unter den Linden 1"
    assert (customer["address"]["city"], customer["address"]["postal_code"]) == ("Berlin", "10117")
    assert customer["address"]["country"] == "DE"
    assert customer["metadata"] == {"crmsync_id": cid, "plan_tier": "pro"}

    user = wait_until(holds("support"), what="the Zendesk user")
    assert (user["email"], user["name"], user["phone"]) == (
        "grace.hopper@example.com", "Grace Hopper", "+49301234567",
    )  # fmt: skip
    assert (user["external_id"], user["locale"]) == (cid, "de")
    assert user["time_zone"] == "Europe/Berlin" or user["iana_time_zone"] == "Europe/Berlin"
    assert user["user_fields"]["plan_tier"] == "pro"

    stack.sql("update public.customers set phone = '030 7654321' where id = %s", (cid,))
    wait_until(lambda: holds("crm")()["properties"]["phone"] == "+49307654321")
    wait_until(lambda: holds("billing")()["phone"] == "+49307654321")
    wait_until(lambda: holds("support")()["phone"] == "+49307654321")
    for target in targets.values():  # one record each, created once and then updated
        assert target.stats()["creates"] == 1
    links = stack.sql("select system from sync.identity_links where customer_id = %s", (cid,))
    assert sorted(system for (system,) in links) == ["billing", "crm", "support"]


def test_salesforce_is_the_crm_when_configured(start_stack: StartStack) -> None:
    stack = start_stack(crm_vendor="salesforce")
    crm = targets_of(stack.settings)["crm"]
    (cid,) = stack.insert_customers([person(7, do_not_contact=True)])

    contact = wait_until(lambda: crm.records().get(cid), what="the Salesforce contact")
    assert (contact["Email"], contact["FirstName"], contact["LastName"]) == (
        "person.7@example.com", "First7", "Last7",
    )  # fmt: skip
    assert (contact["Phone"], contact["MailingCountry"]) == ("+49301234567", "DE")
    assert contact["Plan_Tier__c"] == "pro"
    assert crm.stats()["creates"] == 1


def test_5000_inserts_within_real_default_quotas_arrive_once_without_a_single_429(
    start_stack: StartStack,
) -> None:
    stack = start_stack(billing_token=LIVE_STRIPE_KEY)
    targets = targets_of(stack.settings)
    started = time.monotonic()
    for start in range(0, 5000, 500):
        stack.insert_customers([person(n) for n in range(start, start + 500)])

    took = {}
    for name, target in targets.items():
        wait_until(created(target, 5000), timeout=420, interval=1, what=f"5,000 in {name}")
        took[name] = time.monotonic() - started
    report = collect_status(stack.settings)["targets"]
    stats = {name: target.stats() for name, target in targets.items()}
    for name in targets:
        assert stats[name]["creates"] == 5000, (name, stats[name])  # no duplicate anywhere
        assert stats[name]["rate_limited"] == 0, (name, stats[name])
        assert report[name]["rate_limited"] == 0
        assert report[name]["links"] == 5000
    assert stack.sql("select count(*) from sync.dead_letters") == [(0,)]
    # Last: reading every record through the API spends the account's quota, which the
    # adapters (still draining the creates' webhooks) share with this test.
    for target in targets.values():
        assert len(target.records()) == 5000
    # What each adapter achieved against its quota (for the record; `-s` shows it).
    spans = stack.sql(
        "select system, extract(epoch from max(pushed_at) - min(pushed_at))"
        " from sync.identity_links group by system"
    )
    for name, span in sorted(spans):
        print(
            f"\n{name}: 5,000 in {took[name]:.1f}s after the first insert; delivering for"
            f" {span:.1f}s: {5000 / span:,.0f} records/s, {stats[name]['requests'] / span:.1f}"
            f" requests/s ({stats[name]['requests']} requests, 0 429s,"
            f" quota {report[name]['quota']})"
        )


def test_5xx_and_a_30s_outage_delay_one_target_only_and_lose_or_duplicate_nothing(
    start_stack: StartStack,
) -> None:
    stack = start_stack(billing_token=LIVE_STRIPE_KEY)
    targets = targets_of(stack.settings)
    for seed, target in enumerate(targets.values()):
        target.inject(error_rate=0.1, error_status=503, seed=seed)
    targets["support"].inject(outage=True, for_seconds=30)
    outage_began = time.monotonic()
    ids = stack.insert_customers([person(n) for n in range(400)])

    for name in ("crm", "billing"):  # not held up by the support desk being down
        wait_until(created(targets[name], 400), timeout=60, what=f"400 in {name}")
    assert time.monotonic() - outage_began < 30
    assert targets["support"].stats()["creates"] == 0

    wait_until(created(targets["support"], 400), timeout=240, what="400 in support")
    for name, target in targets.items():
        stats = target.stats()
        assert stats["creates"] == 400, (name, stats)
        assert set(target.records()) == set(ids)
    assert stack.sql("select count(*) from sync.dead_letters") == [(0,)]
    report = collect_status(stack.settings)["targets"]
    assert report["support"]["breaker_opened"] >= 1
    # Stripe took ~40 of its 400 requests as 503s and Zendesk the outage; HubSpot, with 4
    # batch requests, may well have drawn none.
    assert report["billing"]["retries"] > 0
    assert report["support"]["retries"] > 0
    for name in targets:  # for the record; `-s` shows it
        info, stats = report[name], targets[name].stats()
        print(
            f"\n{name}: {info['api_calls']:.0f} requests, {info['retries']:.0f} retries,"
            f" {stats['faults_injected']} faults injected, {info['rate_limited']:.0f} 429s,"
            f" breaker opened {info['breaker_opened']:.0f}x"
        )


def cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmsync.cli", *args],
        env=settings_env(stack.settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_record_the_crm_refuses_is_dead_lettered_and_replayed_after_the_fix(
    start_stack: StartStack,
) -> None:
    # Sales created Ada by hand in HubSpot, without crmsync's id, and crmsync has not seen
    # that contact yet (webhooks off, no poll due): identity resolution would link it.
    stack = start_stack(poll_interval_seconds=3600)
    targets = targets_of(stack.settings)
    crm = targets["crm"]
    httpx.delete(f"{crm.url}/_emulator/webhooks").raise_for_status()
    with crm.client() as api:
        response = api.post(
            "/crm/v3/objects/contacts",
            json={"properties": {"email": "ada@example.com", "firstname": "Ada"}},
        )
        response.raise_for_status()
        by_hand = response.json()["id"]
    ada, grace, bad = stack.insert_customers(
        [person(1, email="ada@example.com", first_name="Ada", last_name="Lovelace"), person(2),
         person(3, email="not-an-email")]
    )  # fmt: skip

    ((letter_id, error),) = wait_until(
        lambda: stack.sql(
            "select id, error from sync.dead_letters where target = 'crm' and key = %s", (ada,)
        ),
        what="Ada's dead letter",
    )
    assert f"Contact already exists. Existing ID: {by_hand}" in error  # HubSpot's own words
    wait_until(lambda: grace in crm.records(), what="Grace delivered despite Ada")
    for name in ("billing", "support"):  # the other targets take Ada as usual
        wait_until(lambda name=name: ada in targets[name].records(), what=f"Ada in {name}")

    listed = orjson.loads(cli(stack, "dlq", "list", "--target", "crm", "--json").stdout)
    assert [letter["id"] for letter in listed] == [letter_id]
    shown = orjson.loads(cli(stack, "dlq", "show", str(letter_id)).stdout)
    assert shown["payload"]["customer_id"] == ada

    with crm.client() as api:  # the fix: sales removes the hand-made duplicate
        api.delete(f"/crm/v3/objects/contacts/{by_hand}").raise_for_status()
    replay = cli(stack, "dlq", "replay", "--target", "crm")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "replayed 1 dead letters" in replay.stderr  # the console's messages go to stderr

    contact = wait_until(lambda: crm.records().get(ada), what="Ada in HubSpot")["properties"]
    assert (contact["email"], contact["lastname"]) == ("ada@example.com", "Lovelace")
    assert stack.sql("select replayed_at is not null from sync.dead_letters where id = %s",
                     (letter_id,)) == [(True,)]  # fmt: skip
    creates = crm.stats()["creates"]
    again = cli(stack, "dlq", "replay", "--target", "crm")
    assert "replayed 0 dead letters" in again.stderr
    assert crm.stats()["creates"] == creates
    assert httpx.get(f"{crm.url}/_emulator/stats").json()["contacts"] == 2

    # A row the pipeline could not read is re-read through Debezium; still invalid, it is
    # dead-lettered again with the same reason, and the old letter is marked replayed.
    ingest = "select id, error, replayed_at is not null from sync.dead_letters" \
             " where stage = 'ingest' and key like %s order by id"  # fmt: skip
    ((first, reason, _),) = stack.sql(ingest, (f"%{bad}%",))
    everything = cli(stack, "dlq", "replay")
    assert "1 rows re-read" in everything.stderr, everything.stderr
    letters = wait_until(lambda: (rows := stack.sql(ingest, (f"%{bad}%",)))[1:] and rows,
                         what="the re-read row dead-lettered again")  # fmt: skip
    assert letters == [(first, reason, True), (letters[1][0], reason, False)]
