"""Identity resolution end to end: records people make by hand in HubSpot and Zendesk are
linked to the right canonical customer (by email, by a fuzzy score, or by a person through the
review CLI), two canonical rows for one person are merged and the targets end with one record,
and an email change keeps the customer. Every part is real: Postgres, the Debezium engine,
Tansu, Faust, the adapters with their inbound side, and the emulators."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from crmsync.stack import settings_env
from tests.conftest import wait_until
from tests.integration.conftest import RunningStack
from tests.integration.targets import Target, targets_of
from tests.integration.test_targets import StartStack
from tests.integration.test_two_way import edit, field

pytestmark = pytest.mark.timeout(600)

ADA = {"email": "Ada.Lovelace@Example.com", "first_name": "Ada", "last_name": "Lovelace",
       "postal_code": "NW1 6XE", "city": "London", "country": "GB"}  # fmt: skip
GRACE = {"email": "grace@navy.example", "first_name": "Grace", "last_name": "Hopper",
         "birth_date": "1906-12-09", "street": "1 Navy Way", "postal_code": "20350",
         "city": "Arlington", "country": "US"}  # fmt: skip
LINUS = {"email": "linus@kernel.example", "first_name": "Linus", "last_name": "Torvalds",
         "phone": "+1 503 555 0100", "country": "US"}  # fmt: skip


def create(target: Target, record: dict[str, Any]) -> str:
    """Make a record by hand through the vendor's API, as a person's tool does."""
    with target.client() as client:
        if target.vendor == "hubspot":
            response = client.post("/crm/v3/objects/contacts", json={"properties": record})
            response.raise_for_status()
            return str(response.json()["id"])
        response = client.post("/api/v2/users.json", json={"user": record})
        response.raise_for_status()
        return str(response.json()["user"]["id"])


def link_of(stack: RunningStack, system: str, external_id: str) -> tuple[str, str] | None:
    rows = stack.sql(
        "select customer_id::text, method from sync.identity_links"
        " where system = %s and external_id = %s",
        (system, external_id),
    )
    return rows[0] if rows else None


def cli(stack: RunningStack, *args: str) -> str:
    env = settings_env(stack.settings)
    done = subprocess.run([sys.executable, "-m", "crmsync.cli", *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def live_with_email(target: Target, email: str) -> list[dict[str, Any]]:
    with target.client() as client:
        if target.vendor == "hubspot":
            params = {"limit": 100, "properties": "email,crmsync_id"}
            contacts = client.get("/crm/v3/objects/contacts", params=params)
            return [c for c in contacts.json()["results"] if c["properties"]["email"] == email]
        if target.vendor == "stripe":
            listed = client.get("/v1/customers", params={"email": email, "limit": 100})
            return listed.json()["data"]
        users = client.get("/api/v2/users/search.json", params={"query": f"email:{email}"})
        return users.json()["users"]


def test_records_made_by_hand_are_linked_duplicates_merged_and_email_changes_keep_the_customer(
    start_stack: StartStack,
) -> None:
    # A short retry budget: the outage below dead-letters the customers' first copies in the
    # CRM and the support desk, so those systems hold no record of them (as when a target was
    # connected later, or refused a record).
    stack = start_stack(retry_give_up_seconds=2.0)
    targets = targets_of(stack.settings)
    crm, support = targets["crm"], targets["support"]
    for target in (crm, support):
        target.inject(outage=True)
    ada, grace = stack.insert_customers([ADA, GRACE])
    wait_until(
        lambda: stack.sql("select count(distinct (target, key)) from sync.dead_letters"
                          " where target in ('crm', 'support')")[0][0] >= 4,
        timeout=90, what="both first copies dead-lettered in the CRM and the desk",
    )  # fmt: skip
    assert not stack.sql("select 1 from sync.identity_links where system in ('crm', 'support')")
    for target in (crm, support):
        target.inject()  # the outage is over
    customers = stack.sql("select count(*) from public.customers")[0][0]

    # Known email (another case): the support agent's user is Ada.
    ada_user = create(support, {"name": "Ada Lovelace", "email": "ADA.LOVELACE@example.com"})
    assert wait_until(lambda: link_of(stack, "support", ada_user), what="Ada's link") == (
        ada, "email",
    )  # fmt: skip
    user = wait_until(lambda: support.records().get(ada), what="Ada's user carries her id")
    assert str(user["id"]) == ada_user  # written over by its id: no second user
    assert len(live_with_email(support, "ada.lovelace@example.com")) == 1

    # A typo in the name and no email: Grace by a fuzzy score over name, birth date, address.
    grace_contact = create(crm, {"firstname": "Grase", "lastname": "Hoper",
                                 "date_of_birth": "1906-12-09", "address": "1 Navy Wy.",
                                 "zip": "20350", "city": "arlington"})  # fmt: skip
    linked = wait_until(lambda: link_of(stack, "crm", grace_contact), what="Grace's link")
    assert linked == (grace, "fuzzy")
    contact = wait_until(lambda: crm.records().get(grace), what="Grace's contact carries her id")
    assert contact["id"] == grace_contact
    # The golden record keeps its values; the contact takes them, the canonical row its gaps.
    wait_until(lambda: contact_name(crm, grace) == ("Grace", "Hopper"), what="the name fixed")
    assert field(stack, grace, "email") == "grace@navy.example"
    assert ("crm", "first_name", "rejected") in _audit(stack, grace)

    # An ambiguous one (the right name and postcode, nothing else) waits for a person.
    maybe_ada = create(crm, {"firstname": "Ada", "lastname": "Lovelace", "zip": "nw16xe"})
    item = wait_until(
        lambda: stack.sql("select id, proposed from sync.review_queue where kind = 'identity'"
                          " and system = 'crm' and resolved_at is null"),
        what="the identity question in the review queue",
    )  # fmt: skip
    item_id, proposed = item[0]
    assert proposed["external_id"] == maybe_ada
    assert proposed["candidates"][0]["customer_id"] == ada
    listed = orjson.loads(cli(stack, "review", "list", "--json"))
    assert [i["id"] for i in listed] == [item_id], orjson.dumps(listed).decode()
    cli(stack, "review", "resolve", str(item_id), "--link", ada, "--by", "tester")
    assert wait_until(lambda: link_of(stack, "crm", maybe_ada), what="the person's link") == (
        ada, "review",
    )  # fmt: skip
    wait_until(lambda: (crm.records().get(ada) or {}).get("id") == maybe_ada,
               what="the contact carries Ada's id")  # fmt: skip
    wait_until(lambda: crm.records()[ada]["properties"]["email"] == "ada.lovelace@example.com",
               what="Ada's email written to the contact")  # fmt: skip
    assert stack.sql("select count(*) from public.customers")[0][0] == customers

    # An email change, in a target or in the canonical database, keeps the customer.
    edit(crm, maybe_ada, {"email": "ada@analytical.example"})
    wait_until(lambda: field(stack, ada, "email") == "ada@analytical.example",
               what="the new email on Ada's row")  # fmt: skip
    stack.sql("update public.customers set email = 'g.hopper@navy.example' where id = %s",
              (grace,))  # fmt: skip
    wait_until(lambda: crm.records()[grace]["properties"]["email"] == "g.hopper@navy.example",
               what="Grace's new email in the CRM")  # fmt: skip
    assert stack.sql("select count(*) from public.customers")[0][0] == customers
    assert stack.sql("select count(*) from sync.review_queue where resolved_at is null") == [(0,)]

    # A person undoes the fuzzy link: the contact is someone else after all. It becomes a
    # customer of its own with what it said when it was linked, never merged with Grace, and
    # Grace gets a contact of her own.
    cli(stack, "review", "unlink", "crm", grace_contact, "--by", "tester")
    grase, method = link_of(stack, "crm", grace_contact) or ("", "")
    assert grase not in ("", grace) and method == "review"
    assert stack.sql("select first_name, last_name, birth_date::text from public.customers"
                     " where id = %s", (grase,)) == [("Grase", "Hoper", "1906-12-09")]  # fmt: skip
    wait_until(lambda: contact_name(crm, grase) == ("Grase", "Hoper"),
               what="the contact holds what it said again")  # fmt: skip
    assert crm.records()[grase]["id"] == grace_contact
    wait_until(lambda: crm.records().get(grace, {}).get("id") not in (None, grace_contact),
               what="a contact of Grace's own")  # fmt: skip
    assert ("identity", "*", "unlinked") in _audit(stack, grace)
    assert stack.sql("select count(*) from sync.merges")[0][0] == 0

    # Two apps create one person: the second row is merged into the first, and every target
    # ends with one live record for them.
    (linus,) = stack.insert_customers([LINUS])
    wait_until(lambda: all(linus in t.records() for t in targets.values()),
               what="Linus everywhere")  # fmt: skip
    (again,) = stack.insert_customers(
        [{**LINUS, "email": " LINUS@Kernel.Example", "phone": "(503) 555-0100"}]
    )
    merged = wait_until(
        lambda: stack.sql("select survivor_id::text, loser_id::text, method from sync.merges"),
        what="the merge",
    )  # fmt: skip
    assert merged == [(linus, again, "email")]
    assert stack.sql("select merged_into::text, deleted_at is not null from public.customers"
                     " where id = %s", (again,)) == [(linus, True)]  # fmt: skip
    for name, target in targets.items():
        wait_until(lambda t=target: len(live_with_email(t, "linus@kernel.example")) == 1,
                   timeout=90, what=f"one record for Linus in {name}")  # fmt: skip
        wait_until(lambda t=target: linus in (ids := set(t.records())) and again not in ids,
                   what=f"that record is the survivor's in {name}")  # fmt: skip

    # A person undoes the merge: two customers again. (With one email between them, HubSpot
    # and Zendesk can hold only one record for both: Stripe takes the second again.)
    merge_id = stack.sql("select id from sync.merges")[0][0]
    cli(stack, "review", "unmerge", str(merge_id), "--by", "tester")
    assert stack.sql("select merged_into, deleted_at from public.customers where id = %s",
                     (again,)) == [(None, None)]  # fmt: skip
    wait_until(lambda: {linus, again} <= set(targets["billing"].records()),
               what="both customers in Stripe again")  # fmt: skip
    assert ("identity", "*", "unmerged") in _audit(stack, linus)
    assert stack.sql("select undone_by from sync.merges") == [("tester",)]
    # Neither undone decision is made again by the matcher.
    assert stack.sql("select count(*) from sync.kept_apart")[0][0] == 2

    report = orjson.loads(cli(stack, "status", "--json"))
    identity = report["components"]["database"]["identity"]
    assert identity["targets"]["support"]["auto_linked"] == 1
    assert identity["targets"]["crm"]["auto_linked"] == 0  # Grace's, undone by a person
    assert identity["targets"]["crm"]["linked_by_person"] == 2
    assert identity["canonical"]["merges_undone"] == 1


def contact_name(crm: Target, customer_id: str) -> tuple[str, str] | None:
    contact = crm.records().get(customer_id)
    if contact is None:
        return None
    return contact["properties"]["firstname"], contact["properties"]["lastname"]


def _audit(stack: RunningStack, customer_id: str) -> list[tuple[str, str, str]]:
    return stack.sql(
        "select system, field, outcome from sync.audit_log where customer_id = %s order by id",
        (customer_id,),
    )
