"""The embedded pipeline end to end: a change committed to public.customers reaches the CRM
emulator through Debezium, the broker, Faust and the adapter, exactly once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TypeVar

import orjson
import pytest

from crmsync.stack import PIPELINE
from crmsync.status import consumer_lag
from tests.conftest import wait_until
from tests.integration.conftest import Emulator, RunningStack

pytestmark = pytest.mark.timeout(420)

T = TypeVar("T")
StartStack = Callable[..., RunningStack]
StartEmulator = Callable[..., Emulator]


def having(count: int, probe: Callable[[], dict[str, T]]) -> Callable[[], dict[str, T] | None]:
    """A probe that yields `probe()` once it holds exactly `count` entries."""

    def check() -> dict[str, T] | None:
        found = probe()
        return found if len(found) == count else None

    return check


def customer(n: int, **extra: object) -> dict[str, object]:
    return {
        "email": f"  Person.{n}@Example.COM ",
        "first_name": f"First{n}",
        "last_name": f"Last{n}",
        "phone": "030 1234567",
        "country": "germany",
        "lifecycle_stage": "Trial",
        **extra,
    }


def test_insert_update_soft_and_hard_delete_reach_the_crm(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    emulator = start_emulator()
    stack = start_stack(emulator)
    kept, soft, hard = stack.insert_customers([customer(1), customer(2), customer(3)])

    contacts = wait_until(
        having(3, emulator.by_customer),
        what="three contacts in the CRM",
    )
    first = contacts[kept]["properties"]
    assert first["email"] == "person.1@example.com"
    assert first["phone"] == "+49301234567"
    assert first["country"] == "DE"
    assert first["lifecyclestage"] == "opportunity"

    stack.sql("update public.customers set first_name = 'Alicia' where id = %s", (kept,))
    stack.sql("update public.customers set deleted_at = now() where id = %s", (soft,))
    stack.sql("delete from public.customers where id = %s", (hard,))

    wait_until(
        lambda: (
            emulator.by_customer().get(kept, {}).get("properties", {}).get("firstname") == "Alicia"
        ),
        what="the update in the CRM",
    )
    archived = wait_until(
        having(2, lambda: emulator.by_customer(archived=True)),
        what="soft- and hard-deleted customers archived in the CRM",
    )
    assert set(archived) == {soft, hard}
    assert set(emulator.by_customer()) == {kept}


def test_invalid_email_is_dead_lettered_and_the_rows_around_it_are_delivered(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    emulator = start_emulator()
    stack = start_stack(emulator)
    before, bad, after = stack.insert_customers(
        [customer(1), customer(2, email="jane at example"), customer(3)]
    )

    wait_until(lambda: set(emulator.by_customer()) == {before, after}, what="good rows delivered")
    letters = wait_until(
        lambda: stack.sql("select stage, key, error from sync.dead_letters"),
        what="a dead letter",
    )
    assert len(letters) == 1
    stage, key, error = letters[0]
    assert stage == "ingest"
    assert bad in key
    assert "email" in error and "jane at example" in error
    mirrored = wait_until(
        lambda: stack.topic_records("crmsync.sync.dead_letters"), what="dead-letter topic record"
    )
    assert orjson.loads(mirrored[0][1])["after"]["error"] == error
    assert bad not in emulator.by_customer()


def test_a_burst_under_a_429ing_rate_limit_is_delivered_once_each(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    # The CRM allows 10 requests/s; the adapter is told 50/s, so it must live with 429s.
    emulator = start_emulator(rate_max=10, rate_interval_ms=1000)
    stack = start_stack(emulator, crm_requests_per_window=50, crm_window_seconds=1.0)
    ids = stack.insert_customers([customer(n) for n in range(2000)])

    wait_until(lambda: emulator.stats()["contacts"] >= 2000, timeout=240, what="2,000 contacts")
    contacts = emulator.contacts()
    assert sorted(c["properties"]["crmsync_id"] for c in contacts) == sorted(ids)
    assert emulator.stats()["rate_limited"] > 0
    links = stack.sql(
        "select count(*), count(distinct external_id) from sync.identity_links where system = 'crm'"
    )
    assert links == [(2000, 2000)]


def test_restarting_faust_recovers_state_and_resends_nothing(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    emulator = start_emulator()
    stack = start_stack(emulator)
    ids = stack.insert_customers([customer(n) for n in range(300)])
    wait_until(lambda: emulator.stats()["contacts"] == 300, what="300 contacts")
    commands_topic = "crmsync.commands.crm"
    sent_before = stack.end_offsets(commands_topic)
    creates_before = emulator.stats()["creates"]
    # The contacts can land before Faust commits its offsets (every 2.8 s): restart only
    # once it has, so the new worker starts from its changelog, not by re-reading the topic.
    wait_until(
        lambda: consumer_lag(stack.settings)["streams"].get("lag") == 0,
        what="Faust committing every event",
    )

    stack.stack.stop_process("streams")
    stack.stack.spawn("streams")
    stack.sql("update public.customers set last_name = 'Renamed' where id = %s", (ids[7],))

    wait_until(
        lambda: emulator.by_customer()[ids[7]]["properties"]["lastname"] == "Renamed",
        what="the update after the restart",
    )
    assert stack.end_offsets(commands_topic) == sent_before + 1
    assert emulator.stats()["creates"] == creates_before
    last_command = next(
        orjson.loads(value)
        for key, value in reversed(stack.topic_records(commands_topic))
        if key == ids[7].encode()
    )
    # Only the delta: the recovered state knew exactly what the CRM already held.
    assert set(last_command["properties"]) == {"lastname", "crmsync_id"}


def test_changes_made_while_the_stack_is_down_are_delivered_without_duplicates(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    emulator = start_emulator()
    stack = start_stack(emulator)
    ids = stack.insert_customers([customer(n) for n in range(100)])
    wait_until(lambda: emulator.stats()["contacts"] == 100, what="100 contacts")
    writes_before = emulator.stats()

    stack.stack.down()
    stack.stack.postgres().start()  # only the database, so that apps can keep writing
    stack.sql("update public.customers set phone = '+1 212 555 0100' where id = any(%s::uuid[])",
              (ids[:10],))  # fmt: skip
    stack.sql("delete from public.customers where id = any(%s::uuid[])", (ids[10:13],))
    new_ids = stack.insert_customers([customer(n) for n in range(100, 105)])
    stack.stack.up()

    def new_phone_count() -> int:
        return sum(
            c["properties"].get("phone") == "+12125550100" for c in emulator.by_customer().values()
        )

    # Creates and archives travel in different lanes: the count alone can pass through 102
    # with one of each still on its way.
    live = (set(ids) - set(ids[10:13])) | set(new_ids)
    wait_until(lambda: set(emulator.by_customer()) == live, timeout=120, what="inserts, deletes")
    wait_until(lambda: set(emulator.by_customer(archived=True)) == set(ids[10:13]), what="archives")
    wait_until(lambda: new_phone_count() == 10, what="updates made while down")
    stats = emulator.stats()
    assert stats["creates"] == writes_before["creates"] + 5  # nobody created twice
    assert stats["updates"] == writes_before["updates"] + 10  # unchanged rows not rewritten


def test_rebasing_the_broker_loses_nothing_and_rewrites_nothing(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    """What the supervisor does when the in-memory broker dies or outgrows its limit."""
    emulator = start_emulator()
    stack = start_stack(emulator)
    ids = stack.insert_customers([customer(n) for n in range(50)])
    wait_until(lambda: emulator.stats()["contacts"] == 50, what="50 contacts")
    before = {name: p.pid for name, p in stack.stack.processes.items()}

    stack.stack.processes["broker"].kill()  # every topic gone with it
    stack.stack.processes["broker"].wait()
    assert stack.stack.supervise() == ["broker exited with -9; rebased"]
    after = {name: p.pid for name, p in stack.stack.processes.items()}
    assert set(after) == set(before)
    assert all(after[name] != before[name] for name in (*PIPELINE, "broker"))
    assert stack.stack.supervise() == []  # one restart each, nothing started twice
    assert stack.end_offsets("crmsync.commands.crm") == 0  # a fresh, empty broker
    stack.sql("update public.customers set first_name = 'Rebased' where id = %s", (ids[0],))
    (new_id,) = stack.insert_customers([customer(50)])

    wait_until(
        lambda: (
            emulator.by_customer().get(ids[0], {}).get("properties", {}).get("firstname")
            == "Rebased"
        ),
        what="an update after the rebase",
    )
    wait_until(lambda: new_id in emulator.by_customer(), what="an insert after the rebase")
    # The re-snapshot replays all 51 rows; only the two real changes reach the CRM.
    wait_until(lambda: stack.end_offsets("crmsync.public.customers") >= 51 + 2, what="snapshot")
    wait_until(
        lambda: all(g.get("lag") == 0 for g in consumer_lag(stack.settings).values()),
        what="streams and adapter caught up",
    )
    stats = emulator.stats()
    assert (stats["creates"], stats["updates"]) == (51, 1)


def test_every_pipeline_process_killed_mid_burst_loses_and_duplicates_nothing(
    start_emulator: StartEmulator, start_stack: StartStack
) -> None:
    emulator = start_emulator()
    stack = start_stack(emulator)
    first = stack.insert_customers([customer(n) for n in range(50)])
    wait_until(lambda: emulator.stats()["contacts"] == 50, what="the pipeline warmed up")
    rest = stack.insert_customers([customer(n) for n in range(50, 1050)])
    wait_until(lambda: emulator.stats()["contacts"] > 60, interval=0.01, what="mid-burst")

    for name in PIPELINE:  # capture, streams and the adapter, without a chance to clean up
        os.kill(stack.stack.processes[name].pid, signal.SIGKILL)
    restarted: list[str] = []
    wait_until(
        lambda: restarted.extend(stack.stack.supervise()) or len(restarted) == len(PIPELINE),
        what="the supervisor restarting all three",
    )

    wait_until(lambda: emulator.stats()["contacts"] >= 1050, timeout=180, what="1,050 contacts")
    contacts = emulator.contacts()
    assert sorted(c["properties"]["crmsync_id"] for c in contacts) == sorted(first + rest)
    assert emulator.stats()["creates"] == 1050
