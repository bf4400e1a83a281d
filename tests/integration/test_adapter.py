"""The adapter runtime against each vendor's emulator and a real Postgres (no broker needed):
replays, faults, refusals, give-ups and credentials, as a user of each target would see them.
Every scenario runs for HubSpot, Salesforce, Stripe and Zendesk through the same runtime."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.breaker import CircuitBreaker
from adapters.clients import make_client
from adapters.retry import RetryPolicy
from adapters.target import TargetClient
from adapters.worker import TargetAdapter, throttle_for
from crmsync.dead_letters import DeadLetter
from crmsync.domain.customer import normalise_customer
from crmsync.domain.decide import Command, apply, fingerprint
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.rules import SyncRules, load_rules
from crmsync.settings import Settings
from crmsync.stack import terminate, wait_for_http
from crmsync.targets import load_plan
from tests.conftest import free_port
from tests.integration.targets import Target

#: (target, vendor, the credential the emulator is started to accept)
VENDORS = {
    "hubspot": ("crm", "pat-na1-the-right-one"),
    "salesforce": ("crm", "00Dxx0000001gPL!the-right-session"),
    "stripe": ("billing", "sk_test_the_right_one"),
    "zendesk": ("support", "the-right-api-token"),
}
WRONG = {
    "hubspot": "pat-na1-a-revoked-token-4242",
    "salesforce": "00Dxx0000001gPL!a-revoked-session-4242",
    "stripe": "sk_test_a_revoked_key_4242",
    "zendesk": "a-revoked-api-token-4242",
}


def rules_for(vendor: str) -> SyncRules:
    return load_rules(
        Path("config/ownership.toml"), Path("config/mapping.toml"),
        {"crm": "salesforce" if vendor == "salesforce" else "hubspot"},
    )  # fmt: skip


@dataclass
class Harness:
    vendor: str
    target: str
    adapter: TargetAdapter
    api: Target
    rules: SyncRules

    @property
    def letters(self) -> list[DeadLetter]:
        return self.adapter.dead_letters

    def new_customer(self, n: int, **row: Any) -> Command:
        """The command the streams stage would emit to this target for a brand-new customer."""
        record = normalise_customer(
            {"id": str(uuid.uuid4()), "email": f"c{n}@example.com", "first_name": f"C{n}",
             "last_name": f"L{n}", **row}
        )  # fmt: skip
        source = SourcePosition(topic="t", partition=0, offset=n, op="c", lsn=1000 + n)
        change = CustomerChange(customer_id=record.id, op="c", record=record, source=source)
        decision = apply(None, change, self.rules, dt.datetime.now(dt.UTC).isoformat())
        return next(c for c in decision.commands if c.target == self.target)

    async def deliver(self, commands: list[Command]) -> None:
        await self.adapter.handle([c.model_dump_json().encode() for c in commands])


@pytest.fixture(params=sorted(VENDORS))
def emulator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    vendor = request.param
    credential = VENDORS[vendor][1]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "crmsync.cli", "emulator", vendor, "--port", str(port),
         "--data", str(tmp_path / f"{vendor}.sqlite"), "--token", credential],
        start_new_session=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/_emulator/stats")
    yield Target(vendor, url, credential)
    terminate(process.pid)


@pytest.fixture
async def harness(postgres: str, emulator: Target) -> AsyncIterator[Callable[..., Harness]]:
    target = VENDORS[emulator.vendor][0]
    conn = await psycopg.AsyncConnection.connect(postgres, autocommit=True)
    clients: list[TargetClient] = []

    def make(give_up_after: float = 60.0, credential: str | None = None) -> Harness:
        settings = Settings(
            crm_vendor="salesforce" if emulator.vendor == "salesforce" else "hubspot",
            **{f"{target}_base_url": emulator.url,
               f"{target}_token": credential or emulator.token},
        )  # fmt: skip
        plan = load_plan(settings, target)
        client = make_client(settings, target, plan)
        clients.append(client)
        rules = rules_for(emulator.vendor)
        policy = RetryPolicy(base=0.01, cap=0.05, give_up_after=give_up_after)
        breaker = CircuitBreaker(threshold=5, cooldown=0.05, max_cooldown=0.2)
        adapter = TargetAdapter(
            target, client, conn, rules, throttle_for(plan), policy, breaker, plan.concurrency
        )
        return Harness(emulator.vendor, target, adapter, emulator, rules)

    yield make
    for client in clients:
        await client.aclose()
    await conn.close()


async def test_replayed_commands_create_no_second_record_and_cost_no_call(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    commands = [h.new_customer(n) for n in range(30)]
    await h.deliver(commands)
    calls = h.api.stats()["requests"]

    await h.deliver(commands)  # the same records redelivered after a crash
    assert h.api.stats()["creates"] == 30
    assert h.api.stats()["requests"] == calls  # known hashes: nothing to send
    assert set(h.api.records()) == {c.customer_id for c in commands}
    rows = await h.adapter.conn.execute("select count(*) from sync.identity_links")
    assert (await rows.fetchone()) == (30,)


async def test_injected_5xx_are_retried_until_everything_is_delivered_once(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    h.api.inject(error_rate=0.3, error_status=503, seed=7)
    commands = [h.new_customer(n) for n in range(60)]
    for start in range(0, 60, 10):  # many small batches: many chances to fail
        await h.deliver(commands[start : start + 10])
    h.api.inject()
    stats = h.api.stats()
    assert stats["faults_injected"] > 0
    assert stats["creates"] == 60
    assert set(h.api.records()) == {c.customer_id for c in commands}
    assert h.letters == []


async def test_a_refused_record_is_dead_lettered_with_the_targets_error_and_the_rest_delivered(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    good = [h.new_customer(n) for n in range(3)]
    bad = h.new_customer(99)
    email = next(p for p in bad.properties if p.lower() == "email")
    bad = bad.model_copy(update={"properties": {**bad.properties, email: "not an email"}})
    await h.deliver([good[0], bad, good[1], good[2]])

    assert set(h.api.records()) == {c.customer_id for c in good}
    (letter,) = h.letters
    assert letter.key == bad.customer_id
    assert "not an email" in letter.error or "email" in letter.error.lower()  # the API's words
    rows = await h.adapter.conn.execute("select stage, target, error from sync.dead_letters")
    assert await rows.fetchall() == [("deliver", h.target, letter.error)]


async def test_a_target_that_stays_down_ends_in_dead_letters_not_a_stuck_stream(
    harness: Callable[..., Harness],
) -> None:
    h = harness(give_up_after=1.0)
    h.api.inject(outage=True)
    commands = [h.new_customer(n) for n in range(2)]
    await h.deliver(commands)

    assert {letter.key for letter in h.letters} == {c.customer_id for c in commands}
    assert all("gave up after" in letter.error for letter in h.letters)
    assert h.adapter.breaker.opened >= 1  # it stopped hammering and probed instead
    h.api.inject()
    assert h.api.records() == {}


async def test_a_wrong_credential_is_dead_lettered_with_the_401_and_never_written_down(
    harness: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    h = harness()
    wrong = WRONG[h.vendor]
    h = harness(credential=wrong)
    command = h.new_customer(1)
    await h.deliver([command])

    (letter,) = h.letters
    assert "401" in letter.error
    assert h.api.stats()["creates"] == 0
    rows = await h.adapter.conn.execute("select payload::text, error from sync.dead_letters")
    stored = " ".join(" ".join(row) for row in await rows.fetchall())
    assert wrong not in stored
    assert wrong not in repr(h.adapter.client)
    assert wrong not in capsys.readouterr().err


async def test_a_later_change_after_a_dead_lettered_one_sends_the_whole_record(
    harness: Callable[..., Harness],
) -> None:
    """A refused write leaves the target's state unknown: the customer's next write must not
    be a delta that the stored hash then claims is everything (the refused fields would never
    arrive, and a replay would be skipped as already there)."""
    h = harness()
    create = h.new_customer(1, phone="030 1234567", country="de")
    row = {"id": create.customer_id, "email": "c1@example.com", "first_name": "C1",
           "last_name": "L1", "phone": "030 7654321", "country": "de"}  # fmt: skip
    record = normalise_customer(row)
    await h.adapter.conn.execute(
        f"insert into public.customers ({', '.join(row)}) values ({', '.join(['%s'] * len(row))})",
        list(row.values()),
    )
    await h.deliver([create])
    email = next(p for p in create.properties if p.lower() == "email")
    refused = create.model_copy(
        update={"properties": {create.id_property: create.customer_id, email: "not an email"},
                "full": False, "desired_hash": "after-refused", "idempotency_key": "k-refused"}
    )  # fmt: skip
    await h.deliver([refused])
    assert len(h.letters) == 1

    phone = next(p for p in create.properties if p.lower() == "phone")  # every vendor maps it
    later = create.model_copy(
        update={"properties": {create.id_property: create.customer_id, phone: record.phone},
                "full": False, "desired_hash": "after-later", "idempotency_key": "k-later"}
    )  # fmt: skip
    await h.deliver([later])

    desired = h.rules.mappings[h.target].properties(record, h.rules.synced_fields(h.target))
    rows = await h.adapter.conn.execute(
        "select pushed_hash from sync.identity_links where customer_id = %s", (record.id,)
    )
    assert await rows.fetchall() == [(fingerprint(desired),)]  # the whole record, and known
    assert h.api.stats()["creates"] == 1
    assert h.letters[1:] == []


def make_by_hand(api: Target, email: str) -> str:
    """A record someone made in the target itself: its own email, no crmsync id; its id."""
    with api.client() as client:
        if api.vendor == "hubspot":
            body = {"properties": {"email": email, "firstname": "Hand"}}
            response = client.post("/crm/v3/objects/contacts", json=body)
        elif api.vendor == "salesforce":
            body = {"LastName": "Hand", "Email": email}
            response = client.post("/services/data/v59.0/sobjects/Contact", json=body)
        elif api.vendor == "stripe":
            response = client.post("/v1/customers", data={"email": email, "name": "Hand Made"})
        else:
            body = {"user": {"name": "Hand Made", "email": email}}
            response = client.post("/api/v2/users.json", json=body)
        response.raise_for_status()
    made = response.json()
    return str(made["user"]["id"] if api.vendor == "zendesk" else made["id"])


async def test_a_record_made_in_the_target_and_linked_by_identity_resolution_is_adopted(
    harness: Callable[..., Harness],
) -> None:
    """Its link has no pushed hash and a method other than "created": the first write goes to
    that record by its own id and sets crmsync's id on it; later writes find it by that id."""
    h = harness()
    command = h.new_customer(1)
    hand_made = make_by_hand(h.api, "someone.else@example.com")
    await h.adapter.conn.execute(
        "insert into sync.identity_links (system, external_id, customer_id, method, confidence)"
        " values (%s, %s, %s, 'fuzzy', 0.87)",
        (h.target, hand_made, command.customer_id),
    )
    await h.deliver([command])
    phone = next(p for p in command.properties if p.lower() == "phone")
    later = command.model_copy(
        update={"properties": {command.id_property: command.customer_id, phone: "+1 555 0100"},
                "full": False, "desired_hash": "after-later", "idempotency_key": "k-later"}
    )  # fmt: skip
    await h.deliver([later])

    assert h.letters == []
    assert h.api.stats()["creates"] == 1  # the hand-made record, and nothing since
    records = h.api.records()
    assert list(records) == [command.customer_id]  # it carries crmsync's id now
    record = records[command.customer_id]
    assert str(record.get("id") or record.get("Id")) == hand_made
    rows = await h.adapter.conn.execute(
        "select external_id, method, pushed_hash from sync.identity_links"
    )
    assert await rows.fetchall() == [(hand_made, "fuzzy", "after-later")]
