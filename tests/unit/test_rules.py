"""load_rules: the shipped config loads, and a broken ownership or mapping file refuses to load."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.domain.customer import SYNCED_FIELDS
from crmsync.errors import ConfigError
from crmsync.rules import SyncRules, load_rules

ROOT = Path(__file__).resolve().parents[2]
OWNERSHIP = ROOT / "config" / "ownership.toml"
MAPPING = ROOT / "config" / "mapping.toml"

GOOD_OWNERSHIP = """
[fields]
email = { owner = "canonical", flows_to = ["crm"], conflict = "owner_wins" }
first_name = { owner = "canonical", flows_to = ["crm"], conflict = "owner_wins" }
lifecycle_stage = { owner = "canonical", flows_to = ["crm"], conflict = "owner_wins" }
"""
GOOD_MAPPING = """
[crm]
vendor = "hubspot"
id_property = "crmsync_id"

[crm.fields]
email = "email"
first_name = "firstname"

[crm.fields.lifecycle_stage]
property = "lifecyclestage"
values = { lead = "lead", trial = "opportunity", customer = "customer", churned = "other" }
"""


def load(tmp_path: Path, ownership: str = GOOD_OWNERSHIP, mapping: str = GOOD_MAPPING) -> SyncRules:
    ownership_file = tmp_path / "ownership.toml"
    mapping_file = tmp_path / "mapping.toml"
    ownership_file.write_text(ownership)
    mapping_file.write_text(mapping)
    return load_rules(ownership_file, mapping_file)


def refuses(tmp_path: Path, *needles: str, **files: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **files)
    for needle in needles:
        assert needle in str(caught.value)
    return caught.value


def test_shipped_config_loads_and_every_mapped_crm_field_flows_to_the_crm() -> None:
    rules = load_rules(OWNERSHIP, MAPPING)
    crm = rules.mappings["crm"]
    assert crm.vendor == "hubspot"
    assert crm.id_property == "crmsync_id"
    assert crm.fields, "the CRM mapping writes something"
    for field in crm.fields:
        assert "crm" in rules.ownership.fields[field].flows_to, field
    assert rules.synced_fields("crm") == frozenset(crm.fields)


def test_shipped_config_covers_every_synced_field() -> None:
    rules = load_rules(OWNERSHIP, MAPPING)
    assert set(rules.ownership.fields) == SYNCED_FIELDS
    assert set(rules.mappings["crm"].fields) == SYNCED_FIELDS


def test_shipped_lifecycle_map_covers_every_stage() -> None:
    values = load_rules(OWNERSHIP, MAPPING).mappings["crm"].fields["lifecycle_stage"].values
    assert values is not None
    assert set(values) == {"lead", "trial", "customer", "churned"}


def test_minimal_temp_config_loads(tmp_path: Path) -> None:
    rules = load(tmp_path)
    assert rules.synced_fields("crm") == {"email", "first_name", "lifecycle_stage"}
    assert rules.synced_fields("billing") == frozenset()
    assert rules.mappings["crm"].fields["first_name"].property == "firstname"


def test_field_owned_elsewhere_is_not_synced_to_the_crm(tmp_path: Path) -> None:
    ownership = GOOD_OWNERSHIP.replace(
        'first_name = { owner = "canonical", flows_to = ["crm"]',
        'first_name = { owner = "crm", flows_to = ["billing"]',
    )
    assert load(tmp_path, ownership=ownership).synced_fields("crm") == {"email", "lifecycle_stage"}


def test_unknown_key_in_a_field_rule_is_refused(tmp_path: Path) -> None:
    ownership = GOOD_OWNERSHIP.replace(
        'conflict = "owner_wins" }', 'conflict = "owner_wins", x = 1 }'
    )
    refuses(tmp_path, str(tmp_path / "ownership.toml"), ownership=ownership)


@pytest.mark.parametrize(
    "rule",
    [
        '{ owner = "canonical", flows_to = ["crm"] }',  # conflict missing
        '{ owner = "erp", flows_to = ["crm"], conflict = "owner_wins" }',
        '{ owner = "canonical", flows_to = ["fax"], conflict = "owner_wins" }',
        '{ owner = "canonical", flows_to = ["crm"], conflict = "coin_toss" }',
    ],
)
def test_invalid_field_rule_is_refused(tmp_path: Path, rule: str) -> None:
    refuses(tmp_path, ownership=GOOD_OWNERSHIP + f"city = {rule}\n")


def test_unknown_customer_field_in_ownership_is_refused(tmp_path: Path) -> None:
    rule = '{ owner = "canonical", flows_to = ["crm"], conflict = "owner_wins" }'
    refuses(tmp_path, "shoe_size", ownership=GOOD_OWNERSHIP + f"shoe_size = {rule}\n")


@pytest.mark.parametrize("field", ["id", "updated_at", "deleted_at"])
def test_bookkeeping_columns_cannot_be_owned(tmp_path: Path, field: str) -> None:
    rule = '{ owner = "canonical", flows_to = ["crm"], conflict = "owner_wins" }'
    refuses(tmp_path, field, ownership=GOOD_OWNERSHIP + f"{field} = {rule}\n")


def test_unknown_customer_field_in_mapping_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING.replace('email = "email"', 'email = "email"\nshoe_size = "shoe"')
    refuses(tmp_path, "shoe_size", str(tmp_path / "mapping.toml"), mapping=mapping)


def test_unknown_target_section_in_mapping_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING + '\n[erp]\nvendor = "sap"\nid_property = "x"\n[erp.fields]\n'
    refuses(tmp_path, "erp", mapping=mapping)


def test_unknown_key_in_a_target_mapping_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING.replace('vendor = "hubspot"', 'vendor = "hubspot"\nregion = "eu1"')
    refuses(tmp_path, mapping=mapping)


def test_mapped_field_without_an_ownership_rule_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING.replace('email = "email"', 'email = "email"\ncity = "city"')
    refuses(tmp_path, "city", "[crm]", mapping=mapping)


@pytest.mark.parametrize("owner", ["crm", "billing", "support"])
def test_owner_listed_in_its_own_flows_to_is_refused(tmp_path: Path, owner: str) -> None:
    rule = f'{{ owner = "{owner}", flows_to = ["{owner}"], conflict = "owner_wins" }}'
    refuses(tmp_path, "flows_to", ownership=GOOD_OWNERSHIP + f"city = {rule}\n")


def test_enum_map_missing_a_value_is_refused(tmp_path: Path) -> None:
    """Else a customer with that value would stop the stream at the first write."""
    refuses(tmp_path, "churned", mapping=GOOD_MAPPING.replace(', churned = "other"', ""))


@pytest.mark.parametrize("broken", ["ownership", "mapping"])
def test_unparseable_toml_is_refused(tmp_path: Path, broken: str) -> None:
    refuses(tmp_path, f"{broken}.toml", **{broken: "[fields\nemail = "})


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.toml"):
        load_rules(tmp_path / "nowhere.toml", MAPPING)
