"""The ingest policy: a customer some target cannot take is refused for all of them, with every
reason; and the local emulators refuse exactly what config/targets.toml says each vendor does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from crmsync.domain.customer import GoldenRecord, normalise_customer
from crmsync.domain.events import parse_customer_event
from crmsync.domain.limits import IngestPolicy, PropertyLimit, TargetLimits
from crmsync.errors import ValidationFailed
from crmsync.rules import load_rules
from crmsync.targets import TARGETS_FILE, load_vendors
from emulators import hubspot, salesforce, stripe, zendesk
from emulators.common import DurableStore

ROOT = Path(__file__).resolve().parents[2]
OWNERSHIP = ROOT / "config" / "ownership.toml"
MAPPING = ROOT / "config" / "mapping.toml"
RULES = load_rules(OWNERSHIP, MAPPING)
SALESFORCE = load_rules(OWNERSHIP, MAPPING, vendors={"crm": "salesforce"})
CID = "0b5e3f7c-2a51-4c39-8d3e-6f1c2b9a4e70"
ADA = {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}


def check(rules: Any = RULES, **fields: Any) -> GoldenRecord:
    return normalise_customer({"id": CID, **ADA, **fields}, rules.ingest)


def refused(rules: Any = RULES, **fields: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        check(rules, **fields)
    return caught.value


# --- the shipped policy -----------------------------------------------------------------------


def test_a_customer_every_target_takes_passes_unchanged() -> None:
    assert check() == normalise_customer({"id": CID, **ADA})


def test_a_10000_character_name_is_refused_naming_each_target_that_cannot_take_it() -> None:
    error = refused(first_name="A" * 10_000)

    assert error.field == "first_name, last_name"
    assert "billing (stripe) takes at most 256 characters in 'name'; this is 10,009" in str(error)
    assert "support (zendesk) takes at most 255 characters in 'name'" in str(error)
    assert "crm" not in str(error)  # HubSpot takes 65,536


def test_the_smallest_limit_wins_on_the_joined_full_name() -> None:
    """Stripe takes 256, Zendesk 255: a full name of 256 (first, space, last) is refused by
    Zendesk alone, and one of 255 reaches every target."""
    error = refused(first_name="A" * 128, last_name="B" * 127)
    assert "support (zendesk)" in str(error) and "stripe" not in str(error)
    assert check(first_name="A" * 127, last_name="B" * 127).first_name == "A" * 127


@pytest.mark.parametrize("email", ["jürgen@example.com", "ada@münchen.example", "用户@例子.广告"])
def test_an_internationalised_email_is_refused_because_stripe_takes_only_ascii(email: str) -> None:
    error = refused(email=email)
    assert error.field == "email"
    assert "billing (stripe) takes only ASCII in 'email'" in str(error)


@pytest.mark.parametrize("email", [None, "ada@example.com"])
def test_a_customer_without_a_name_is_refused_because_zendesk_requires_one(
    email: str | None,
) -> None:
    error = refused(email=email, first_name=None, last_name="  ")
    assert error.field == "first_name, last_name"
    assert "support (zendesk) requires 'name': set first_name or last_name" in str(error)


@pytest.mark.parametrize("name", [{"first_name": None}, {"last_name": None}])
def test_a_first_or_last_name_alone_is_a_name(name: dict[str, None]) -> None:
    assert check(email=None, **name)


def test_an_address_line_longer_than_stripe_takes_is_refused() -> None:
    assert "'address.line1'" in str(refused(street="Hauptstraße 1 " * 400))


def test_a_field_is_held_only_to_the_targets_it_flows_to() -> None:
    """company_name goes to the CRM alone: HubSpot's 65,536, not Stripe's 5,000."""
    assert check(company_name="C" * 6_000).company_name == "C" * 6_000
    error = refused(company_name="C" * 70_000)
    assert error.field == "company_name"
    assert str(error) == (
        "company_name: crm (hubspot) takes at most 65,536 characters in 'company'; this is 70,000"
    )


def test_a_deleted_customer_is_not_checked() -> None:
    """Its targets are only told to archive it; refusing the delete would keep it alive."""
    deleted = check(first_name="A" * 10_000, deleted_at="2026-01-01T00:00:00Z")
    assert deleted.deleted_at is not None


def test_several_problems_are_reported_together() -> None:
    error = refused(email="jürgen@example.com", first_name=None, last_name=None)
    assert error.field == "email, first_name, last_name"
    assert "ASCII" in str(error) and "requires 'name'" in str(error)


def test_with_salesforce_as_the_crm_its_limits_apply_to_everyone() -> None:
    assert "crm (salesforce) requires 'LastName'" in str(refused(SALESFORCE, last_name=None))
    assert "40 characters in 'FirstName'" in str(refused(SALESFORCE, first_name="F" * 41))
    long_email = "a" * 70 + "@example.com"
    assert "80 characters in 'Email'" in str(refused(SALESFORCE, email=long_email))
    assert check(email=long_email).email == long_email  # HubSpot, Stripe and Zendesk take it


def test_a_text_limit_applies_to_every_property_not_named() -> None:
    crm = next(t for t in RULES.ingest.targets if t.target == "crm")
    tight = IngestPolicy((TargetLimits("crm", "hubspot", crm.mapping, crm.fields, {}, 10),))
    record = normalise_customer({"id": CID, "city": "Llanfairpwllgwyngyll"})
    with pytest.raises(ValidationFailed) as caught:
        tight.check(record)
    assert caught.value.field == "city"
    assert "crm (hubspot) takes at most 10 characters in 'city'; this is 20" in str(caught.value)


def test_a_named_limit_without_a_length_keeps_the_text_limit() -> None:
    crm = next(t for t in RULES.ingest.targets if t.target == "crm")
    limits = TargetLimits("crm", "hubspot", crm.mapping, crm.fields,
                          {"city": PropertyLimit(ascii=True)}, 10)  # fmt: skip
    assert limits.limit_of("city") == PropertyLimit(max_length=10, ascii=True)


# --- at ingest --------------------------------------------------------------------------------


def envelope(op: str, after: dict[str, Any], before: dict[str, Any] | None = None) -> bytes:
    payload = {"op": op, "after": {"id": CID, **after}, "before": before, "source": {"lsn": 7}}
    return orjson.dumps(payload)


def test_an_update_no_target_can_take_is_refused_at_ingest() -> None:
    key = orjson.dumps({"id": CID})
    value = envelope("u", {**ADA, "first_name": "A" * 300}, {"id": CID, **ADA})
    with pytest.raises(ValidationFailed, match="zendesk"):
        parse_customer_event(key, value, topic="t", partition=0, offset=1, policy=RULES.ingest)
    # Without a policy (an older caller) the row is only normalised.
    change = parse_customer_event(key, value, topic="t", partition=0, offset=1)
    assert change is not None and change.record is not None


def test_a_valid_update_of_a_row_that_broke_a_limit_before_is_taken() -> None:
    """The row before is only compared: a fix of a bad row must go through."""
    key = orjson.dumps({"id": CID})
    value = envelope("u", ADA, {"id": CID, **ADA, "first_name": "A" * 300})
    change = parse_customer_event(key, value, topic="t", partition=0, offset=1,
                                  policy=RULES.ingest)  # fmt: skip
    assert change is not None and change.record is not None
    assert change.before is not None and change.before.first_name == "A" * 300


def test_an_impossible_birth_date_is_refused_at_ingest() -> None:
    key = orjson.dumps({"id": CID})
    days = (dt.date(2100, 1, 1) - dt.date(1970, 1, 1)).days
    with pytest.raises(ValidationFailed, match="birth_date: 2100-01-01 is in the future"):
        parse_customer_event(key, envelope("c", {**ADA, "birth_date": days}), topic="t",
                             partition=0, offset=1, policy=RULES.ingest)  # fmt: skip


# --- the emulators refuse what the config says the vendors refuse ------------------------------

VENDORS = load_vendors(TARGETS_FILE)


def _nested(prop: str, value: Any) -> dict[str, Any]:
    head, dot, rest = prop.partition(".")
    return {head: {rest: value}} if dot else {prop: value}


def stripe_takes(prop: str, value: str | None) -> bool:
    params = {} if value is None else _nested(prop, value)
    try:
        stripe._checked(params, stripe.CUSTOMER_CREATE)
    except stripe.StripeError:
        return False
    return True


def zendesk_takes(prop: str, value: str | None) -> bool:
    directory = zendesk.Directory(DurableStore(None), zendesk.ZendeskEmulatorConfig(), print)
    user = {"email": "someone@example.com", "name": "Some One"} | _nested(prop, value)
    if value is None:
        del user[prop]
    try:
        directory.create_user(user)
    except zendesk.RecordInvalid:
        return False
    return True


def hubspot_takes(prop: str, value: str | None) -> bool:
    store = hubspot.ObjectStore(hubspot.CONTACTS, ["email"], DurableStore(None))
    try:
        store.create({} if value is None else {prop: value})
    except hubspot.InvalidPropertyValue:
        return False
    return True


def salesforce_takes(prop: str, value: str | None) -> bool:
    org = salesforce.Org(DurableStore(None))
    values = {"LastName": "Lovelace"} | ({} if value is None else {prop: value})
    if value is None:
        values.pop(prop, None)
    try:
        org.create(salesforce.CONTACT, values)
    except salesforce.RecordError:
        return False
    return True


TAKES: dict[str, Callable[[str, str | None], bool]] = {
    "hubspot": hubspot_takes,
    "salesforce": salesforce_takes,
    "stripe": stripe_takes,
    "zendesk": zendesk_takes,
}
#: A property each vendor's text limit covers (one crmsync writes and the config does not name).
UNNAMED = {"hubspot": "firstname", "salesforce": "Plan_Tier__c", "stripe": "address.city"}


def text_of(prop: str, length: int) -> str:
    if prop.lower() in ("email", "owner_email__c"):
        return "a" * (length - len("@example.com")) + "@example.com"
    return "x" * length


CASES = [
    (vendor, prop, limit)
    for vendor, published in VENDORS.items()
    for prop, limit in {
        **published.properties,
        **({UNNAMED[vendor]: PropertyLimit()} if vendor in UNNAMED else {}),
    }.items()
]


@pytest.mark.parametrize(("vendor", "prop", "limit"), CASES, ids=[f"{v}-{p}" for v, p, _ in CASES])
def test_the_emulator_refuses_exactly_the_published_limits(
    vendor: str, prop: str, limit: PropertyLimit
) -> None:
    takes = TAKES[vendor]
    longest = limit.max_length or VENDORS[vendor].text_max_length
    assert longest is not None, f"{vendor} {prop}: no limit"
    assert takes(prop, text_of(prop, longest))
    assert not takes(prop, text_of(prop, longest + 1))
    if limit.ascii:
        assert not takes(prop, "jürgen@example.com")
        assert takes(prop, "jurgen@example.com")
    if limit.required:
        assert not takes(prop, None)


def test_every_vendor_has_its_emulator_checked() -> None:
    assert set(VENDORS) == set(TAKES)
    assert {vendor for vendor, _, _ in CASES} == set(TAKES)
