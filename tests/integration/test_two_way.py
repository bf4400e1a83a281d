"""Two-way sync end to end: edits made in HubSpot, Stripe and Zendesk (through their APIs, as
a person's tool would) come back by webhook or polling, are judged by the ownership matrix and
reach the canonical row and the other targets, without ever ping-ponging. Every part is real:
Postgres, the Debezium engine, Tansu, Faust, the adapters with their inbound side, and the
three emulators with their default quotas."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import pytest

from crmsync.settings import Settings
from crmsync.stack import settings_env
from tests.conftest import wait_until
from tests.integration.conftest import RunningStack
from tests.integration.targets import Target, targets_of
from tests.integration.test_targets import StartStack, person

pytestmark = pytest.mark.timeout(600)

WINDOW = 5.0  # the shipped conflict window (config/ownership.toml)


def edit(target: Target, external_id: str, changes: dict[str, Any]) -> None:
    """Change a record through the vendor's API, as its users' tools do."""
    with target.client() as client:
        for _ in range(50):
            if target.vendor == "hubspot":
                response = client.patch(
                    f"/crm/v3/objects/contacts/{external_id}", json={"properties": changes}
                )
            elif target.vendor == "stripe":
                response = client.post(f"/v1/customers/{external_id}", data=changes)
            else:
                response = client.put(f"/api/v2/users/{external_id}.json", json={"user": changes})
            if response.status_code != 429:
                response.raise_for_status()
                return
            time.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError(f"{target.vendor} kept answering 429")


def field(stack: RunningStack, customer_id: str, column: str) -> Any:
    return stack.sql(f"select {column} from public.customers where id = %s", (customer_id,))[0][0]


def held(targets: dict[str, Target], customer_id: str) -> dict[str, dict[str, Any]]:
    return {name: target.records()[customer_id] for name, target in targets.items()}


def phones(stack: RunningStack, targets: dict[str, Target], customer_id: str) -> dict[str, Any]:
    records = held(targets, customer_id)
    return {
        "canonical": field(stack, customer_id, "phone"),
        "crm": records["crm"]["properties"]["phone"],
        "billing": records["billing"]["phone"],
        "support": records["support"]["phone"],
    }


def adapter_total(settings: Settings, metric: str) -> int:
    """One of the adapters' Prometheus counters, summed over targets and labels."""
    total = 0.0
    for target in ("crm", "billing", "support"):
        text = httpx.get(
            f"http://127.0.0.1:{settings.adapter_metrics_port_of(target)}/metrics"
        ).text
        pattern = rf"^{metric}_total(?:\{{[^}}]*\}})? (\S+)$"
        total += sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))
    return int(total)


def delivered_writes(settings: Settings) -> int:
    """API writes the adapters made: upserts and archives."""
    return adapter_total(settings, "crmsync_adapter_delivered")


def audit(stack: RunningStack, customer_id: str) -> list[tuple[str, str, str]]:
    return stack.sql(
        "select system, field, outcome from sync.audit_log where customer_id = %s order by id",
        (customer_id,),
    )


def start_with_customers(start_stack: StartStack, count: int, **overrides: Any) -> tuple[
    RunningStack, dict[str, Target], list[str], dict[str, dict[str, Any]]
]:  # fmt: skip
    stack = start_stack(**overrides)
    targets = targets_of(stack.settings)
    ids = stack.insert_customers([person(n, timezone="Europe/Berlin") for n in range(count)])

    def everywhere() -> dict[str, dict[str, dict[str, Any]]] | None:
        found = {name: target.records() for name, target in targets.items()}
        if not all(cid in records for records in found.values() for cid in ids):
            return None
        return {cid: {name: found[name][cid] for name in targets} for cid in ids}

    records = wait_until(everywhere, timeout=120, what="every customer in every target")
    return stack, targets, ids, records


