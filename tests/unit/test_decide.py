"""apply(): what one canonical change means for each target (crm, billing, support), with the
shipped mapping (HubSpot, Stripe and Zendesk unless a test picks Salesforce) and the canonical
database owning every field (tests/unit/ownership_one_way.toml): the outbound mechanics.
Two-way ownership and conflicts are tested in test_two_way.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.domain.customer import GoldenRecord, normalise_customer
from crmsync.domain.decide import Command, CustomerState, Decision, apply
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.rules import SyncRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
OWNERSHIP = Path(__file__).parent / "ownership_one_way.toml"
MAPPING = ROOT / "config" / "mapping.toml"
RULES = load_rules(OWNERSHIP, MAPPING)
SALESFORCE = load_rules(OWNERSHIP, MAPPING, vendors={"crm": "salesforce"})
TARGETS = {"crm", "billing", "support"}
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
ID_PROPERTY = {"crm": "crmsync_id", "billing": "metadata.crmsync_id", "support": "external_id"}
CRM_PROPERTIES = {m.property for m in RULES.mappings["crm"].fields.values()} | {"crmsync_id"}
# What the CRM maps for consent and do-not-contact (and nothing else does).
CONSENT_PROPERTIES = {
    "crm": {"crmsync_consent_email", "crmsync_consent_sms", "crmsync_do_not_contact"},
    "billing": set(),
    "support": set(),
}


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


def by_target(decision: Decision) -> dict[str, Command]:
    """The decision's commands by target; at most one per target."""
    targets = [c.target for c in decision.commands]
    assert len(targets) == len(set(targets)), decision.commands
    return {c.target: c for c in decision.commands}


def only_command(decision: Decision, target: str = "crm") -> Command:
    """The single command of a decision, which must go to `target`."""
    assert len(decision.commands) == 1, decision.commands
    command = decision.commands[0]
    assert command.target == target
    return command


def desired(record: GoldenRecord, target: str, rules: SyncRules = RULES) -> dict[str, Any]:
    return rules.mappings[target].properties(record, rules.synced_fields(target))


CREATED = change(ROW, op="c", offset=1)
CREATED_STATE = apply(None, CREATED, RULES, NOW).state
DELETED_AT = "2024-05-02T00:00:00Z"


def update(**fields: Any) -> Decision:
    """Apply an update of the created customer (ROW) with `fields` changed."""
    return apply(CREATED_STATE, change({**ROW, **fields}, offset=2), RULES, NOW)


def test_shipped_rules_send_every_synced_field_to_the_crm() -> None:
    assert RULES.synced_fields("crm") == frozenset(RULES.mappings["crm"].fields)


def test_shipped_rules_pick_one_mapping_per_target() -> None:
    assert set(RULES.mappings) == TARGETS
    assert {t: m.id_property for t, m in RULES.mappings.items()} == ID_PROPERTY


# --- a new customer ---------------------------------------------------------------------------


def test_new_customer_is_one_full_create_per_target() -> None:
    commands = by_target(apply(None, CREATED, RULES, NOW))
    assert set(commands) == TARGETS
    for target, command in commands.items():
        assert command.action == "upsert"
        assert command.customer_id == CID
        assert command.id_property == ID_PROPERTY[target]
        assert command.properties[ID_PROPERTY[target]] == CID
        assert command.full is True
        assert command.lane == "create"
        assert command.source == CREATED.source
        assert command.properties == desired(CREATED.record, target)  # type: ignore[arg-type]


def test_new_customer_crm_properties_are_canonical_values_under_hubspot_names() -> None:
    command = by_target(apply(None, CREATED, RULES, NOW))["crm"]
    assert set(command.properties) == CRM_PROPERTIES  # every mapped property, even unset ones
    props = command.properties
    assert props["crmsync_id"] == CID
    assert props["email"] == "alice@example.com"
    assert props["firstname"] == "Alice"
    assert props["lastname"] == "Smith"
    assert props["phone"] == "+49301234567"
    assert props["country"] == "DE"
    assert props["date_of_birth"] == "1990-01-01"
    assert props["lifecyclestage"] == "opportunity"  # enum map trial -> opportunity
    assert props["crmsync_plan_tier"] == "pro"
    # The vendor client encodes values: the domain keeps bools as bools and unset as None.
    assert props["crmsync_consent_email"] is True
    assert props["crmsync_consent_sms"] is False
    assert props["crmsync_do_not_contact"] is False
    assert props["address"] is None
    assert props["crmsync_owner_email"] is None


