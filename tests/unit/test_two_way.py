"""Two-way rules with the shipped ownership matrix: who may change a field, how conflicts are
settled, echoes dropped and write-backs recognised (crmsync.domain.decide, pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crmsync.domain.customer import normalise_customer
from crmsync.domain.decide import CustomerState, Decision, apply, judge
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.domain.inbound import InboundChange, Relinked, Resolution, decode, split_name
from crmsync.domain.writes import Ledger, Written
from crmsync.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "ownership.toml", ROOT / "config" / "mapping.toml")
NOW = "2024-05-01T10:00:00+00:00"
CID = "7f3e2b1a-0c9d-4e8f-a7b6-c5d4e3f2a1b0"
T0 = 1_714_557_600_000  # the customer's creation, epoch ms
ROW: dict[str, Any] = {
    "id": CID, "email": "ada@example.com", "phone": "+44 20 7946 0000", "first_name": "Ada",
    "last_name": "Lovelace", "country": "GB", "plan_tier": "pro", "status": "active",
    "timezone": "Europe/London", "language": "en",
}  # fmt: skip


def canonical(fields: dict[str, Any], *, offset: int, at: int, before: dict[str, Any] | None = None,
              op: str = "u", origin: str | None = None) -> CustomerChange:  # fmt: skip
    return CustomerChange(
        customer_id=CID,
        op=op,  # type: ignore[arg-type]
        record=normalise_customer({**ROW, **fields}),
        before=normalise_customer({**ROW, **before}) if before is not None else None,
        origin=origin,
        source=SourcePosition(topic="crmsync.public.customers", partition=0, offset=offset,
                              op=op, lsn=offset, ts_ms=at),  # type: ignore[arg-type]
    )  # fmt: skip


def hubspot(
    props: dict[str, Any],
    *,
    at: int,
    offset: int = 1,
    previous: dict[str, Any] | None = None,
    deleted: bool = False,
    written: Ledger | None = None,
) -> InboundChange:
    """A HubSpot contact update (`previous`: what it held before; {} when unknown;
    `written`: what we had written to the contact, `sync.target_writes`)."""
    return InboundChange(
        customer_id=CID, system="crm", properties={"crmsync_id": CID, **props},
        previous={} if previous is None else previous, deleted=deleted, written=written or {},
        source=SourcePosition(system="crm", topic="crmsync.staging.crm_contacts", partition=0,
                              offset=offset, op="u", ts_ms=at, external_id="501"),
    )  # fmt: skip


def zendesk(
    props: dict[str, Any], *, at: int, offset: int = 1, first_seen: bool = False
) -> InboundChange:
    return InboundChange(
        customer_id=CID, system="support", properties={"external_id": CID, **props},
        previous=None if first_seen else {}, deleted=False,
        source=SourcePosition(system="support", topic="crmsync.staging.support_users",
                              partition=0, offset=offset, op="u", ts_ms=at, external_id="9"),
    )  # fmt: skip


def stripe(props: dict[str, Any], *, at: int, offset: int = 1) -> InboundChange:
    return InboundChange(
        customer_id=CID, system="billing", properties={"metadata.crmsync_id": CID, **props},
        previous={}, deleted=False,
        source=SourcePosition(system="billing", topic="crmsync.staging.billing_customers",
                              partition=0, offset=offset, op="u", ts_ms=at, external_id="cus_1"),
    )  # fmt: skip


def step(state: CustomerState | None, change: Any) -> Decision:
    decision = apply(state, change, RULES, NOW)
    assert decision is not None
    return decision


CREATED = step(None, canonical({}, offset=0, at=T0, op="c")).state


def targets(decision: Decision) -> dict[str, dict[str, Any]]:
    return {c.target: c.properties for c in decision.commands}


def test_an_owner_edit_is_applied_written_back_and_sent_to_the_others() -> None:
    decision = step(CREATED, hubspot({"crmsync_plan_tier": "enterprise"}, at=T0 + 60_000))
    assert decision.state.golden.plan_tier == "enterprise"  # type: ignore[union-attr]
    sent = targets(decision)
    assert set(sent) == {"billing", "support"}  # not back to the CRM, which made it
    assert sent["billing"]["metadata.plan_tier"] == "enterprise"
    assert sent["support"]["user_fields.plan_tier"] == "enterprise"
    assert decision.writeback is not None
    assert decision.writeback.values == {"plan_tier": "enterprise"}
    assert decision.writeback.expected == {"plan_tier": "pro"}
    assert decision.writeback.origin.startswith("crm:")
    assert decision.change is not None and decision.change.provenance.system == "crm"
    assert decision.change.changed == {"plan_tier": {"before": "pro", "after": "enterprise"}}
    assert decision.attempts == []


def test_a_non_owner_edit_is_reverted_there_and_audited() -> None:
    decision = step(CREATED, zendesk({"user_fields.plan_tier": "free"}, at=T0 + 60_000))
    assert decision.state.golden.plan_tier == "pro"  # type: ignore[union-attr]
    (command,) = decision.commands
    assert (command.target, command.force) == ("support", True)
    assert command.properties == {"user_fields.plan_tier": "pro", "external_id": CID}
    (attempt,) = decision.attempts
    assert (attempt.system, attempt.field, attempt.outcome) == ("support", "plan_tier", "rejected")
    assert (attempt.current, attempt.proposed) == ("pro", "free")
    assert "owner: crm" in attempt.reason
    assert decision.writeback is None and decision.change is None


def test_an_app_may_not_change_a_crm_owned_field_its_row_is_reverted() -> None:
    decision = step(CREATED, canonical({"plan_tier": "free"}, before={}, offset=1, at=T0 + 9_000))
    assert decision.state.golden.plan_tier == "pro"  # type: ignore[union-attr]
    assert decision.commands == []
    assert decision.writeback is not None
    assert (decision.writeback.values, decision.writeback.expected) == (
        {"plan_tier": "pro"}, {"plan_tier": "free"},
    )  # fmt: skip
    assert decision.attempts[0].outcome == "rejected"


def test_the_echo_of_a_value_we_wrote_is_no_change() -> None:
    decision = step(CREATED, hubspot({"phone": "+442079460000", "firstname": "Ada"}, at=T0 + 1))
    assert decision.commands == [] and decision.change is None and decision.writeback is None
    assert decision.attempts == []


def test_our_own_write_back_into_the_canonical_row_starts_no_round() -> None:
    applied = step(CREATED, hubspot({"phone": "+44 20 7946 1111"}, at=T0 + 60_000))
    echo = canonical({"phone": "+442079461111"}, before={}, offset=2, at=T0 + 60_300,
                     origin=applied.writeback.origin)  # type: ignore[union-attr]  # fmt: skip
    decision = step(applied.state, echo)
    assert decision.commands == [] and decision.change is None and decision.writeback is None


def test_a_value_the_record_already_held_is_not_a_change_it_made() -> None:
    """The CRM is behind (our write is on its way): its old value is not a proposal."""
    moved = step(CREATED, canonical({"phone": "+44 20 7946 2222"}, before={}, offset=1,
                                    at=T0 + 60_000)).state  # fmt: skip
    stale = hubspot({"phone": "+442079460000", "lastname": "King"}, at=T0 + 61_000,
                    previous={"phone": "+442079460000", "lastname": "Lovelace"})  # fmt: skip
    decision = step(moved, stale)
    assert decision.state.golden.phone == "+442079462222"  # type: ignore[union-attr]
    assert decision.state.golden.last_name == "King"  # type: ignore[union-attr]


def test_the_first_copy_of_a_record_keeps_its_own_defaults_but_shows_edits() -> None:
    """Zendesk fills in its default locale where we sent none; a phone edited there before
    the first copy came back is an edit."""
    golden = CREATED.golden.model_copy(update={"language": None})  # type: ignore[union-attr]
    state = CREATED.model_copy(update={"golden": golden})
    first = zendesk({"locale": "en-US", "phone": "+44 20 7946 5555"}, at=T0 + 60_000,
                    first_seen=True)  # fmt: skip
    decision = step(state, first)
    assert decision.state.golden.language is None  # type: ignore[union-attr]
    assert decision.state.golden.phone == "+442079465555"  # type: ignore[union-attr]


def test_a_late_echo_from_a_system_we_sent_the_newer_value_is_recorded_not_rewritten() -> None:
    moved = step(CREATED, canonical({"phone": "+44 20 7946 2222"}, before={}, offset=1,
                                    at=T0 + 60_000)).state  # fmt: skip
    late = hubspot({"phone": "+44 20 7946 1111"}, at=T0 + 30_000)  # made before ours
    decision = step(moved, late)
    assert decision.state.golden.phone == "+442079462222"  # type: ignore[union-attr]
    assert decision.commands == []  # the newer value is already on its way to the CRM
    assert [a.outcome for a in decision.attempts] == ["rejected"]


def test_our_own_earlier_write_arriving_late_is_an_echo_not_an_edit() -> None:
    """Under a backlog the CRM applies our writes, and reports each one back, well after the
    app moved on: a value we sent it before is our write arriving late, however recent its
    timestamp, not an edit that should win on time and send the customer back in time."""
    first = step(CREATED, canonical({"region": "B1"}, before={}, offset=1, at=T0 + 1_000))
    second = step(first.state, canonical({"region": "B2"}, before={"region": "B1"}, offset=2,
                                         at=T0 + 2_000))  # fmt: skip
    assert targets(first)["crm"]["state"] == "B1" and targets(second)["crm"]["state"] == "B2"
    # The CRM took both writes by T0 + 50 s (sync.target_writes), and reports B1 at T0 + 60 s.
    written = {"state": Written(values=("B1", "B2"), at=T0 + 50_000)}
    late = hubspot({"state": "B1"}, at=T0 + 60_000, previous={"state": None}, written=written)
    decision = step(second.state, late)
    assert decision.state.golden.region == "B2"  # type: ignore[union-attr]
    assert decision.writeback is None and decision.change is None and decision.attempts == []
    # Without the ledger, it is taken for an edit: the ledger is what tells.
    assert step(second.state, late.model_copy(update={"written": {}})).writeback is not None
    # A value we never sent it is still an edit made there, and wins on time.
    edited = hubspot({"state": "B9"}, at=T0 + 60_000, previous={"state": "B2"}, written=written)
    assert step(second.state, edited).state.golden.region == "B9"  # type: ignore[union-attr]


def test_after_a_re_snapshot_a_stale_copy_of_a_record_changes_nothing() -> None:
    """The broker was rebased: the state is rebuilt from a snapshot of the row (read at
    T0 + 90 s), and the CRM's staged copy, made before, still shows the old name."""
    snapshot = canonical({"first_name": "Augusta"}, offset=9, at=T0 + 90_000, op="r")
    rebuilt = step(None, snapshot).state
    stale = hubspot({"firstname": "Ada"}, at=T0 + 1_000, previous=None)
    decision = step(rebuilt, stale.model_copy(update={"previous": None}))
    assert decision.state.golden.first_name == "Augusta"  # type: ignore[union-attr]
    assert decision.commands == [] and decision.writeback is None


