"""schemas/customer_change.schema.json is the published contract of crmsync.customers.changes:
it must match the GoldenChange model and accept what apply() actually emits."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from crmsync.domain.customer import normalise_customer
from crmsync.domain.decide import GoldenChange, apply
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.rules import SyncRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "customer_change.schema.json"
OWNERSHIP = ROOT / "config" / "ownership.toml"
MAPPING = ROOT / "config" / "mapping.toml"
RULES = load_rules(OWNERSHIP, MAPPING)
ADDED_BY_FILE = ("$schema", "$id", "title", "description")
CID = "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _change(fields: dict[str, Any] | None, op: str, offset: int) -> CustomerChange:
    record = None if fields is None else normalise_customer({"id": CID, **fields})
    source = SourcePosition(
        topic="crmsync.public.customers", partition=1, offset=offset, op=op, lsn=9000 + offset
    )  # type: ignore[arg-type]
    return CustomerChange(customer_id=CID, op=op, record=record, source=source)  # type: ignore[arg-type]


ROW = {
    "email": "Dana@Example.com",
    "first_name": "Dana",
    "country": "UK",
    "lifecycle_stage": "Trial",
    "birth_date": 7305,
    "consent_email": True,
}


def _emitted(rules: SyncRules = RULES) -> list[GoldenChange]:
    """Every kind of GoldenChange apply() publishes: created, updated, deleted, restored."""
    steps = [
        _change(ROW, "c", 1),
        _change({**ROW, "first_name": "Dani", "consent_email": False}, "u", 2),
        _change({**ROW, "deleted_at": "2024-05-02T00:00:00Z"}, "u", 3),
        _change(ROW, "u", 4),
        _change(None, "d", 5),
    ]
    state, emitted = None, []
    for step in steps:
        decision = apply(state, step, rules, "2024-05-01T10:00:00+00:00")
        state = decision.state
        assert decision.change is not None
        emitted.append(decision.change)
    return emitted


def test_file_matches_the_model(schema: dict[str, Any]) -> None:
    from_file = {k: v for k, v in schema.items() if k not in ADDED_BY_FILE}
    from_model = {
        k: v for k, v in GoldenChange.model_json_schema().items() if k not in ADDED_BY_FILE
    }
    assert from_file == from_model, "regenerate schemas/customer_change.schema.json"


def test_file_names_itself_and_its_draft(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("customer_change.schema.json")


def test_a_new_customer_change_validates(validator: Draft202012Validator) -> None:
    decision = apply(None, _change(ROW, "c", 1), RULES, "2024-05-01T10:00:00+00:00")
    assert decision.change is not None
    document = json.loads(decision.change.model_dump_json())
    assert document["op"] == "created"
    assert list(validator.iter_errors(document)) == []


def test_every_published_op_validates(validator: Draft202012Validator) -> None:
    emitted = _emitted()
    assert [c.op for c in emitted] == ["created", "updated", "deleted", "restored", "deleted"]
    for change in emitted:
        assert list(validator.iter_errors(json.loads(change.model_dump_json()))) == []


def test_published_changes_do_not_depend_on_targets_or_vendors() -> None:
    """The change stream describes the golden record, whichever targets and vendors it feeds."""
    salesforce = load_rules(OWNERSHIP, MAPPING, vendors={"crm": "salesforce"})
    crm_only = SyncRules(RULES.ownership, {"crm": RULES.mappings["crm"]})
    assert _emitted(salesforce) == _emitted(RULES)
    assert _emitted(crm_only) == _emitted(RULES)


@pytest.fixture
def document() -> dict[str, Any]:
    return json.loads(_emitted()[0].model_dump_json())


@pytest.mark.parametrize("field", ["customer_id", "event_id", "op", "provenance", "changed"])
def test_a_document_missing_a_required_field_fails(
    validator: Draft202012Validator, document: dict[str, Any], field: str
) -> None:
    del document[field]
    assert not validator.is_valid(document)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("op",), "exploded"),
        (("customer_id",), 42),
        (("provenance", "op"), "x"),
        (("provenance", "offset"), "12"),
        (("changed",), {"email": "not-an-object"}),
        (("unexpected",), True),
        (("provenance", "unexpected"), True),
    ],
)
def test_a_malformed_document_fails(
    validator: Draft202012Validator,
    document: dict[str, Any],
    path: tuple[str, ...],
    value: Any,
) -> None:
    broken = copy.deepcopy(document)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert validator.is_valid(document)
    assert not validator.is_valid(broken)
