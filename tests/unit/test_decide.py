"""apply(): what one canonical change means for the CRM, with the shipped ownership and mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.domain.customer import GoldenRecord, normalise_customer
from crmsync.domain.decide import Command, CustomerState, Decision, apply
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "ownership.toml", ROOT / "config" / "mapping.toml")
NOW = "2024-05-01T10:00:00+00:00"
CID = "5d1c0a2e-8f3b-4c6d-9e7f-0a1b2c3d4e5f"
ROW: dict[str, Any] = {
    "id": CID,
    "email": "alice@example.com",
    "phone": "+49 30 1234567",
    "first_name": "Alice",
    "last_name": "Smith",
    "company_name": "ACME GmbH",
    "city": "Berlin",
    "country": "DE",
    "birth_date": "1990-01-01",
    "lifecycle_stage": "trial",
    "plan_tier": "pro",
    "status": "active",
    "timezone": "Europe/Berlin",
    "language": "de-DE",
    "consent_email": True,
    "updated_at": "2024-05-01T09:00:00Z",
}
CRM_PROPERTIES = {m.property for m in RULES.mappings["crm"].fields.values()} | {"crmsync_id"}


def change(
    fields: dict[str, Any] | None,
    *,
    op: str = "u",
    offset: int = 1,
    lsn: int | None = None,
    tx_id: int | None = None,
    customer_id: str = CID,
) -> CustomerChange:
    record = None if fields is None else normalise_customer({"id": customer_id, **fields})
    source = SourcePosition(
        topic="crmsync.public.customers",
        partition=0,
        offset=offset,
        op=op,  # type: ignore[arg-type]
        lsn=offset * 100 if lsn is None else lsn,
        tx_id=offset if tx_id is None else tx_id,
        ts_ms=1714557600000 + offset,
    )
    return CustomerChange(customer_id=customer_id, op=op, record=record, source=source)  # type: ignore[arg-type]


def run(state: CustomerState | None, *changes: CustomerChange) -> Decision:
    assert changes
    decision = None
    for one in changes:
        decision = apply(state, one, RULES, NOW)
        state = decision.state
    assert decision is not None
    return decision


def only_command(decision: Decision) -> Command:
    assert len(decision.commands) == 1, decision.commands
    return decision.commands[0]


CREATED = change(ROW, op="c", offset=1)
DELETED_AT = "2024-05-02T00:00:00Z"


def test_shipped_rules_send_every_synced_field_to_the_crm() -> None:
    assert RULES.synced_fields("crm") == frozenset(RULES.mappings["crm"].fields)


def test_new_customer_is_one_full_upsert_to_the_crm() -> None:
    decision = apply(None, CREATED, RULES, NOW)
    command = only_command(decision)
    assert command.target == "crm"
    assert command.action == "upsert"
    assert command.customer_id == CID
    assert command.id_property == "crmsync_id"
    assert set(command.properties) == CRM_PROPERTIES
    props = command.properties
    assert props["crmsync_id"] == CID
    assert props["email"] == "alice@example.com"
    assert props["firstname"] == "Alice"
    assert props["lastname"] == "Smith"
    assert props["phone"] == "+49301234567"
    assert props["country"] == "DE"
    assert props["lifecyclestage"] == "opportunity"  # enum map trial -> opportunity
    assert props["crmsync_plan_tier"] == "pro"
    assert props["crmsync_consent_email"] == "true"
    assert props["crmsync_consent_sms"] == "false"
    assert props["address"] == ""  # unset fields clear the property
    assert command.source == CREATED.source


def test_new_customer_is_published_as_created() -> None:
    decision = apply(None, CREATED, RULES, NOW)
    assert decision.change is not None
    assert decision.change.op == "created"
    assert decision.change.customer_id == CID
    assert decision.change.provenance == CREATED.source
    assert decision.change.applied_at == NOW
    assert decision.change.changed["first_name"] == {"before": None, "after": "Alice"}
    assert decision.change.changed["lifecycle_stage"] == {"before": None, "after": "trial"}
    assert "updated_at" not in decision.change.changed
    assert decision.state.golden == CREATED.record
    assert decision.state.deleted is False


@pytest.mark.parametrize(
    "lifecycle", [("lead", "lead"), ("customer", "customer"), ("churned", "other")]
)
def test_lifecycle_stage_uses_the_enum_map(lifecycle: tuple[str, str]) -> None:
    ours, theirs = lifecycle
    command = only_command(apply(None, change({**ROW, "lifecycle_stage": ours}), RULES, NOW))
    assert command.properties["lifecyclestage"] == theirs


def test_applying_the_same_change_again_does_nothing() -> None:
    first = apply(None, CREATED, RULES, NOW)
    again = apply(first.state, CREATED, RULES, NOW)
    assert again.commands == []
    assert again.change is None
    assert again.state == first.state


def test_update_of_one_field_sends_only_that_property() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    decision = apply(state, change({**ROW, "first_name": "Alicia"}, offset=2), RULES, NOW)
    command = only_command(decision)
    assert command.action == "upsert"
    assert command.properties == {"firstname": "Alicia", "crmsync_id": CID}
    assert decision.change is not None
    assert decision.change.op == "updated"
    assert decision.change.changed == {"first_name": {"before": "Alice", "after": "Alicia"}}
    assert decision.state.golden is not None
    assert decision.state.golden.first_name == "Alicia"


def test_update_of_an_enum_sends_the_mapped_value() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    decision = apply(state, change({**ROW, "lifecycle_stage": "customer"}, offset=2), RULES, NOW)
    assert only_command(decision).properties == {"lifecyclestage": "customer", "crmsync_id": CID}


def test_clearing_a_field_sends_an_empty_string() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    decision = apply(state, change({**ROW, "city": None}, offset=2), RULES, NOW)
    assert only_command(decision).properties == {"city": "", "crmsync_id": CID}


def test_update_touching_only_updated_at_does_nothing() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    later = change({**ROW, "updated_at": "2024-06-01T00:00:00Z"}, offset=2)
    decision = apply(state, later, RULES, NOW)
    assert decision.commands == []
    assert decision.change is None


def test_whitespace_only_edit_does_nothing() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    decision = apply(state, change({**ROW, "first_name": "  Alice "}, offset=2), RULES, NOW)
    assert decision.commands == []
    assert decision.change is None


def test_soft_delete_archives_and_is_published_as_deleted() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    decision = apply(state, change({**ROW, "deleted_at": DELETED_AT}, offset=2), RULES, NOW)
    command = only_command(decision)
    assert command.action == "archive"
    assert command.target == "crm"
    assert command.properties == {"crmsync_id": CID}
    assert decision.change is not None
    assert decision.change.op == "deleted"
    assert decision.change.changed == {"deleted_at": {"before": None, "after": DELETED_AT}}
    assert decision.state.deleted is True


def test_hard_delete_after_soft_delete_sends_nothing() -> None:
    soft = run(None, CREATED, change({**ROW, "deleted_at": DELETED_AT}, offset=2))
    decision = apply(soft.state, change(None, op="d", offset=3), RULES, NOW)
    assert decision.commands == []
    assert decision.change is None
    assert decision.state.deleted is True


def test_hard_delete_of_a_known_customer_archives() -> None:
    state = apply(None, CREATED, RULES, NOW).state
    decision = apply(state, change(None, op="d", offset=2), RULES, NOW)
    assert only_command(decision).action == "archive"
    assert decision.change is not None
    assert decision.change.op == "deleted"
    assert decision.state.golden == CREATED.record  # the last known record is kept


def test_hard_delete_of_an_unknown_customer_still_archives() -> None:
    decision = apply(None, change(None, op="d", offset=7), RULES, NOW)
    command = only_command(decision)
    assert command.action == "archive"
    assert command.properties == {"crmsync_id": CID}
    assert decision.change is not None
    assert decision.change.op == "deleted"
    assert decision.state.deleted is True


def test_restore_after_archive_sends_the_full_property_set() -> None:
    soft = run(None, CREATED, change({**ROW, "deleted_at": DELETED_AT}, offset=2))
    decision = apply(soft.state, change(ROW, offset=3), RULES, NOW)
    command = only_command(decision)
    assert command.action == "upsert"
    assert set(command.properties) == CRM_PROPERTIES
    assert command.properties == only_command(apply(None, CREATED, RULES, NOW)).properties
    assert decision.change is not None
    assert decision.change.op == "restored"
    assert decision.change.changed == {"deleted_at": {"before": DELETED_AT, "after": None}}
    assert decision.state.deleted is False


def test_restore_after_hard_delete_sends_the_full_property_set() -> None:
    deleted = run(None, CREATED, change(None, op="d", offset=2))
    decision = apply(deleted.state, change({**ROW, "first_name": "Al"}, offset=3), RULES, NOW)
    command = only_command(decision)
    assert set(command.properties) == CRM_PROPERTIES
    assert command.properties["firstname"] == "Al"
    assert decision.change is not None
    assert decision.change.op == "restored"


def test_idempotency_key_is_stable_for_one_source_event() -> None:
    first = only_command(apply(None, CREATED, RULES, NOW))
    again = only_command(apply(None, change(ROW, op="c", offset=1), RULES, "later"))
    assert first.idempotency_key == again.idempotency_key


@pytest.mark.parametrize(
    "other",
    [
        change(ROW, op="c", offset=2, lsn=100, tx_id=1),  # only the offset differs
        change(ROW, op="c", offset=1, lsn=999),  # only the lsn differs
        change(ROW, op="c", offset=1, tx_id=2),  # only the transaction differs
        change(ROW, op="u", offset=1),  # another op
    ],
)
def test_idempotency_key_differs_per_source_position(other: CustomerChange) -> None:
    first = only_command(apply(None, CREATED, RULES, NOW))
    assert only_command(apply(None, other, RULES, NOW)).idempotency_key != first.idempotency_key


def test_idempotency_key_differs_per_customer() -> None:
    first = only_command(apply(None, CREATED, RULES, NOW))
    other = only_command(apply(None, change(ROW, op="c", customer_id="other-id"), RULES, NOW))
    assert other.idempotency_key != first.idempotency_key


def test_desired_hash_depends_only_on_the_desired_properties() -> None:
    base = only_command(apply(None, CREATED, RULES, NOW))
    # Same mapped properties, different unmapped timestamp and source position.
    same = change({**ROW, "updated_at": "2030-01-01T00:00:00Z"}, op="r", offset=99)
    assert only_command(apply(None, same, RULES, NOW)).desired_hash == base.desired_hash
    different = change({**ROW, "first_name": "Bob"}, op="c", offset=1)
    assert only_command(apply(None, different, RULES, NOW)).desired_hash != base.desired_hash


def test_delta_and_full_upsert_agree_on_the_desired_hash() -> None:
    updated = {**ROW, "first_name": "Alicia"}
    delta = only_command(run(None, CREATED, change(updated, offset=2)))
    full = only_command(apply(None, change(updated, offset=2), RULES, NOW))
    assert delta.properties != full.properties
    assert delta.desired_hash == full.desired_hash


def test_event_id_is_stable_per_source_event() -> None:
    first = apply(None, CREATED, RULES, NOW).change
    again = apply(None, change(ROW, op="c", offset=1), RULES, "later").change
    other = apply(None, change(ROW, op="c", offset=2), RULES, NOW).change
    assert first is not None and again is not None and other is not None
    assert first.event_id == again.event_id
    assert first.event_id != other.event_id


# --- properties -------------------------------------------------------------------------------

_EDITS = st.fixed_dictionaries(
    {
        "email": st.sampled_from(["alice@example.com", "a.smith@example.org", None]),
        "first_name": st.sampled_from(["Alice", "Alicia", " Alice ", None]),
        "city": st.sampled_from(["Berlin", "Hamburg", None]),
        "lifecycle_stage": st.sampled_from(["lead", "trial", "customer", "churned", None]),
        "plan_tier": st.sampled_from(["free", "pro", "enterprise"]),
        "consent_email": st.booleans(),
        "updated_at": st.sampled_from(["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"]),
        "deleted_at": st.sampled_from([None, None, DELETED_AT]),
    }
)
# A row image (insert, update or snapshot read), or a hard delete (None).
_STEPS = st.lists(
    st.tuples(st.sampled_from(["c", "u", "r"]), _EDITS) | st.just(("d", None)),
    min_size=1,
    max_size=12,
)


def _changes(steps: list[tuple[str, dict[str, Any] | None]]) -> list[CustomerChange]:
    return [change(fields, op=op, offset=i + 1) for i, (op, fields) in enumerate(steps)]


class FakeCrm:
    """What the CRM would hold after receiving the commands in order."""

    def __init__(self) -> None:
        self.contacts: dict[str, dict[str, Any]] = {}

    def send(self, commands: list[Command]) -> None:
        for command in commands:
            if command.action == "archive":
                self.contacts.pop(command.customer_id, None)
            else:
                self.contacts.setdefault(command.customer_id, {}).update(command.properties)


def _fold(changes: list[CustomerChange], crm: FakeCrm | None = None) -> CustomerState | None:
    state: CustomerState | None = None
    for one in changes:
        decision = apply(state, one, RULES, NOW)
        if crm is not None:
            crm.send(decision.commands)
        state = decision.state
    return state


@given(_STEPS)
def test_replaying_the_last_change_is_a_no_op(steps: list[tuple[str, Any]]) -> None:
    changes = _changes(steps)
    state = _fold(changes)
    replay = apply(state, changes[-1], RULES, NOW)
    assert replay.commands == []
    assert replay.change is None
    assert replay.state == state


@given(_STEPS)
def test_final_golden_is_the_last_record_seen(steps: list[tuple[str, Any]]) -> None:
    changes = _changes(steps)
    state = _fold(changes)
    assert state is not None
    records: list[GoldenRecord] = [c.record for c in changes if c.record is not None]
    assert state.golden == (records[-1] if records else None)
    last = changes[-1].record
    assert state.deleted == (last is None or last.deleted_at is not None)


@given(_STEPS)
def test_crm_converges_on_the_final_golden_record(steps: list[tuple[str, Any]]) -> None:
    crm = FakeCrm()
    state = _fold(_changes(steps), crm)
    assert state is not None
    if state.deleted:
        assert CID not in crm.contacts
    else:
        assert state.golden is not None
        expected = RULES.mappings["crm"].properties(state.golden, RULES.synced_fields("crm"))
        assert crm.contacts[CID] == expected
