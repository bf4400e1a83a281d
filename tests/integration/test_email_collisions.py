"""Email collisions end to end: an app gives customer B the email customer A holds, by an
insert or an update. The pipeline decides it once, before any target is written: one person
is merged, anyone else waits in the review queue; no target ever holds two records with the
email, and no target's "already exists" is the first place the conflict is seen. A person's
decision then reaches every target the same way. Every part is real: Postgres, the Debezium
engine, Tansu, Faust, the adapters and the emulators."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.conftest import RunningStack
from tests.integration.targets import Target, targets_of
from tests.integration.test_identity import cli, live_with_email
from tests.integration.test_targets import StartStack

pytestmark = pytest.mark.timeout(600)

EMAIL = "ada.lovelace@example.com"
ADA = {"email": "Ada.Lovelace@Example.com", "first_name": "Ada", "last_name": "Lovelace",
       "country": "GB"}  # fmt: skip
BOB = {"email": " ADA.LOVELACE@example.com", "first_name": "Bob", "last_name": "Builder",
       "country": "GB"}  # fmt: skip
# Ada signing up again, through another app.
ADA_AGAIN = {"email": EMAIL, "first_name": "ada", "last_name": "Lovelace", "country": "GB"}
# A customer since 2020, with an address of her own (until an app gives her Ada's).
CAROL = {"email": "carol@example.com", "first_name": "Carol", "last_name": "Danvers",
         "country": "GB", "created_at": "2020-01-01T00:00:00Z"}  # fmt: skip


def email_of(target: Target, record: dict[str, Any]) -> str | None:
    if target.vendor == "hubspot":
        return record["properties"].get("email") or None
    return record.get("email") or None


def phone_of(target: Target, record: dict[str, Any]) -> str | None:
    if target.vendor == "hubspot":
        return record["properties"].get("phone") or None
    return record.get("phone") or None


def only_holder(targets: dict[str, Target], customer_id: str) -> bool:
    """Every target holds one live record with the email, and it is `customer_id`'s."""
    for target in targets.values():
        found = live_with_email(target, EMAIL)
        if len(found) != 1:
            return False
        if target.vendor == "hubspot":
            owner = found[0]["properties"]["crmsync_id"]
        elif target.vendor == "stripe":
            owner = found[0]["metadata"]["crmsync_id"]
        else:
            owner = found[0]["external_id"]
        if owner != customer_id:
            return False
    return True


def open_items(stack: RunningStack) -> list[tuple[Any, ...]]:
    return stack.sql(
        "select id, proposed->'customers', proposed->>'given_to', proposed->>'held_by'"
        " from sync.review_queue where kind = 'duplicate' and resolved_at is null order by id"
    )


def target_dead_letters(stack: RunningStack) -> list[tuple[Any, ...]]:
    return stack.sql(
        "select target, key, error from sync.dead_letters where target is not null"
        " and replayed_at is null"
    )


def everywhere(targets: dict[str, Target], *customer_ids: str) -> bool:
    return all(set(customer_ids) <= set(t.records()) for t in targets.values())


def test_an_email_given_to_a_second_customer_is_decided_once_before_any_target_is_written(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    targets = targets_of(stack.settings)
    (ada,) = stack.insert_customers([ADA])
    wait_until(lambda: everywhere(targets, ada), timeout=90, what="Ada in every target")

    # By insert: Bob is someone else (a person decides); Ada signing up again is Ada (merged).
    (bob,) = stack.insert_customers([BOB])
    items = wait_until(lambda: open_items(stack), what="Bob's collision in the review queue")
    assert [(i[1], i[2], i[3]) for i in items] == [(sorted([ada, bob]), bob, ada)]
    (again,) = stack.insert_customers([ADA_AGAIN])
    merged = wait_until(
        lambda: stack.sql("select survivor_id::text, loser_id::text, method from sync.merges"),
        what="Ada's second sign-up merged",
    )  # fmt: skip
    assert merged == [(ada, again, "email")]
    (later,) = stack.insert_customers([{**ADA, "email": "later@example.com", "first_name": "Lee"}])
    wait_until(lambda: everywhere(targets, later), timeout=90, what="a later customer everywhere")
    for name, target in targets.items():
        records = target.records()
        assert bob not in records and again not in records, name
    assert only_holder(targets, ada)
    assert len(open_items(stack)) == 1  # not one per redelivery, nor per duplicate check

    # By update: Carol (a customer since 2020) is given Ada's email and a new phone. The
    # phone reaches the targets; her records keep her own email while a person decides.
    (carol,) = stack.insert_customers([CAROL])
    wait_until(lambda: everywhere(targets, carol), timeout=90, what="Carol in every target")
    stack.sql("update public.customers set email = %s, phone = '+44 20 7946 0000' where id = %s",
              (ADA["email"], carol))  # fmt: skip
    wait_until(lambda: len(open_items(stack)) == 2, what="Carol's collision in the review queue")
    for name, target in targets.items():
        wait_until(lambda t=target: phone_of(t, t.records()[carol]) == "+442079460000",
                   timeout=90, what=f"Carol's new phone in {name}")  # fmt: skip
        assert email_of(target, target.records()[carol]) == "carol@example.com", name
    assert only_holder(targets, ada)
    assert target_dead_letters(stack) == []

    # A person keeps Bob apart: the address stays Ada's, Bob is written without it.
    bob_item, carol_item = (row[0] for row in open_items(stack))
    cli(stack, "review", "resolve", str(bob_item), "--apart", "--by", "tester")
    wait_until(lambda: everywhere(targets, bob), timeout=90, what="Bob in every target")
    for name, target in targets.items():
        assert email_of(target, target.records()[bob]) is None, name
    decision = stack.sql("select decision from sync.review_queue where id = %s", (bob_item,))
    assert decision[0][0]["email"] == {"address": EMAIL, "kept_by": ada, "withheld_from": bob}

    # ... and merges Carol with Ada: Carol, created first, survives and takes the address
    # once Ada's records are archived.
    cli(stack, "review", "resolve", str(carol_item), "--merge", "--by", "tester")
    wait_until(lambda: only_holder(targets, carol), timeout=120,
               what="the address on Carol's records alone")  # fmt: skip
    for name, target in targets.items():
        assert ada not in target.records(), name
    assert stack.sql("select merged_into::text from public.customers where id = %s", (ada,)) == [
        (carol,)
    ]
    assert open_items(stack) == []
    assert target_dead_letters(stack) == []