def test_an_owner_edit_applies_even_if_stamped_before_the_row_was_last_read() -> None:
    """Clocks differ: a CRM plan change stamped a second before the snapshot still wins."""
    rebuilt = step(None, canonical({}, offset=9, at=T0 + 90_000, op="r")).state
    decision = step(rebuilt, hubspot({"crmsync_plan_tier": "enterprise"}, at=T0 + 89_000))
    assert decision.state.golden.plan_tier == "enterprise"  # type: ignore[union-attr]


def test_an_edit_right_after_creation_is_no_conflict_with_the_creation() -> None:
    decision = step(CREATED, hubspot({"phone": "+44 20 7946 7777"}, at=T0 + 3_000))
    assert decision.state.golden.phone == "+442079467777"  # type: ignore[union-attr]
    assert decision.attempts == []


def test_a_redelivered_canonical_change_is_dropped() -> None:
    applied = step(CREATED, hubspot({"phone": "+44 20 7946 1111"}, at=T0 + 60_000)).state
    replayed = canonical({}, offset=0, at=T0, op="c")  # the create, delivered again
    decision = step(applied, replayed)
    assert decision.state.golden.phone == "+442079461111"  # type: ignore[union-attr]
    assert decision.commands == [] and decision.change is None


def test_an_app_update_of_one_field_is_not_read_as_changing_the_others() -> None:
    applied = step(CREATED, hubspot({"phone": "+44 20 7946 1111"}, at=T0 + 60_000)).state
    # The app's update committed before our write-back: its row still has the old phone.
    app_edit = canonical({"email": "ada@lovelace.org"}, before={}, offset=3, at=T0 + 60_100)
    decision = step(applied, app_edit)
    assert decision.state.golden.phone == "+442079461111"  # type: ignore[union-attr]
    assert decision.state.golden.email == "ada@lovelace.org"  # type: ignore[union-attr]