def test_new_customer_billing_properties_under_stripe_names() -> None:
    assert by_target(apply(None, CREATED, RULES, NOW))["billing"].properties == {
        "metadata.crmsync_id": CID,
        "email": "alice@example.com",
        "phone": "+49301234567",
        "name": "Alice Smith",
        "address.line1": None,
        "address.city": "Berlin",
        "address.postal_code": None,
        "address.state": None,
        "address.country": "DE",
        "metadata.plan_tier": "pro",
    }


def test_new_customer_support_properties_under_zendesk_names() -> None:
    assert by_target(apply(None, CREATED, RULES, NOW))["support"].properties == {
        "external_id": CID,
        "email": "alice@example.com",
        "phone": "+49301234567",
        "name": "Alice Smith",
        "time_zone": "Europe/Berlin",
        "locale": "de-DE",
        "user_fields.plan_tier": "pro",
        "user_fields.account_status": "active",
    }


def test_new_customer_with_salesforce_uses_salesforce_names_and_id() -> None:
    commands = by_target(apply(None, CREATED, SALESFORCE, NOW))
    crm = commands["crm"]
    assert crm.id_property == "crmsync_id__c"
    assert crm.properties["crmsync_id__c"] == CID
    assert crm.properties["Email"] == "alice@example.com"
    assert crm.properties["FirstName"] == "Alice"
    assert crm.properties["Lifecycle_Stage__c"] == "Trial"
    assert crm.properties["DoNotCall"] is False
    assert "email" not in crm.properties and "crmsync_id" not in crm.properties
    hubspot = by_target(apply(None, CREATED, RULES, NOW))
    assert commands["billing"] == hubspot["billing"]  # the CRM vendor changes only the CRM
    assert commands["support"] == hubspot["support"]


def test_consent_change_with_salesforce_goes_in_the_consent_lane() -> None:
    state = apply(None, CREATED, SALESFORCE, NOW).state
    decision = apply(state, change({**ROW, "do_not_contact": True}, offset=2), SALESFORCE, NOW)
    command = only_command(decision)
    assert command.lane == "consent"
    assert command.properties == {"DoNotCall": True, "crmsync_id__c": CID}


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
    commands = by_target(apply(None, change({**ROW, "lifecycle_stage": ours}), RULES, NOW))
    assert commands["crm"].properties["lifecyclestage"] == theirs


# --- joined full name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "last", "name"),
    [
        ("Alice", "Smith", "Alice Smith"),
        ("Alice", None, "Alice"),
        (None, "Smith", "Smith"),
        ("  Alice  ", "van  der Berg", "Alice van der Berg"),  # normalised before joining
        (None, None, None),
    ],
)
def test_billing_and_support_get_first_and_last_name_joined(
    first: str | None, last: str | None, name: str | None
) -> None:
    row = {**ROW, "first_name": first, "last_name": last}
    commands = by_target(apply(None, change(row, op="c"), RULES, NOW))
    assert commands["billing"].properties["name"] == name
    assert commands["support"].properties["name"] == name
    assert commands["crm"].properties["firstname"] == (first.strip() if first else None)
    assert "name" not in commands["crm"].properties  # HubSpot keeps the two fields


def test_clearing_the_last_name_rewrites_the_joined_name() -> None:
    commands = by_target(update(last_name=None))
    assert commands["crm"].properties == {"lastname": None, "crmsync_id": CID}
    assert commands["billing"].properties == {"name": "Alice", "metadata.crmsync_id": CID}
    assert commands["support"].properties == {"name": "Alice", "external_id": CID}


def test_clearing_both_names_clears_the_joined_name() -> None:
    commands = by_target(update(first_name=None, last_name=None))
    assert commands["billing"].properties == {"name": None, "metadata.crmsync_id": CID}
    assert commands["support"].properties == {"name": None, "external_id": CID}


# --- updates ----------------------------------------------------------------------------------


def test_applying_the_same_change_again_does_nothing() -> None:
    first = apply(None, CREATED, RULES, NOW)
    again = apply(first.state, CREATED, RULES, NOW)
    assert again.commands == []
    assert again.change is None
    assert again.state == first.state