def test_owner_edits_flow_everywhere_non_owner_edits_are_reverted_and_forgeries_refused(
    start_stack: StartStack,
) -> None:
    stack, targets, (ada, bob, cy), records = start_with_customers(start_stack, 3)

    # The CRM owns plan_tier: sales upgrading Ada reaches the canonical row and the others.
    edit(targets["crm"], records[ada]["crm"]["id"], {"crmsync_plan_tier": "enterprise"})
    wait_until(lambda: field(stack, ada, "plan_tier") == "enterprise", what="canonical plan")
    wait_until(lambda: held(targets, ada)["billing"]["metadata"]["plan_tier"] == "enterprise")
    wait_until(lambda: held(targets, ada)["support"]["user_fields"]["plan_tier"] == "enterprise")
    assert ("crm", "plan_tier", "applied") in audit(stack, ada)

    # Support may not change it: Bob's downgrade in Zendesk is reverted there and audited.
    support = targets["support"]
    edit(support, records[bob]["support"]["id"], {"user_fields": {"plan_tier": "free"}})
    wait_until(lambda: ("support", "plan_tier", "rejected") in audit(stack, bob), what="audit")
    wait_until(lambda: held(targets, bob)["support"]["user_fields"]["plan_tier"] == "pro",
               what="the owner's value written back to Zendesk")  # fmt: skip
    assert field(stack, bob, "plan_tier") == "pro"
    assert held(targets, bob)["billing"]["metadata"]["plan_tier"] == "pro"
    reason = stack.sql(
        "select reason from sync.audit_log where customer_id = %s and outcome = 'rejected'", (bob,)
    )[0][0]
    assert "owner: crm" in reason

    # A value that cannot be a phone is dead-lettered with the reason; the flow goes on.
    edit(targets["crm"], records[cy]["crm"]["id"], {"phone": "call me maybe"})
    (error,) = wait_until(
        lambda: stack.sql("select error from sync.dead_letters where payload->>'customer_id' = %s",
                          (cy,)) or None,
        what="the dead letter",
    )[0]  # fmt: skip
    assert "phone" in error and "call me maybe" in error

    # A forged Stripe event carrying a changed phone is refused and changes nothing.
    stripe_id = records[cy]["billing"]["id"]
    forged = orjson.dumps({
        "id": "evt_forged", "object": "event", "type": "customer.updated",
        "created": int(time.time()),
        "data": {"object": {**records[cy]["billing"], "phone": "+15555550123"}},
    })  # fmt: skip
    response = httpx.post(
        stack.settings.webhook_url_of("billing"),
        content=forged,
        headers={"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}",
                 "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 401
    # A real edit after it is applied: the forged one, sent before, would have been too.
    edit(targets["billing"], stripe_id, {"address[city]": "Hamburg"})
    wait_until(lambda: field(stack, cy, "city") == "Hamburg", what="the genuine edit")
    assert field(stack, cy, "phone") == "030 1234567"  # as the app wrote it
    assert stack.sql(
        "select count(*) from staging.billing_customers where payload->>'phone' = '+15555550123'"
    ) == [(0,)]


def test_two_systems_editing_one_field_back_and_forth_converge_with_bounded_writes(
    start_stack: StartStack,
) -> None:
    stack, targets, (cid,), records = start_with_customers(start_stack, 1)
    editors = [("crm", records[cid]["crm"]["id"]), ("support", records[cid]["support"]["id"])]
    wait_until(lambda: stack.end_offsets("crmsync.inbound") >= 3, what="the creates' echoes")
    writes_before = delivered_writes(stack.settings)
    calls_before = adapter_total(stack.settings, "crmsync_adapter_api_calls")
    edits = 8
    for n in range(edits):
        system, external_id = editors[n % 2]
        phone = f"+4930555{1000 + n}"
        edit(targets[system], external_id, {"phone": phone})
        edited_at = time.monotonic()
        wait_until(
            lambda phone=phone: set(phones(stack, targets, cid).values()) == {phone},
            timeout=60,
            what=f"edit {n} ({system}) everywhere",
        )
        # The next edit comes after this one reached everyone and outside the conflict
        # window (Zendesk stamps whole seconds: one more): a sequence of edits, each applied.
        # Inside the window the CRM's edit would win and Zendesk's be reverted.
        time.sleep(max(0.0, WINDOW + 1.5 - (time.monotonic() - edited_at)))
    final = f"+4930555{1000 + edits - 1}"

    # Quiet: echoes of all those writes have come back and started nothing new.
    def settled() -> int | None:
        before = delivered_writes(stack.settings)
        time.sleep(2)
        return before if delivered_writes(stack.settings) == before else None

    writes = wait_until(settled, what="no more writes") - writes_before
    assert set(phones(stack, targets, cid).values()) == {final}
    # Each edit: one write to each of the two other targets, and no round of echoes.
    assert writes == edits * 2, f"{writes} API writes for {edits} edits"
    applied = [row for row in audit(stack, cid) if row[1] == "phone" and row[2] == "applied"]
    assert len(applied) == edits
    assert not [row for row in audit(stack, cid) if row[2] != "applied"]
    calls = adapter_total(stack.settings, "crmsync_adapter_api_calls") - calls_before
    print(
        f"\nwrite amplification: {writes / edits:.2f} API writes per inbound change;"
        f" {calls / edits:.2f} API requests of any kind (reads of echoes and polls too)"
    )


def test_a_conflict_waits_for_review_and_the_decision_reaches_everyone_and_polling_backs_up(
    start_stack: StartStack,
) -> None:
    stack, targets, (cid, other), records = start_with_customers(
        start_stack, 2, poll_interval_seconds=1
    )

    # Support changes the phone, and billing changes it too within the window, not having
    # seen support's value (Stripe's event carries its own). Neither takes precedence.
    edit(targets["support"], records[cid]["support"]["id"], {"phone": "+4930222222"})
    wait_until(lambda: field(stack, cid, "phone") == "+4930222222", what="support's change")
    edit(targets["billing"], records[cid]["billing"]["id"], {"phone": "+4930111111"})
    (item,) = wait_until(
        lambda: stack.sql("select id, proposed from sync.review_queue where customer_id = %s",
                          (cid,)) or None,
        what="the conflict in the review queue",
    )  # fmt: skip
    item_id, proposed = item
    assert (proposed["current"]["system"], proposed["current"]["value"]) == (
        "support", "+4930222222",
    )  # fmt: skip
    assert (proposed["incoming"]["system"], proposed["incoming"]["value"]) == (
        "billing", "+4930111111",
    )  # fmt: skip
    assert ("billing", "phone", "review") in audit(stack, cid)
    # Nothing is overwritten while it waits: the golden value stays support's.
    assert field(stack, cid, "phone") == "+4930222222"
    assert held(targets, cid)["crm"]["properties"]["phone"] == "+4930222222"

    env = settings_env(stack.settings)
    listed = subprocess.run([sys.executable, "-m", "crmsync.cli", "review", "list", "--json"],
                            env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert [i["id"] for i in orjson.loads(listed.stdout)] == [item_id]
    subprocess.run(
        [sys.executable, "-m", "crmsync.cli", "review", "resolve", str(item_id),
         "--keep", "incoming", "--by", "tester"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    chosen = proposed["incoming"]["value"]
    wait_until(lambda: set(phones(stack, targets, cid).values()) == {chosen},
               what="the decision in every system")  # fmt: skip
    assert stack.sql("select resolved_by from sync.review_queue where id = %s", (item_id,)) == [
        ("tester",)
    ]
    listed = subprocess.run([sys.executable, "-m", "crmsync.cli", "review", "list", "--json"],
                            env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert orjson.loads(listed.stdout) == []

    # With Zendesk's webhooks dropped, an edit made there still arrives, by polling.
    support = targets["support"]
    httpx.delete(f"{support.url}/_emulator/webhooks").raise_for_status()
    edit(support, records[other]["support"]["id"], {"time_zone": "Europe/Paris"})
    wait_until(lambda: field(stack, other, "timezone") == "Europe/Paris", timeout=90,
               what="the polled edit in the canonical row")  # fmt: skip
    wait_until(
        lambda: held(targets, other)["crm"]["properties"].get("crmsync_timezone") == "Europe/Paris",
        what="the polled edit in the CRM",
    )
