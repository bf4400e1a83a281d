"""load_rules: the shipped config loads, and a broken ownership or mapping file refuses to load."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmsync.domain.customer import SYNCED_FIELDS
from crmsync.errors import ConfigError
from crmsync.rules import VENDORS, SyncRules, load_rules

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
[crm.hubspot]
id_property = "crmsync_id"

[crm.hubspot.fields]
email = "email"
first_name = "firstname"

[crm.hubspot.fields.lifecycle_stage]
property = "lifecyclestage"
values = { lead = "lead", trial = "opportunity", customer = "customer", churned = "other" }
"""
SALESFORCE = """
[crm.salesforce]
id_property = "crmsync_id__c"

[crm.salesforce.fields]
email = "Email"
first_name = "FirstName"

[crm.salesforce.fields.lifecycle_stage]
property = "Lifecycle_Stage__c"
values = { lead = "Lead", trial = "Trial", customer = "Customer", churned = "Churned" }
"""


def load(
    tmp_path: Path,
    ownership: str = GOOD_OWNERSHIP,
    mapping: str = GOOD_MAPPING,
    vendors: dict[str, str] | None = None,
    targets: str | None = None,
) -> SyncRules:
    """Without `targets`, no published limits: the temp mappings are not the vendors' whole."""
    ownership_file = tmp_path / "ownership.toml"
    mapping_file = tmp_path / "mapping.toml"
    ownership_file.write_text(ownership)
    mapping_file.write_text(mapping)
    targets_file = None
    if targets is not None:
        targets_file = tmp_path / "targets.toml"
        targets_file.write_text(targets)
    return load_rules(ownership_file, mapping_file, vendors, targets_file)


def refuses(
    tmp_path: Path, *needles: str, vendors: dict[str, str] | None = None, **files: str | None
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, vendors=vendors, **files)
    for needle in needles:
        assert needle in str(caught.value)
    return caught.value


def test_shipped_config_loads_and_every_mapped_crm_field_reaches_the_crm() -> None:
    rules = load_rules(OWNERSHIP, MAPPING)
    crm = rules.mappings["crm"]
    assert crm.id_property == "crmsync_id"  # HubSpot's, the default CRM vendor
    assert crm.fields, "the CRM mapping writes something"
    for field in crm.fields:
        rule = rules.ownership.fields[field]
        assert "crm" in rule.flows_to or rule.owner == "crm", field
    assert rules.synced_fields("crm") == frozenset(crm.fields)


def test_shipped_matrix_follows_the_design() -> None:
    ownership = load_rules(OWNERSHIP, MAPPING).ownership
    owners = {f: r.owner for f, r in ownership.fields.items()}
    assert {f for f, o in owners.items() if o == "crm"} == {
        "plan_tier", "owner_email", "company_name", "lifecycle_stage",
    }  # fmt: skip
    assert {f for f, o in owners.items() if o == "canonical"} == {
        "consent_email", "consent_sms", "do_not_contact",
    }  # fmt: skip
    for field in ("email", "phone", "first_name", "last_name", "timezone", "language", "status"):
        assert owners[field] == "shared"
    assert ownership.conflicts.window_seconds == 5
    assert [p.system for p in ownership.conflicts.precedence] == ["canonical", "crm", "support"]


@pytest.mark.parametrize(
    "extra",
    [
        "[conflicts]\nwindow_seconds = -1\n",
        '[conflicts]\nprecedence = [{ system = "erp", fields = "*", reason = "x" }]\n',
        # precedence may only settle shared fields
        '[conflicts]\nprecedence = [{ system = "crm", fields = ["email"], reason = "x" }]\n',
        "[conflicts]\nturbo = true\n",
    ],
)
def test_invalid_conflict_rules_are_refused(tmp_path: Path, extra: str) -> None:
    refuses(tmp_path, ownership=extra + GOOD_OWNERSHIP)


def test_a_shared_field_must_use_the_shared_rules(tmp_path: Path) -> None:
    ownership = (
        GOOD_OWNERSHIP
        + 'city = { owner = "shared", flows_to = ["crm"], conflict = "owner_wins" }\n'
    )
    refuses(tmp_path, "shared_rules", ownership=ownership)


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
    assert set(rules.mappings) == {"crm"}
    assert rules.synced_fields("crm") == {"email", "first_name", "lifecycle_stage"}
    assert rules.synced_fields("billing") == frozenset()
    assert rules.mappings["crm"].fields["first_name"].property == "firstname"


