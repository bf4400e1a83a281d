"""TargetMapping: customer fields become one vendor's properties (renames, enum maps, joins);
values stay canonical (the vendor clients encode them)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from crmsync.domain.customer import SYNCED_FIELDS, GoldenRecord
from crmsync.domain.mapping import TargetMapping

STRIPE_LIKE: dict[str, Any] = {
    "id_property": "metadata.crmsync_id",
    "fields": {
        "email": "email",
        "plan_tier": "metadata.plan_tier",
        "name": {"property": "name", "join": ["first_name", "last_name"]},
    },
}
MAPPING = TargetMapping.model_validate(STRIPE_LIKE)
EVERYTHING = frozenset(SYNCED_FIELDS)


def record(**fields: Any) -> GoldenRecord:
    return GoldenRecord(id="c-1", **fields)


@pytest.mark.parametrize(
    ("first", "last", "name"),
    [
        ("Alice", "Smith", "Alice Smith"),
        ("Alice", None, "Alice"),
        (None, "Smith", "Smith"),
        (None, None, None),
    ],
)
def test_join_writes_the_full_name(first: str | None, last: str | None, name: str | None) -> None:
    props = MAPPING.properties(record(first_name=first, last_name=last), EVERYTHING)
    assert props["name"] == name


_NAME = st.none() | st.text(alphabet="abcdefgXYZéß-'", min_size=1, max_size=12)


@given(_NAME, _NAME)
def test_join_is_the_present_parts_in_order_or_none(first: str | None, last: str | None) -> None:
    name = MAPPING.properties(record(first_name=first, last_name=last), EVERYTHING)["name"]
    parts = [p for p in (first, last) if p]
    if parts:
        assert name.split(" ") == parts
    else:
        assert name is None


def test_join_reads_only_the_fields_that_flow_to_the_target() -> None:
    alice = record(first_name="Alice", last_name="Smith")
    assert MAPPING.properties(alice, frozenset({"first_name"}))["name"] == "Alice"
    assert "name" not in MAPPING.properties(alice, frozenset({"email"}))


def test_values_stay_canonical() -> None:
    mapping = TargetMapping.model_validate(
        {
            "id_property": "crmsync_id",
            "fields": {
                "city": "city",
                "consent_email": "consent",
                "do_not_contact": "dnc",
                "lifecycle_stage": {
                    "property": "stage",
                    "values": {"lead": "L", "trial": "T", "customer": "C", "churned": "X"},
                },
            },
        }
    )
    props = mapping.properties(record(consent_email=True), EVERYTHING)
    assert props == {
        "city": None,  # not "" — clearing is the vendor client's business
        "consent": True,  # not "true"
        "dnc": False,
        "stage": None,  # an unset enum is not looked up in the map
        "crmsync_id": "c-1",
    }
    assert mapping.properties(record(lifecycle_stage="trial"), EVERYTHING)["stage"] == "T"


def test_properties_carry_the_id_and_only_the_fields_asked_for() -> None:
    props = MAPPING.properties(record(email="a@example.com", plan_tier="pro"), frozenset({"email"}))
    assert props == {"email": "a@example.com", "metadata.crmsync_id": "c-1"}


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"email": "email", "first_name": "email"}, "email"),
        ({"email": "email", "name": {"property": "email", "join": ["first_name"]}}, "email"),
        ({"email": "crmsync_id"}, "crmsync_id"),  # clashes with the id property
    ],
)
def test_a_property_written_twice_is_refused(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match="written twice") as caught:
        TargetMapping.model_validate({"id_property": "crmsync_id", "fields": fields})
    assert needle in str(caught.value)


def test_a_join_of_an_unknown_field_is_refused() -> None:
    fields = {"name": {"property": "name", "join": ["first_name", "middle_name"]}}
    with pytest.raises(ValidationError, match="middle_name"):
        TargetMapping.model_validate({"id_property": "x", "fields": fields})


def test_a_join_with_an_enum_map_is_refused() -> None:
    fields = {"name": {"property": "name", "join": ["first_name"], "values": {"a": "b"}}}
    with pytest.raises(ValidationError, match="enum map"):
        TargetMapping.model_validate({"id_property": "x", "fields": fields})


def test_an_unjoined_entry_must_be_a_customer_field() -> None:
    with pytest.raises(ValidationError, match="name"):
        TargetMapping.model_validate({"id_property": "x", "fields": {"name": "name"}})


def test_a_vendor_key_is_no_longer_accepted() -> None:
    with pytest.raises(ValidationError, match="vendor"):
        TargetMapping.model_validate({**STRIPE_LIKE, "vendor": "stripe"})