def test_a_later_change_to_a_shared_field_wins() -> None:
    first = step(CREATED, hubspot({"phone": "+44 20 7946 1111"}, at=T0 + 60_000)).state
    decision = step(first, zendesk({"phone": "+44 20 7946 3333"}, at=T0 + 66_000))
    assert decision.state.golden.phone == "+442079463333"  # type: ignore[union-attr]
    assert set(targets(decision)) == {"crm", "billing"}


@pytest.mark.parametrize(
    ("first", "second", "field", "winner"),
    [
        # a customer's self-service change (the canonical apps) beats the CRM's within 5 s
        ("canonical", "crm", "phone", "canonical"),
        ("crm", "canonical", "phone", "canonical"),
        # the sales team beats support for contact details
        ("support", "crm", "phone", "crm"),
        ("crm", "support", "phone", "crm"),
        # support beats the CRM for account status
        ("crm", "support", "status", "support"),
        ("support", "crm", "status", "support"),
    ],
)
def test_precedence_settles_conflicts_inside_the_window(
    first: str, second: str, field: str, winner: str
) -> None:
    verdict, reason = judge(RULES, field, second, T0 + 2_000, (first, T0))
    assert verdict == ("apply" if winner == second else "reject"), reason


def test_two_systems_within_the_window_without_precedence_go_to_review() -> None:
    first = step(CREATED, stripe({"email": "ada@billing.example"}, at=T0 + 60_000)).state
    decision = step(first, zendesk({"email": "ada@support.example"}, at=T0 + 62_000))
    assert decision.state.golden.email == "ada@billing.example"  # type: ignore[union-attr]
    assert decision.commands == [] and decision.writeback is None  # nothing overwritten
    (attempt,) = decision.attempts
    assert attempt.outcome == "review"
    assert attempt.current_source == ("billing", T0 + 60_000)
    assert (attempt.current, attempt.proposed) == ("ada@billing.example", "ada@support.example")