def test_field_owned_elsewhere_is_not_synced_to_the_crm(tmp_path: Path) -> None:
    ownership = GOOD_OWNERSHIP.replace(
        'first_name = { owner = "canonical", flows_to = ["crm"]',
        'first_name = { owner = "billing", flows_to = ["support"]',
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
    mapping = GOOD_MAPPING + '\n[erp.sap]\nid_property = "x"\n[erp.sap.fields]\n'
    refuses(tmp_path, "erp", mapping=mapping)


def test_unknown_key_in_a_target_mapping_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING.replace(
        'id_property = "crmsync_id"', 'id_property = "crmsync_id"\nregion = "eu1"'
    )
    refuses(tmp_path, "region", "[crm.hubspot]", mapping=mapping)


def test_mapped_field_without_an_ownership_rule_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING.replace('email = "email"', 'email = "email"\ncity = "city"')
    refuses(tmp_path, "city", "[crm.hubspot]", mapping=mapping)


@pytest.mark.parametrize("owner", ["crm", "billing", "support"])
def test_owner_listed_in_its_own_flows_to_is_refused(tmp_path: Path, owner: str) -> None:
    rule = f'{{ owner = "{owner}", flows_to = ["{owner}"], conflict = "owner_wins" }}'
    refuses(tmp_path, "flows_to", ownership=GOOD_OWNERSHIP + f"city = {rule}\n")


def test_enum_map_missing_a_value_is_refused(tmp_path: Path) -> None:
    """Else a customer with that value would stop the stream at the first write."""
    mapping = GOOD_MAPPING.replace(', churned = "other"', "")
    refuses(tmp_path, "churned", "[crm.hubspot]", mapping=mapping)


@pytest.mark.parametrize("broken", ["ownership", "mapping"])
def test_unparseable_toml_is_refused(tmp_path: Path, broken: str) -> None:
    refuses(tmp_path, f"{broken}.toml", **{broken: "[fields\nemail = "})


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.toml"):
        load_rules(tmp_path / "nowhere.toml", MAPPING)


# --- targets and vendors ----------------------------------------------------------------------


def test_shipped_config_maps_each_target_with_its_default_vendor() -> None:
    rules = load_rules(OWNERSHIP, MAPPING)
    assert set(rules.mappings) == {"crm", "billing", "support"}
    assert rules.mappings["crm"].id_property == "crmsync_id"
    assert rules.mappings["crm"].fields["email"].property == "email"
    assert rules.mappings["billing"].id_property == "metadata.crmsync_id"
    assert rules.mappings["support"].id_property == "external_id"


@pytest.mark.parametrize(
    ("target", "vendor"), [(t, v) for t, vendors in VENDORS.items() for v in vendors]
)
def test_every_shipped_vendor_writes_every_field_that_flows_to_its_target(
    target: str, vendor: str
) -> None:
    """Ownership says a field flows to a target only where the mapping writes it: whichever
    vendor is chosen, nothing that flows there is silently dropped, nothing more is written."""
    rules = load_rules(OWNERSHIP, MAPPING, vendors={target: vendor})
    mapping = rules.mappings[target]
    sources = {f for name in mapping.fields for f in mapping.sources(name)}
    assert rules.synced_fields(target) == rules.ownership.fields_flowing_to(target)
    assert sources == rules.ownership.fields_flowing_to(target)


def test_shipped_billing_and_support_join_the_full_name() -> None:
    rules = load_rules(OWNERSHIP, MAPPING)
    for target in ("billing", "support"):
        name = rules.mappings[target].fields["name"]
        assert name.property == "name"
        assert name.join == ("first_name", "last_name")
        assert {"first_name", "last_name"} <= rules.synced_fields(target)


def test_salesforce_is_chosen_by_vendors() -> None:
    default = load_rules(OWNERSHIP, MAPPING)
    rules = load_rules(OWNERSHIP, MAPPING, vendors={"crm": "salesforce"})
    crm = rules.mappings["crm"]
    assert crm.id_property == "crmsync_id__c"
    assert crm.fields["email"].property == "Email"
    assert crm.fields["do_not_contact"].property == "DoNotCall"
    assert rules.synced_fields("crm") == default.synced_fields("crm")
    assert rules.mappings["billing"] == default.mappings["billing"]
    assert rules.mappings["support"] == default.mappings["support"]


def test_temp_config_with_two_crm_vendors_picks_hubspot_unless_told(tmp_path: Path) -> None:
    assert load(tmp_path, mapping=GOOD_MAPPING + SALESFORCE).mappings["crm"].id_property == (
        "crmsync_id"
    )
    chosen = load(tmp_path, mapping=GOOD_MAPPING + SALESFORCE, vendors={"crm": "salesforce"})
    assert chosen.mappings["crm"].fields["first_name"].property == "FirstName"


def test_unknown_vendor_table_is_refused(tmp_path: Path) -> None:
    pipedrive = SALESFORCE.replace("salesforce", "pipedrive")
    refuses(tmp_path, "[crm]", "unknown vendors pipedrive", mapping=GOOD_MAPPING + pipedrive)


def test_vendor_of_another_target_is_refused(tmp_path: Path) -> None:
    stripe = SALESFORCE.replace("crm.salesforce", "crm.stripe")
    refuses(tmp_path, "[crm]", "stripe", mapping=GOOD_MAPPING + stripe)


def test_old_single_vendor_layout_is_refused(tmp_path: Path) -> None:
    """A mapping.toml from before vendors were tables must not load as something else."""
    old = GOOD_MAPPING.replace("[crm.hubspot]", '[crm]\nvendor = "hubspot"').replace(
        "crm.hubspot.", "crm."
    )
    refuses(tmp_path, "[crm]", "vendor", str(tmp_path / "mapping.toml"), mapping=old)


def test_chosen_vendor_without_a_table_is_refused(tmp_path: Path) -> None:
    refuses(tmp_path, "[crm.salesforce]", vendors={"crm": "salesforce"})


def test_unknown_chosen_vendor_is_refused(tmp_path: Path) -> None:
    refuses(tmp_path, "crm.pipedrive", vendors={"crm": "pipedrive"})


def test_default_vendor_missing_is_refused(tmp_path: Path) -> None:
    """Only a Salesforce table, and nothing chose Salesforce: HubSpot, the default, is missing."""
    refuses(tmp_path, "[crm.hubspot]", mapping=SALESFORCE)
    assert load(tmp_path, mapping=SALESFORCE, vendors={"crm": "salesforce"}).mappings["crm"]


def test_chosen_vendor_for_an_unmapped_target_is_refused(tmp_path: Path) -> None:
    refuses(tmp_path, "[billing.stripe]", vendors={"billing": "stripe"})


@pytest.mark.parametrize(
    ("broken", "needle"),
    [
        (('email = "Email"', 'email = "Email"\nshoe_size = "Shoe__c"'), "shoe_size"),
        (('email = "Email"', 'email = "Email"\ncity = "MailingCity"'), "city"),
        ((', churned = "Churned"', ""), "churned"),
        (('first_name = "FirstName"', 'first_name = "Email"'), "Email"),
    ],
)
def test_bad_mapping_in_an_unused_vendor_table_is_refused(
    tmp_path: Path, broken: tuple[str, str], needle: str
) -> None:
    """Every vendor is checked at start-up, not only when someone switches to it."""
    mapping = GOOD_MAPPING + SALESFORCE.replace(*broken)
    refuses(tmp_path, "[crm.salesforce]", needle, mapping=mapping)
    refuses(tmp_path, "[crm.salesforce]", needle, mapping=mapping, vendors={"crm": "hubspot"})


@pytest.mark.parametrize(
    ("line", "duplicated"),
    [
        ('first_name = "email"', "email"),
        ('first_name = "crmsync_id"', "crmsync_id"),  # the id property too
    ],
)
def test_property_written_twice_is_refused(tmp_path: Path, line: str, duplicated: str) -> None:
    mapping = GOOD_MAPPING.replace('first_name = "firstname"', line)
    refuses(tmp_path, "[crm.hubspot]", "written twice", duplicated, mapping=mapping)


def test_join_of_fields_without_an_ownership_rule_is_refused(tmp_path: Path) -> None:
    mapping = GOOD_MAPPING + (
        '\n[support.zendesk]\nid_property = "external_id"\n[support.zendesk.fields]\n'
        'name = { property = "name", join = ["first_name", "last_name"] }\n'
    )
    refuses(tmp_path, "[support.zendesk]", "last_name", mapping=mapping)


def test_join_flows_only_the_parts_the_ownership_sends(tmp_path: Path) -> None:
    ownership = (
        GOOD_OWNERSHIP.replace(
            'first_name = { owner = "canonical", flows_to = ["crm"]',
            'first_name = { owner = "canonical", flows_to = ["crm", "support"]',
        )
        + 'last_name = { owner = "canonical", flows_to = ["crm"], conflict = "owner_wins" }\n'
    )
    mapping = GOOD_MAPPING + (
        '\n[support.zendesk]\nid_property = "external_id"\n[support.zendesk.fields]\n'
        'name = { property = "name", join = ["first_name", "last_name"] }\n'
    )
    rules = load(tmp_path, ownership=ownership, mapping=mapping)
    assert rules.synced_fields("support") == {"first_name"}


# --- the targets' published limits (config/targets.toml) -------------------------------------

HUBSPOT_PLAN = """
[hubspot]
default_plan = "free"
max_batch = 100
concurrency = 2
plans = { free = { requests = 100, window_seconds = 10 } }
"""


def test_shipped_limits_make_a_policy_for_every_chosen_target() -> None:
    policy = load_rules(OWNERSHIP, MAPPING).ingest
    by_target = {t.target: t for t in policy.targets}

    assert {t: (v.vendor, v.fields) for t, v in by_target.items()} == {
        t: (v, load_rules(OWNERSHIP, MAPPING).synced_fields(t))
        for t, v in {"crm": "hubspot", "billing": "stripe", "support": "zendesk"}.items()
    }
    assert by_target["crm"].limit_of("firstname").max_length == 65_536
    assert by_target["billing"].limit_of("name").max_length == 256
    assert by_target["billing"].limit_of("email").ascii
    assert by_target["billing"].limit_of("address.city").max_length == 5_000
    assert by_target["support"].limit_of("name").required
    salesforce = load_rules(OWNERSHIP, MAPPING, vendors={"crm": "salesforce"}).ingest
    assert salesforce.targets[0].limit_of("LastName").required


def test_a_rules_object_without_limits_takes_everything() -> None:
    assert load_rules(OWNERSHIP, MAPPING, targets_file=None).ingest.targets == ()


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ("text_max_length = 0", "text_max_length"),
        ("[hubspot.properties]\nfirstname = { max_length = -1 }", "max_length"),
        ("[hubspot.properties]\nfirstname = { maxlength = 40 }", "maxlength"),
        ("[hubspot.properties]\nfirstname = { ascii = 'yes' }", "ascii"),
        ("text_max_lenght = 10", "text_max_lenght"),
    ],
)
def test_invalid_published_limits_are_refused(tmp_path: Path, limits: str, needle: str) -> None:
    refuses(tmp_path, "[hubspot]", needle, targets=HUBSPOT_PLAN + limits)


def test_a_required_property_the_mapping_does_not_write_is_refused(tmp_path: Path) -> None:
    """Every record would be refused: that is a broken config, found at start-up."""
    targets = HUBSPOT_PLAN + "[hubspot.properties]\nlastname = { required = true }"
    refuses(tmp_path, "[hubspot] requires lastname", "[crm.hubspot]", targets=targets)


def test_a_chosen_vendor_without_published_limits_is_refused(tmp_path: Path) -> None:
    salesforce = HUBSPOT_PLAN.replace("[hubspot]", "[salesforce]")
    refuses(tmp_path, "no [hubspot] table", targets=salesforce)


def test_limits_of_another_vendor_do_not_apply(tmp_path: Path) -> None:
    targets = (
        HUBSPOT_PLAN
        + HUBSPOT_PLAN.replace("[hubspot]", "[salesforce]")
        + ("[salesforce.properties]\nLastName = { required = true }")
    )
    (crm,) = load(tmp_path, targets=targets).ingest.targets
    assert (crm.vendor, crm.properties) == ("hubspot", {})
