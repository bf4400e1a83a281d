"""Identity matching: which record is which customer, as a person reviewing the links would
judge it; and the blocking keys that decide who is compared at all."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.domain.identity import (
    Candidate,
    Match,
    Person,
    Thresholds,
    blocking_keys,
    match,
    person_of,
    score,
)

THRESHOLDS = Thresholds()

ROBERT = {
    "email": "robert.miller@example.com",
    "phone": "+14155550123",
    "first_name": "Robert",
    "last_name": "Miller",
    "company_name": "Acme Corp",
    "street": "12 Oak Street",
    "postal_code": "94110",
    "city": "San Francisco",
    "birth_date": "1980-04-17",
}
# His wife: same surname, address, landline and shared family inbox.
SUSAN = {**ROBERT, "first_name": "Susan", "birth_date": "1982-09-03", "company_name": None}


def person(**fields: Any) -> Person:
    return person_of({**ROBERT, **fields})


def verdict(record: Person, *customers: tuple[str, Person]) -> Match:
    return match(record, [Candidate(cid, p) for cid, p in customers], THRESHOLDS)


def robert_is(record: Person) -> Match:
    """The verdict with Robert and his wife Susan (a different customer) as candidates."""
    return verdict(record, ("robert", person()), ("susan", person_of(SUSAN)))


# --- links the user expects -------------------------------------------------------------------


def test_a_typo_in_the_surname_without_email_links_by_score() -> None:
    found = robert_is(person(email=None, last_name="Miler"))
    assert (found.outcome, found.customer_id) == ("link", "robert")


def test_a_typo_in_the_first_name_without_email_or_phone_links_by_score() -> None:
    found = verdict(person(email=None, phone=None, first_name="Rboert"), ("robert", person()))
    assert (found.outcome, found.customer_id, found.method) == ("link", "robert", "fuzzy")


def test_a_nickname_links() -> None:
    found = robert_is(person(email=None, first_name="Bob"))
    assert (found.outcome, found.customer_id) == ("link", "robert")


def test_first_and_last_name_swapped_links() -> None:
    found = robert_is(person(email=None, first_name="Miller", last_name="Robert"))
    assert (found.outcome, found.customer_id) == ("link", "robert")


def test_an_initial_links_when_something_personal_agrees() -> None:
    record = person(email=None, phone=None, first_name="R.")
    found = verdict(record, ("robert", person()))
    assert (found.outcome, found.customer_id) == ("link", "robert")


@pytest.mark.parametrize(
    "changed",
    [
        {"email": "bob.miller@work.example.org"},
        {"phone": "+14155559876"},
        {"email": "bob.miller@work.example.org", "company_name": "Globex"},
    ],
)
def test_a_changed_email_or_phone_with_the_rest_agreeing_still_links(
    changed: dict[str, str],
) -> None:
    found = robert_is(person(**changed))
    assert found.outcome == "link"
    assert found.customer_id == "robert"


def test_a_changed_email_and_missing_phone_is_never_someone_new() -> None:
    found = robert_is(person(email="rm1980@mail.example.net", phone=None, street="12 Oak St."))
    assert found.outcome != "new"


def test_the_same_customer_entered_twice_is_a_link_not_a_doubt() -> None:
    twice = person_of({**ROBERT, "street": "12 Oak St", "company_name": None})
    found = verdict(person(last_name="Millar"), ("robert", person()), ("robert-again", twice))
    assert found.outcome == "link"
    assert found.customer_id in {"robert", "robert-again"}


# --- what must not link -----------------------------------------------------------------------


def test_a_family_member_sharing_address_phone_and_email_is_not_auto_linked() -> None:
    daughter = person(first_name="Emily", birth_date="2009-02-11", company_name=None)
    found = robert_is(daughter)
    assert found.outcome != "link"


def test_a_family_member_is_not_linked_to_a_customer_whose_first_name_is_unknown() -> None:
    """Surname, address and landline are what a household shares, not who someone is."""
    unknown = person_of({**ROBERT, "first_name": None, "birth_date": None, "email": None})
    found = verdict(person(first_name="Emily", email=None, birth_date=None), ("x", unknown))
    assert found.outcome != "link"


def test_two_candidates_equally_likely_go_to_review() -> None:
    """Twins, J. Miller: the record could be either."""
    record = person(email=None, phone=None, first_name="J.", birth_date=None)
    john = person(email="john@example.com", phone=None, first_name="John", birth_date=None)
    jane = person(email="jane@example.com", phone=None, first_name="Jane", birth_date=None)
    found = verdict(record, ("john", john), ("jane", jane))
    assert found.outcome == "review"
    assert {cid for cid, _ in found.candidates} == {"john", "jane"}


def test_a_namesake_elsewhere_is_someone_new() -> None:
    other = person_of({"first_name": "Robert", "last_name": "Miller", "email": "rm@other.org",
                       "street": "5 Elm Road", "postal_code": "10001", "city": "New York",
                       "birth_date": "1955-01-30"})  # fmt: skip
    assert robert_is(other).outcome == "new"


def test_the_same_email_does_not_link_when_the_birth_dates_disagree() -> None:
    found = verdict(person(birth_date="1950-01-01"), ("robert", person()))
    assert found.outcome != "link"


def test_no_candidates_means_someone_new() -> None:
    assert verdict(person()) == Match("new")


# --- normalising ------------------------------------------------------------------------------


def test_person_of_folds_accents_case_punctuation_and_street_words() -> None:
    a = person_of({"first_name": "  José-Luis ", "last_name": "MÜLLER", "street": "Hauptstr. 5",
                   "postal_code": "sw1a 1aa", "city": "Zürich", "email": "A@B.com"})  # fmt: skip
    b = person_of({"first_name": "jose luis", "last_name": "muller", "street": "Hauptstraße 5",
                   "postal_code": "SW1A1AA", "city": "zurich", "email": "a@b.com"})  # fmt: skip
    assert a == b
    assert a.street == "hauptstrasse 5"
    street = person_of({"street": "12 Oak St."}), person_of({"street": "12 OAK STREET"})
    assert street[0].street == street[1].street == "12 oak street"


def test_scores_are_symmetric_enough_to_merge_either_way() -> None:
    a, b = person(), person(first_name="Bob", street="12 Oak St")
    assert score(a, b).confidence == score(b, a).confidence


# --- blocking ---------------------------------------------------------------------------------

_FIRST = ["Robert", "Maria", "Jean", "Ingrid", "Oliver", "Chloé", "Siobhan", "Jürgen"]
_LAST = ["Miller", "Schmidt", "Dubois", "O'Neill", "Nakamura", "García", "Smith", "Kowalski"]


@st.composite
def people(draw: st.DrawFn) -> dict[str, Any]:
    first, last = draw(st.sampled_from(_FIRST)), draw(st.sampled_from(_LAST))
    return {
        "first_name": first,
        "last_name": last,
        "email": f"{draw(st.integers(1, 10**6))}@example.com",
        "phone": f"+4420{draw(st.integers(10**7, 10**8 - 1))}",
        "postal_code": draw(st.from_regex(r"[0-9]{5}", fullmatch=True)),
        "birth_date": draw(st.dates()).isoformat(),
        "street": "1 High Street",
    }


def _typo(text: str, at: int, letter: str) -> str:
    at %= len(text)
    return text[:at] + letter + text[at + 1 :]


@given(people(), st.data())
def test_blocking_keys_survive_any_one_corrupted_or_missing_field(
    values: dict[str, Any], data: st.DataObject
) -> None:
    corrupted = dict(values)
    kind = data.draw(st.sampled_from(
        ["email", "phone", "first_name", "last_name", "postal_code", "birth_date", "swap"]
    ))  # fmt: skip
    if kind == "swap":
        corrupted["first_name"], corrupted["last_name"] = values["last_name"], values["first_name"]
    elif data.draw(st.booleans(), label="drop it"):
        corrupted[kind] = None
    elif kind in ("first_name", "last_name"):
        at, letter = data.draw(st.integers(0, 20)), data.draw(st.sampled_from("aekqxz"))
        corrupted[kind] = _typo(values[kind], at, letter)
    else:
        corrupted[kind] = {"email": "someone.else@example.org", "phone": "+33612345678",
                           "postal_code": "99999", "birth_date": "1901-01-01"}[kind]  # fmt: skip
    shared = set(blocking_keys(person_of(values))) & set(blocking_keys(person_of(corrupted)))
    assert shared, (kind, values, corrupted)


def test_blocking_keys_are_narrow() -> None:
    """No key is a name alone: a common name would put thousands in one block."""
    keys = blocking_keys(person())
    assert all(key.count(":") >= 2 or key[:2] in ("e:", "p:") for key in keys)
    assert blocking_keys(Person()) == []
