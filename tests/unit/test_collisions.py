"""Email collisions, the pure part: which canonical change claims an email, what a change
becomes while another customer holds its email, the row read again after the decision, and
the matcher's verdict on two customers with one email (crmsync.domain.collisions,
crmsync.domain.identity.email_collision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crmsync.domain.collisions import EmailClaim, email_claim, gated, reread
from crmsync.domain.customer import GoldenRecord, normalise_customer
from crmsync.domain.decide import CustomerState, apply
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.domain.identity import Candidate, Thresholds, email_collision, match, person_of
from crmsync.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
RULES = load_rules(ROOT / "config" / "ownership.toml", ROOT / "config" / "mapping.toml")
NOW = "2024-05-01T10:00:00+00:00"
A = "0a5e4b9e-0000-4000-8000-00000000000a"
B = "0b5e4b9e-0000-4000-8000-00000000000b"
ADA = {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}
BOB = {"email": "bob@example.com", "first_name": "Bob", "last_name": "Builder", "phone": None}


def record(fields: dict[str, Any], customer_id: str = B, **more: Any) -> GoldenRecord:
    return normalise_customer({"id": customer_id, **fields, **more})


def change(
    after: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
    *,
    op: str = "u",
    offset: int = 1,
) -> CustomerChange:
    source = SourcePosition(topic="crmsync.public.customers", partition=0, offset=offset,
                            op=op, lsn=offset * 100, tx_id=offset,
                            ts_ms=1714557600000 + offset)  # type: ignore[arg-type]  # fmt: skip
    return CustomerChange(
        customer_id=B, op=op,  # type: ignore[arg-type]
        record=None if after is None else record(after),
        before=None if before is None else record(before), source=source,
    )  # fmt: skip


def live(fields: dict[str, Any]) -> CustomerState:
    """B's state once its insert was decided with `fields`."""
    decision = apply(None, change(fields, op="c", offset=0), RULES, NOW)
    assert decision is not None
    return decision.state


# Which changes claim an email.


def test_a_new_customer_claims_its_email_and_one_without_an_email_claims_nothing() -> None:
    assert email_claim(None, change(BOB, op="c")) == EmailClaim(B, "bob@example.com")
    assert email_claim(None, change({**BOB, "email": None}, op="r")) is None


def test_an_update_claims_an_email_only_when_the_app_changed_it() -> None:
    golden = live(BOB).golden
    phone = {**BOB, "phone": "+4930123456"}
    assert email_claim(golden, change(phone, BOB)) is None  # an ordinary update: no query
    given = email_claim(golden, change({**BOB, "email": "ada@example.com"}, BOB))
    assert given == EmailClaim(B, "ada@example.com")
    # The app gave it earlier and it was withheld: later updates leave it withheld.
    withheld = {**phone, "email": "ada@example.com"}
    assert email_claim(golden, change(withheld, {**BOB, "email": "ada@example.com"})) is None
    # A snapshot of the row claims it again.
    assert email_claim(golden, change(withheld, op="r")) == given


def test_a_delete_or_a_removed_email_frees_what_the_customer_held() -> None:
    golden = live(BOB).golden
    assert email_claim(golden, change(None, op="d")) == EmailClaim(B, None)
    deleted = {**BOB, "deleted_at": "2024-05-01T10:00:00Z"}
    assert email_claim(golden, change(deleted, BOB)) == EmailClaim(B, None)
    removed = change({**BOB, "email": None}, BOB)
    assert email_claim(golden, removed) == EmailClaim(B, None)
    # Deleting a customer never synced still clears a wait it may have had.
    assert email_claim(None, change(None, op="d")) == EmailClaim(B, None)


def test_a_restored_customer_claims_its_email_again() -> None:
    restored = change(BOB, {**BOB, "deleted_at": "2024-05-01T10:00:00Z"})
    assert email_claim(None, restored) == EmailClaim(B, "bob@example.com")


# What a change becomes while another customer holds its email.


def test_a_new_customer_given_a_held_email_is_not_written_until_the_decision() -> None:
    insert = change({**BOB, "email": "ada@example.com"}, op="c")
    assert gated(None, insert, "granted") is insert
    assert gated(None, insert, "held") is None


