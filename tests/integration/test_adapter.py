"""The CRM adapter against the real HubSpot emulator and a real Postgres (no broker needed):
replays, faults, refusals and give-ups, as a user of the CRM would see them."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.hubspot import HubSpotClient
from adapters.ratelimit import TokenBucket
from adapters.retry import RetryPolicy
from adapters.worker import CrmAdapter
from crmsync.dead_letters import DeadLetter
from crmsync.domain.customer import normalise_customer
from crmsync.domain.decide import Command, apply
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.rules import load_rules
from tests.integration.conftest import Emulator

RULES = load_rules(Path("config/ownership.toml"), Path("config/mapping.toml"))


def new_customer_command(n: int, offset: int = 0, **row: Any) -> Command:
    """The command the streams stage would emit for a brand-new customer."""
    record = normalise_customer(
        {"id": str(uuid.uuid4()), "email": f"c{n}@example.com", "first_name": f"C{n}", **row}
    )
    source = SourcePosition(topic="t", partition=0, offset=offset, op="c", lsn=1000 + n)
    change = CustomerChange(customer_id=record.id, op="c", record=record, source=source)
    (command,) = apply(None, change, RULES, dt.datetime.now(dt.UTC).isoformat()).commands
    return command


class Harness:
    def __init__(self, adapter: CrmAdapter, emulator: Emulator):
        self.adapter, self.emulator = adapter, emulator

    @property
    def letters(self) -> list[DeadLetter]:
        return self.adapter.dead_letters

    async def deliver(self, commands: list[Command]) -> None:
        await self.adapter.handle([c.model_dump_json().encode() for c in commands])


REQUIRED_TOKEN = "pat-na1-the-right-one"


@pytest.fixture
async def harness(
    postgres: str, start_emulator: Callable[..., Emulator]
) -> AsyncIterator[Callable[..., Harness]]:
    emulator = start_emulator(token=REQUIRED_TOKEN)
    conn = await psycopg.AsyncConnection.connect(postgres, autocommit=True)
    clients: list[HubSpotClient] = []

    def make(max_attempts: int = 8, token: str = REQUIRED_TOKEN) -> Harness:
        client = HubSpotClient(emulator.url, token)
        clients.append(client)
        policy = RetryPolicy(base=0.01, cap=0.05, max_attempts=max_attempts)
        adapter = CrmAdapter(client, conn, TokenBucket(1000, 1.0), policy)
        return Harness(adapter, emulator)

    yield make
    for client in clients:
        await client.aclose()
    await conn.close()


async def test_replayed_commands_create_no_second_contact_and_cost_no_call(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    commands = [new_customer_command(n) for n in range(150)]
    await h.deliver(commands)
    calls = h.emulator.stats()["requests"]

    await h.deliver(commands)  # the same records redelivered after a crash
    assert h.emulator.stats()["contacts"] == 150
    assert h.emulator.stats()["requests"] == calls  # known hashes: nothing to send

    rows = await h.adapter.conn.execute("select count(*) from sync.identity_links")
    assert (await rows.fetchone()) == (150,)


async def test_injected_5xx_are_retried_until_everything_is_delivered_once(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    h.emulator.inject(error_rate=0.5, status=503, seed=7)
    commands = [new_customer_command(n, offset=n) for n in range(250)]
    for start in range(0, 250, 25):  # many small batches: many chances to fail
        await h.deliver(commands[start : start + 25])
    stats = h.emulator.stats()
    assert stats["faults_injected"] > 0
    assert stats["contacts"] == 250
    assert h.letters == []


async def test_a_refused_payload_is_dead_lettered_and_its_batch_mates_delivered(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    good = [new_customer_command(n) for n in range(3)]
    bad = new_customer_command(99).model_copy(
        update={"properties": {**new_customer_command(99).properties, "email": "not an email"}}
    )
    await h.deliver([good[0], bad, good[1], good[2]])

    assert set(h.emulator.by_customer()) == {c.customer_id for c in good}
    (letter,) = h.letters
    assert letter.key == bad.customer_id
    assert "not an email" in letter.error  # the API's own error body
    rows = await h.adapter.conn.execute("select stage, target, error from sync.dead_letters")
    assert await rows.fetchall() == [("deliver", "crm", letter.error)]


async def test_a_target_that_stays_down_ends_in_dead_letters_not_a_stuck_stream(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_attempts=3)
    h.emulator.inject(error_rate=1.0, status=503)
    commands = [new_customer_command(n) for n in range(2)]
    await h.deliver(commands)

    assert {letter.key for letter in h.letters} == {c.customer_id for c in commands}
    assert all("gave up after 3 attempts" in letter.error for letter in h.letters)
    assert h.emulator.stats()["faults_injected"] == 3


async def test_a_wrong_token_is_dead_lettered_with_the_401_and_never_written_down(
    harness: Callable[..., Harness], capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "pat-na1-a-revoked-token-4242"
    h = harness(token=wrong)
    command = new_customer_command(1)
    await h.deliver([command])

    (letter,) = h.letters
    assert "401" in letter.error
    assert h.emulator.stats()["contacts"] == 0
    rows = await h.adapter.conn.execute("select payload::text, error from sync.dead_letters")
    stored = " ".join(" ".join(row) for row in await rows.fetchall())
    assert wrong not in stored
    assert wrong not in repr(h.adapter.client)
    assert wrong not in capsys.readouterr().err