def test_update_of_one_field_sends_only_the_properties_it_feeds() -> None:
    decision = update(first_name="Alicia")
    commands = by_target(decision)
    assert commands["crm"].properties == {"firstname": "Alicia", "crmsync_id": CID}
    assert commands["billing"].properties == {"name": "Alicia Smith", "metadata.crmsync_id": CID}
    assert commands["support"].properties == {"name": "Alicia Smith", "external_id": CID}
    for command in commands.values():
        assert command.action == "upsert"
        assert command.full is False
        assert command.lane == "update"
    assert decision.change is not None
    assert decision.change.op == "updated"
    assert decision.change.changed == {"first_name": {"before": "Alice", "after": "Alicia"}}
    assert decision.state.golden is not None
    assert decision.state.golden.first_name == "Alicia"


@pytest.mark.parametrize(
    ("field", "value", "targets"),
    [
        ("birth_date", "1985-06-15", {"crm"}),
        ("company_name", "Initech", {"crm"}),
        ("lifecycle_stage", "customer", {"crm"}),
        ("owner_email", "bob@example.com", {"crm"}),
        ("street", "Hauptstr. 1", {"crm", "billing"}),
        ("postal_code", "10115", {"crm", "billing"}),
        ("timezone", "America/New_York", {"crm", "support"}),
        ("status", "suspended", {"crm", "support"}),
        ("email", "alice@example.org", TARGETS),
        ("plan_tier", "enterprise", TARGETS),
    ],
)
def test_a_change_reaches_only_the_targets_its_field_flows_to(
    field: str, value: Any, targets: set[str]
) -> None:
    assert set(by_target(update(**{field: value}))) == targets


def test_a_crm_only_field_change_sends_one_crm_update() -> None:
    command = only_command(update(birth_date="1985-06-15"))
    assert command.properties == {"date_of_birth": "1985-06-15", "crmsync_id": CID}
    assert command.full is False
    assert command.lane == "update"


def test_update_of_an_enum_sends_the_mapped_value() -> None:
    command = only_command(update(lifecycle_stage="customer"))
    assert command.properties == {"lifecyclestage": "customer", "crmsync_id": CID}


def test_clearing_a_field_sends_none_to_every_target_that_has_it() -> None:
    commands = by_target(update(city=None))
    assert commands["crm"].properties == {"city": None, "crmsync_id": CID}
    assert commands["billing"].properties == {"address.city": None, "metadata.crmsync_id": CID}
    assert set(commands) == {"crm", "billing"}


@pytest.mark.parametrize(
    ("field", "value", "prop"),
    [
        ("consent_email", False, "crmsync_consent_email"),
        ("consent_sms", True, "crmsync_consent_sms"),
        ("do_not_contact", True, "crmsync_do_not_contact"),
    ],
)
def test_consent_change_goes_in_the_consent_lane_to_the_crm_only(
    field: str, value: bool, prop: str
) -> None:
    command = only_command(update(**{field: value}))
    assert command.lane == "consent"
    assert command.full is False
    assert command.properties == {prop: value, "crmsync_id": CID}


def test_consent_change_with_other_edits_puts_only_the_crm_command_in_the_consent_lane() -> None:
    commands = by_target(update(do_not_contact=True, email="alice@example.org"))
    assert commands["crm"].lane == "consent"
    assert commands["crm"].properties == {
        "crmsync_do_not_contact": True,
        "email": "alice@example.org",
        "crmsync_id": CID,
    }
    assert commands["billing"].lane == "update"
    assert commands["support"].lane == "update"


def test_ordinary_update_goes_in_the_update_lane() -> None:
    commands = by_target(update(email="alice@example.org", city="Hamburg"))
    assert {t: c.lane for t, c in commands.items()} == {t: "update" for t in TARGETS}
    assert commands["crm"].properties == {
        "email": "alice@example.org",
        "city": "Hamburg",
        "crmsync_id": CID,
    }


def test_first_command_is_full_and_a_later_one_carries_only_the_delta() -> None:
    first = by_target(apply(None, CREATED, RULES, NOW))["crm"]
    assert first.full is True
    assert first.properties == desired(CREATED.record, "crm")  # type: ignore[arg-type]
    assert first.properties["crmsync_owner_email"] is None  # unset values are included
    later = by_target(update(city="Hamburg"))["crm"]
    assert later.full is False
    assert later.properties == {"city": "Hamburg", "crmsync_id": CID}