def test_a_new_customer_kept_apart_is_written_without_the_email() -> None:
    insert = change({**BOB, "email": "ada@example.com"}, op="c")
    apart = gated(None, insert, "apart")
    assert apart is not None and apart.record is not None
    assert apart.record.email is None and apart.record.first_name == "Bob"
    decision = apply(None, apart, RULES, NOW)
    assert decision is not None and {c.target for c in decision.commands} == set(RULES.mappings)
    for command in decision.commands:
        assert "ada@example.com" not in command.properties.values()


def test_a_live_customer_keeps_its_email_in_the_targets_and_the_rest_of_the_change_flows() -> None:
    state = live(BOB)
    update = change({**BOB, "email": "ada@example.com", "do_not_contact": True}, BOB)
    for gate in ("held", "apart"):
        decided = gated(state.golden, update, gate)  # type: ignore[arg-type]
        assert decided is not None
        decision = apply(state, decided, RULES, NOW)
        assert decision is not None and decision.state.golden is not None
        assert decision.state.golden.email == "bob@example.com"
        assert decision.state.golden.do_not_contact is True
        assert decision.commands  # the consent change is not held up
        for command in decision.commands:
            assert "ada@example.com" not in command.properties.values()


# The row read again once the email is decided.


def test_reading_a_new_customers_row_again_writes_it_whole() -> None:
    row = record({**BOB, "email": "ada@example.com"})
    source = SourcePosition(topic="crmsync.inbound", partition=1, offset=7, op="u", ts_ms=1)
    again = reread(None, row, source)
    assert again.op == "r" and again.record == row
    assert email_claim(None, again) == EmailClaim(B, "ada@example.com")
    decision = apply(None, again, RULES, NOW)
    assert decision is not None and len(decision.commands) == len(RULES.mappings)


def test_reading_a_live_customers_row_again_gives_it_the_email_and_nothing_else() -> None:
    state = live(BOB)
    # The row holds the email it waited for, and a phone whose own change is on its way.
    row = record({**BOB, "email": "ada@example.com", "phone": "+4930123456"})
    source = SourcePosition(topic="crmsync.inbound", partition=1, offset=7, op="u",
                            ts_ms=1714557600000 + 60_000)  # fmt: skip
    again = reread(state.golden, row, source)
    assert email_claim(state.golden, again) == EmailClaim(B, "ada@example.com")
    decision = apply(state, again, RULES, NOW)
    assert decision is not None and decision.state.golden is not None
    assert decision.state.golden.email == "ada@example.com"
    assert decision.state.golden.phone is None
    assert decision.change is not None and set(decision.change.changed) == {"email"}
    # Read again once more (a redelivered recheck): nothing to claim, nothing to send.
    assert email_claim(decision.state.golden, reread(decision.state.golden, row, source)) is None


# The matcher on two customers with one email.


def test_today_the_matcher_calls_one_email_with_another_name_someone_new() -> None:
    # Why collisions were never merged nor reviewed: the names disagree, so the email does
    # not link, and the score is far below the review band.
    ada = Candidate(A, person_of(ADA))
    verdict = match(person_of({**BOB, "email": "ada@example.com"}), [ada], Thresholds())
    assert verdict.outcome == "new"


@pytest.mark.parametrize(
    ("given_to", "outcome"),
    [
        ({**BOB, "email": "ada@example.com"}, "review"),  # someone else entirely
        ({**ADA, "last_name": "King"}, "review"),  # a married name? a person decides
        ({**ADA, "first_name": "ADA", "email": " Ada@Example.com"}, "link"),  # signed up twice
        ({"email": "ada@example.com"}, "link"),  # nothing but the email: nothing disagrees
    ],
)
def test_a_customer_given_a_held_email_is_the_holder_or_goes_to_review(
    given_to: dict[str, Any], outcome: str
) -> None:
    person = person_of(record(given_to))
    verdict = email_collision(person, Candidate(A, person_of(ADA)), Thresholds())
    assert verdict.outcome == outcome
    if outcome == "link":
        assert (verdict.customer_id, verdict.method) == (A, "email")
    else:
        assert verdict.candidates[0][0] == A
