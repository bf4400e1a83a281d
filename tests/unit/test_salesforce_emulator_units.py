"""The Salesforce emulator's pure parts: record ids, SOQL, the org's rules and query cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emulators.common import DurableStore
from emulators.salesforce import (
    ACCOUNT,
    CONTACT,
    Org,
    QueryCursors,
    RecordError,
    SalesforceError,
    SoqlParser,
    id18,
    normalize_id,
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture
def org() -> Org:
    return Org(DurableStore(None), Clock())


def test_ids_carry_salesforces_case_checksum() -> None:
    # the 15- and 18-character forms of ids in Salesforce's REST API guide
    assert id18("001D000000IqhSL") == "001D000000IqhSLIAZ"
    assert id18("001D000000Iomaz") == "001D000000IomazIAB"
    assert normalize_id("001d000000iqhsliaz") == "001D000000IqhSLIAZ"  # the suffix restores case
    assert normalize_id("001D000000IqhSL") == "001D000000IqhSLIAZ"
    assert normalize_id("001D000000IqhSLIA9") is None  # 9 is no checksum character
    assert normalize_id("crmsync_id__c") is None


def test_soql_parses_nested_conditions_and_rejects_mixed_and_or(org: Org) -> None:
    query = SoqlParser(
        org,
        "SELECT Id, Email FROM contact WHERE (Email LIKE '50\\%%' OR NOT Phone = null)"
        " AND LastModifiedDate >= 2024-01-01T00:00:00.000+01:00 ORDER BY Email DESC NULLS FIRST"
        " LIMIT 10 OFFSET 2",
    ).parse()

    assert query.sobject is CONTACT
    assert [f.name for f in query.fields] == ["Id", "Email"]
    assert (query.limit, query.offset) == (10, 2)
    assert query.order[0].descending and query.order[0].nulls_first
    with pytest.raises(SalesforceError) as caught:
        SoqlParser(
            org, "SELECT Id FROM Contact WHERE Email = 'a' OR Phone = 'b' AND Title = 'c'"
        ).parse()
    assert caught.value.error_code == "MALFORMED_QUERY"
    assert caught.value.message.endswith("ERROR at Row:1:Column:57\nunexpected token: AND")


@pytest.mark.parametrize(
    ("soql", "code", "ending"),
    [
        ("SELECT Id FROM Contact WHERE", "MALFORMED_QUERY", "unexpected token: <EOF>"),
        ("SELECT Id, Id FROM Contact", "MALFORMED_QUERY", "duplicate field selected: Id"),
        ("SELECT Id FROM Contact WHERE Birthdate = 2024-01-01T00:00:00Z",
         "INVALID_QUERY_FILTER_OPERATOR", "type date and should not be enclosed in quotes"),
        ("SELECT Id FROM Contact WHERE Email = 5", "INVALID_QUERY_FILTER_OPERATOR",
         "must be of type string and should be enclosed in quotes"),
        ("SELECT Id FROM Contact WHERE Id = 'nope'", "INVALID_QUERY_FILTER_OPERATOR",
         "invalid ID field: nope"),
        ("SELECT Id FROM Contact WHERE Email = 'a' ; DROP", "MALFORMED_QUERY",
         "no viable alternative at character ';'"),
        ("SELECT Id FROM Lead", "INVALID_TYPE", "for the appropriate names."),
    ],
)  # fmt: skip
def test_soql_errors(org: Org, soql: str, code: str, ending: str) -> None:
    with pytest.raises(SalesforceError) as caught:
        SoqlParser(org, soql).parse()

    assert caught.value.status == 400
    assert caught.value.error_code == code
    assert caught.value.message.endswith(ending)


def test_soql_like_and_in_match_case_insensitively(org: Org) -> None:
    for email in ("50%off@example.com", "500@example.com", "Sale@Example.com"):
        org.create(CONTACT, {"LastName": "X", "Email": email})

    def emails(where: str) -> list[str]:
        query = SoqlParser(org, f"SELECT Email FROM Contact WHERE {where}").parse()
        return [r.values["Email"] for r in query.run(org, include_deleted=False)]

    assert emails("Email LIKE '50\\%%'") == ["50%off@example.com"]
    assert emails("Email LIKE '50_@%'") == ["500@example.com"]
    assert emails("Email IN ('sale@example.com', 'nobody@example.com')") == ["Sale@Example.com"]


def test_a_failed_transaction_leaves_no_trace(org: Org) -> None:
    org.create(CONTACT, {"LastName": "Kept", "crmsync_id__c": "k"})

    with pytest.raises(RecordError), org.atomic():
        org.upsert(CONTACT, "crmsync_id__c", "new", {"LastName": "New"})
        org.upsert(CONTACT, "crmsync_id__c", "K", {"Email": "not-an-email"})

    assert org.find(CONTACT, "crmsync_id__c", "new") is None
    assert org.counts.creates == 1 and org.counts.updates == 0
    with org.atomic() as transaction:
        org.create(CONTACT, {"LastName": "Gone", "crmsync_id__c": "g"})
        transaction.rollback()
    assert org.find(CONTACT, "crmsync_id__c", "g") is None
    assert [r.values["LastName"] for r in org.records(CONTACT, include_deleted=True)] == ["Kept"]


def test_committed_writes_survive_a_new_org_over_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "org.sqlite3"
    first = Org(DurableStore(path), Clock())
    with first.atomic():
        account = first.create(ACCOUNT, {"Name": "Acme", "crmsync_key__c": "acme"})
        person = first.create(CONTACT, {"LastName": "X", "AccountId": account.id, "Vip__c": "y"})
    first.delete(account.id)  # takes the contact to the recycle bin with it

    second = Org(DurableStore(path), Clock())

    assert second.get(person.id) is None
    assert second.get(person.id, include_deleted=True) == first.get(person.id, include_deleted=True)
    assert second.find(ACCOUNT, "crmsync_key__c", "ACME") is None  # deleted: released
    assert second.field(CONTACT, "VIP__C").name == "Vip__c"  # custom fields come back too
    assert second.create(CONTACT, {"LastName": "Y"}).id not in (account.id, person.id)


def test_query_cursors_expire_after_fifteen_minutes_unused() -> None:
    now = [0.0]
    cursors = QueryCursors(clock=lambda: now[0])
    locator = cursors.open([{"Id": "x"}], batch=1)

    now[0] = 14 * 60
    assert cursors.rows(locator) is not None
    now[0] += 15 * 60 + 1
    assert cursors.rows(locator) is None