def test_update_touching_only_updated_at_does_nothing() -> None:
    decision = update(updated_at="2024-06-01T00:00:00Z")
    assert decision.commands == []
    assert decision.change is None


def test_whitespace_only_edit_does_nothing() -> None:
    decision = update(first_name="  Alice ")
    assert decision.commands == []
    assert decision.change is None


# --- deletes and restores ---------------------------------------------------------------------


def test_soft_delete_archives_on_every_target_and_is_published_as_deleted() -> None:
    decision = update(deleted_at=DELETED_AT)
    commands = by_target(decision)
    assert set(commands) == TARGETS
    for target, command in commands.items():
        assert command.action == "archive"
        assert command.properties == {ID_PROPERTY[target]: CID}
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


def test_hard_delete_of_a_known_customer_archives_on_every_target() -> None:
    decision = apply(CREATED_STATE, change(None, op="d", offset=2), RULES, NOW)
    commands = by_target(decision)
    assert set(commands) == TARGETS
    assert {c.action for c in commands.values()} == {"archive"}
    assert decision.change is not None
    assert decision.change.op == "deleted"
    assert decision.state.golden == CREATED.record  # the last known record is kept


def test_hard_delete_of_an_unknown_customer_still_archives_on_every_target() -> None:
    decision = apply(None, change(None, op="d", offset=7), RULES, NOW)
    commands = by_target(decision)
    assert set(commands) == TARGETS
    for target, command in commands.items():
        assert command.action == "archive"
        assert command.properties == {ID_PROPERTY[target]: CID}
    assert decision.change is not None
    assert decision.change.op == "deleted"
    assert decision.state.deleted is True


def test_restore_after_archive_is_a_full_create_again() -> None:
    soft = run(None, CREATED, change({**ROW, "deleted_at": DELETED_AT}, offset=2))
    decision = apply(soft.state, change(ROW, offset=3), RULES, NOW)
    commands = by_target(decision)
    created = by_target(apply(None, CREATED, RULES, NOW))
    assert set(commands) == TARGETS
    for target, command in commands.items():
        assert command.action == "upsert"
        assert command.full is True
        assert command.lane == "create"
        assert command.properties == created[target].properties
    assert decision.change is not None
    assert decision.change.op == "restored"
    assert decision.change.changed == {"deleted_at": {"before": DELETED_AT, "after": None}}
    assert decision.state.deleted is False


def test_restore_after_hard_delete_sends_the_full_property_set() -> None:
    deleted = run(None, CREATED, change(None, op="d", offset=2))
    decision = apply(deleted.state, change({**ROW, "first_name": "Al"}, offset=3), RULES, NOW)
    commands = by_target(decision)
    assert set(commands["crm"].properties) == CRM_PROPERTIES
    assert commands["crm"].properties["firstname"] == "Al"
    assert commands["billing"].properties["name"] == "Al Smith"
    assert all(c.full and c.lane == "create" for c in commands.values())
    assert decision.change is not None
    assert decision.change.op == "restored"


def test_consent_change_while_restoring_is_a_create_not_a_consent_update() -> None:
    soft = run(None, CREATED, change({**ROW, "deleted_at": DELETED_AT}, offset=2))
    decision = apply(soft.state, change({**ROW, "do_not_contact": True}, offset=3), RULES, NOW)
    crm = by_target(decision)["crm"]
    assert crm.lane == "create"
    assert crm.full is True
    assert crm.properties["crmsync_do_not_contact"] is True


# --- keys and hashes --------------------------------------------------------------------------


def test_idempotency_key_is_stable_for_one_source_event() -> None:
    first = by_target(apply(None, CREATED, RULES, NOW))
    again = by_target(apply(None, change(ROW, op="c", offset=1), RULES, "later"))
    assert {t: c.idempotency_key for t, c in first.items()} == {
        t: c.idempotency_key for t, c in again.items()
    }


def test_idempotency_key_differs_per_target() -> None:
    keys = {c.idempotency_key for c in apply(None, CREATED, RULES, NOW).commands}
    assert len(keys) == len(TARGETS)


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
    first = by_target(apply(None, CREATED, RULES, NOW))
    for target, command in by_target(apply(None, other, RULES, NOW)).items():
        assert command.idempotency_key != first[target].idempotency_key


def test_idempotency_key_differs_per_customer() -> None:
    first = by_target(apply(None, CREATED, RULES, NOW))
    other = by_target(apply(None, change(ROW, op="c", customer_id="other-id"), RULES, NOW))
    for target, command in other.items():
        assert command.idempotency_key != first[target].idempotency_key