def test_an_older_change_loses_to_the_later_one_and_is_recorded() -> None:
    first = step(CREATED, stripe({"email": "ada@billing.example"}, at=T0 + 60_000)).state
    decision = step(first, zendesk({"email": "ada@old.example"}, at=T0 + 50_000))
    assert decision.state.golden.email == "ada@billing.example"  # type: ignore[union-attr]
    (attempt,) = decision.attempts
    assert attempt.outcome == "rejected" and "later change wins" in attempt.reason
    # Support was sent the later value after it made this change: nothing more to write.
    assert decision.commands == []


def test_a_resolution_is_written_to_every_system() -> None:
    first = step(CREATED, stripe({"email": "ada@billing.example"}, at=T0 + 60_000)).state
    resolution = Resolution(
        customer_id=CID, field="email", value="ada@support.example", review_id=1,
        resolved_by="tester",
        source=SourcePosition(system="review", topic="crmsync.review", partition=0, offset=1,
                              op="u", ts_ms=T0 + 70_000),
    )  # fmt: skip
    decision = step(first, resolution)
    assert decision.state.golden.email == "ada@support.example"  # type: ignore[union-attr]
    assert {c.target for c in decision.commands} == {"crm", "billing", "support"}
    assert all(c.force for c in decision.commands)
    assert decision.writeback is not None
    assert decision.writeback.expected == {"email": "ada@billing.example"}


def test_a_record_deleted_in_a_target_is_recreated_and_audited() -> None:
    decision = step(CREATED, hubspot({}, at=T0 + 60_000, deleted=True))
    (command,) = decision.commands
    assert (command.target, command.full, command.force) == ("crm", True, True)
    assert command.properties["email"] == "ada@example.com"
    assert decision.attempts[0].outcome == "rejected"


def test_an_inbound_change_for_an_unknown_customer_is_nothing() -> None:
    assert apply(None, hubspot({"phone": "+44 20 7946 1111"}, at=T0), RULES, NOW) is None


def test_ping_pong_between_two_systems_converges_with_bounded_writes() -> None:
    """Alternating edits, each after the other's reached everyone: every edit is applied
    once, costs one write to each other target and no echo round."""
    state, writes = CREATED, 0
    for n in range(10):
        phone = f"+44 20 7946 {1000 + n}"
        edit = (hubspot if n % 2 else zendesk)({"phone": phone}, at=T0 + 60_000 * (n + 1))
        decision = step(state, edit)
        writes += len(decision.commands)
        state = decision.state
        for echo in (hubspot, zendesk, stripe):  # every system reports the value back
            echoed = step(state, echo({"phone": phone}, at=T0 + 60_000 * (n + 1) + 500))
            assert echoed.commands == [] and echoed.attempts == []
    assert state.golden.phone == "+442079461009"  # type: ignore[union-attr]
    assert writes == 10 * 2


def test_decode_splits_a_full_name_keeping_what_still_fits() -> None:
    golden = normalise_customer(ROW)
    assert split_name("Ada King", ("first_name", "last_name"), golden) == {
        "first_name": "Ada", "last_name": "King",
    }  # fmt: skip
    assert split_name("Augusta Ada Lovelace", ("first_name", "last_name"), golden) == {
        "first_name": "Augusta Ada", "last_name": "Lovelace",
    }  # fmt: skip
    mapping = RULES.mappings["crm"]
    properties = {"crmsync_consent_email": "true", "lifecyclestage": "opportunity",
                  "phone": "020 7946 0000", "country": "GB"}  # fmt: skip
    decoded, problems = decode(mapping, properties, golden)
    assert decoded == {"consent_email": True, "lifecycle_stage": "trial",
                       "phone": "+442079460000", "country": "GB"}  # fmt: skip
    assert problems == {}


def test_an_unreadable_value_is_refused_and_the_rest_of_the_change_applies() -> None:
    """HubSpot has stages crmsync maps to none; the phone edited with it still counts."""
    edit = hubspot({"lifecyclestage": "salesqualifiedlead", "phone": "+44 20 7946 8888"},
                   at=T0 + 60_000)  # fmt: skip
    decision = step(CREATED, edit)
    assert decision.state.golden.phone == "+442079468888"  # type: ignore[union-attr]
    (reason,) = decision.invalid
    assert "lifecycle_stage" in reason and "salesqualifiedlead" in reason


def linked(props: dict[str, Any], *, at: int, method: str = "fuzzy") -> InboundChange:
    """A contact someone made by hand in HubSpot, just linked to the customer."""
    return InboundChange(
        customer_id=CID, system="crm", properties=props, previous=None, deleted=False,
        source=SourcePosition(system="crm", topic="crmsync.staging.crm_contacts", partition=0,
                              offset=7, op="c", ts_ms=at, external_id="777"),
        link=method,
    )  # fmt: skip


def test_a_linked_record_fills_contact_gaps_and_is_written_over_with_the_golden_record() -> None:
    decision = step(CREATED, linked(
        {"firstname": "Adda", "lastname": "Lovelace", "city": "London", "zip": "NW1 6XE",
         "crmsync_timezone": "Etc/UTC", "crmsync_plan_tier": "free"},
        at=T0 + 60_000,
    ))  # fmt: skip
    golden = decision.state.golden
    assert golden is not None
    # Its contact details fill what the customer lacked; the golden name stays.
    assert (golden.city, golden.postal_code, golden.first_name) == ("London", "NW1 6XE", "Ada")
    # Settings are the target's defaults, not what a person said: not taken.
    assert (golden.timezone, golden.plan_tier) == ("Europe/London", "pro")
    assert decision.writeback is not None
    assert decision.writeback.values == {"city": "London", "postal_code": "NW1 6XE"}
    assert decision.writeback.expected == {"city": None, "postal_code": None}
    crm = next(c for c in decision.commands if c.target == "crm")
    assert (crm.full, crm.force) == (True, True)  # the whole golden record, by its own id
    assert crm.properties["firstname"] == "Ada" and crm.properties["crmsync_id"] == CID
    assert crm.properties["crmsync_plan_tier"] == "pro"
    # The gaps it filled go to the other targets; what it lost is on record.
    assert targets(decision)["billing"]["address.city"] == "London"
    refused = {(a.field, a.proposed, a.outcome) for a in decision.attempts}
    assert refused == {("first_name", "Adda", "rejected"), ("timezone", "Etc/UTC", "rejected"),
                       ("plan_tier", "free", "rejected")}  # fmt: skip


def test_relinked_writes_the_whole_golden_record_to_those_systems_only() -> None:
    relinked = Relinked(
        customer_id=CID, systems=["crm", "support"], reason="merge 1",
        source=SourcePosition(system="identity", topic="sync.merges", partition=0, offset=1,
                              op="u", ts_ms=T0 + 1),
    )  # fmt: skip
    decision = step(CREATED, relinked)
    assert {c.target for c in decision.commands} == {"crm", "support"}
    assert all(c.full and c.force for c in decision.commands)
    assert decision.change is None and decision.state.golden == CREATED.golden
    deleted = step(CREATED, canonical({"deleted_at": "2024-05-01T10:00:00Z"}, offset=5, at=T0 + 5))
    assert apply(deleted.state, relinked, RULES, NOW) is None  # nothing to write for the gone