def test_desired_hash_depends_only_on_the_desired_properties() -> None:
    base = by_target(apply(None, CREATED, RULES, NOW))
    # Same mapped properties, different unmapped timestamp and source position.
    same = change({**ROW, "updated_at": "2030-01-01T00:00:00Z"}, op="r", offset=99)
    for target, command in by_target(apply(None, same, RULES, NOW)).items():
        assert command.desired_hash == base[target].desired_hash
    # A CRM-only field changes the CRM's desired state, not billing's or support's.
    other = by_target(apply(None, change({**ROW, "birth_date": "1985-06-15"}), RULES, NOW))
    assert other["crm"].desired_hash != base["crm"].desired_hash
    assert other["billing"].desired_hash == base["billing"].desired_hash
    assert other["support"].desired_hash == base["support"].desired_hash


def test_delta_and_full_upsert_agree_on_the_desired_hash() -> None:
    updated = {**ROW, "first_name": "Alicia"}
    delta = by_target(run(None, CREATED, change(updated, offset=2)))
    full = by_target(apply(None, change(updated, offset=2), RULES, NOW))
    assert set(delta) == set(full) == TARGETS
    for target in TARGETS:
        assert delta[target].properties != full[target].properties
        assert delta[target].desired_hash == full[target].desired_hash


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
        "last_name": st.sampled_from(["Smith", "Jones", None]),
        "city": st.sampled_from(["Berlin", "Hamburg", None]),
        "birth_date": st.sampled_from(["1990-01-01", "1985-06-15", None]),
        "timezone": st.sampled_from(["Europe/Berlin", "America/New_York", None]),
        "lifecycle_stage": st.sampled_from(["lead", "trial", "customer", "churned", None]),
        "plan_tier": st.sampled_from(["free", "pro", "enterprise"]),
        "consent_email": st.booleans(),
        "do_not_contact": st.booleans(),
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


class FakeTargets:
    """What each target would hold after receiving the commands in order. With `replace`, a
    full command replaces the record (a vendor client may PUT it); else every upsert merges."""

    def __init__(self, replace: bool = False) -> None:
        self.replace = replace
        self.records: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TARGETS}

    def send(self, commands: list[Command]) -> None:
        for command in commands:
            records = self.records[command.target]
            if command.action == "archive":
                records.pop(command.customer_id, None)
            elif command.full and self.replace:
                records[command.customer_id] = dict(command.properties)
            else:
                records.setdefault(command.customer_id, {}).update(command.properties)


def _fold(
    changes: list[CustomerChange], targets: FakeTargets | None = None
) -> CustomerState | None:
    state: CustomerState | None = None
    for one in changes:
        decision = apply(state, one, RULES, NOW)
        if targets is not None:
            targets.send(decision.commands)
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


@given(_STEPS, st.booleans())
def test_every_target_converges_on_the_final_golden_record(
    steps: list[tuple[str, Any]], replace: bool
) -> None:
    targets = FakeTargets(replace)
    state = _fold(_changes(steps), targets)
    assert state is not None
    for target, records in targets.records.items():
        if state.deleted:
            assert CID not in records, target
        else:
            assert state.golden is not None
            assert records[CID] == desired(state.golden, target), target


@given(_STEPS)
def test_lanes_and_full_follow_what_the_target_holds(steps: list[tuple[str, Any]]) -> None:
    """A target without the customer gets everything in the create lane; one that has it gets
    only what differs, in the consent lane when consent or do-not-contact is among it."""
    targets = FakeTargets()
    state: CustomerState | None = None
    for one in _changes(steps):
        decision = apply(state, one, RULES, NOW)
        for command in decision.commands:
            if command.action == "archive":
                continue
            assert one.record is not None
            held = targets.records[command.target].get(CID)
            if held is None:
                assert command.full is True
                assert command.lane == "create"
                assert command.properties == desired(one.record, command.target)
            else:
                assert command.full is False
                changed = {k for k, v in command.properties.items() if held.get(k) != v}
                assert changed == set(command.properties) - {command.id_property}
                assert changed, "an upsert that changes nothing is not sent"
                consent = changed & CONSENT_PROPERTIES[command.target]
                assert command.lane == ("consent" if consent else "update")
        targets.send(decision.commands)
        state = decision.state
