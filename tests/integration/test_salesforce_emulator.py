"""The Salesforce emulator, driven through Salesforce's Python SDK, and crmsync's Salesforce client.

Every emulator here is a real process (``python -m emulators.salesforce``) on a free loopback
port. simple-salesforce always builds ``https://`` URLs, so the SDK tests talk TLS to an emulator
serving a certificate made for this test session (the SDK's ``requests`` session trusts it);
crmsync's own client talks plain HTTP, as it does to a local emulator.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from adapters.salesforce import DAILY_LIMIT_RETRY_AFTER, SalesforceClient
from adapters.target import Archive, Outcome, Quota, Upsert
from crmsync.errors import PermanentError, RateLimited, TransientError
from emulators.salesforce import normalize_id
from tests.conftest import free_port, wait_until

TOKEN = "00D5g000004zCrm!AQ.test-session"
CLIENT_ID = "3MVG9crmsync.test.consumer.key"
CLIENT_SECRET = "consumer-secret"
USERNAME = "integration@crmsync.example"
PASSWORD = "hunter2"
BATCH_SIZE = 5  # the emulator's query batch, small to make paging cheap to exercise
SF_DATETIME = "%Y-%m-%dT%H:%M:%S.%f%z"


# --------------------------------------------------------------------------------------------
# Emulator processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


@dataclass
class EmulatorProcess:
    url: str
    process: subprocess.Popen[bytes]
    data: Path
    certificate: Certificate | None

    @property
    def verify(self) -> str | bool:
        return str(self.certificate.cert) if self.certificate else True

    def session(self) -> requests.Session:
        """A requests session trusting the emulator's certificate, and nothing from the
        environment (``REQUESTS_CA_BUNDLE`` would override ``verify``; proxies are no use)."""
        session = requests.Session()
        session.trust_env = False
        session.verify = self.verify
        return session

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = f"{self.url}/_emulator/{path}"
        certificate = self.certificate
        verify = ssl.create_default_context(cafile=certificate.cert) if certificate else True
        response = httpx.request(method, url, verify=verify, trust_env=False, **kwargs)
        response.raise_for_status()
        return response

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "stats").json()

    def inject(self, **faults: Any) -> None:
        self.control("POST", "faults", json=faults)

    def reset(self) -> None:
        self.control("POST", "reset")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def _make_certificate(folder: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crmsync emulator")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "emulator.crt", folder / "emulator.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path)


def _launch(
    folder: Path, *args: str, certificate: Certificate | None = None, data: Path | None = None
) -> EmulatorProcess:
    port = free_port()
    data = data or folder / f"salesforce-{port}.sqlite3"
    command = [sys.executable, "-m", "emulators.salesforce", "--port", str(port),
               "--data", str(data), *args]  # fmt: skip
    if certificate is not None:
        command += ["--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)]
    log = (folder / f"emulator-{port}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    scheme = "https" if certificate else "http"
    emulator = EmulatorProcess(f"{scheme}://127.0.0.1:{port}", process, data, certificate)

    def answering() -> bool:
        assert process.poll() is None, (folder / f"emulator-{port}.log").read_text()
        try:
            return emulator.control("GET", "stats").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answering, timeout=20, interval=0.05, what=f"the emulator at {emulator.url}")
    return emulator


def _stop(emulator: EmulatorProcess) -> None:
    if emulator.process.poll() is None:
        emulator.process.terminate()
        try:
            emulator.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return _make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def launch(tmp_path: Path, certificate: Certificate) -> Iterator[Callable[..., EmulatorProcess]]:
    """Start an extra emulator with its own options (TLS unless ``tls=False``)."""
    started: list[EmulatorProcess] = []

    def start(*args: str, tls: bool = True, data: Path | None = None) -> EmulatorProcess:
        emulator = _launch(tmp_path, *args, certificate=certificate if tls else None, data=data)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        _stop(emulator)


COMMON_ARGS = ("--token", TOKEN, "--query-batch-size", str(BATCH_SIZE))


@pytest.fixture(scope="module")
def shared_tls(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> Iterator[EmulatorProcess]:
    folder = tmp_path_factory.mktemp("salesforce-tls")
    oauth = ("--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
             "--username", USERNAME, "--password", PASSWORD)  # fmt: skip
    emulator = _launch(folder, *COMMON_ARGS, *oauth, certificate=certificate)
    yield emulator
    _stop(emulator)


@pytest.fixture(scope="module")
def shared_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    emulator = _launch(tmp_path_factory.mktemp("salesforce-http"), *COMMON_ARGS)
    yield emulator
    _stop(emulator)


@pytest.fixture
def emulator(shared_tls: EmulatorProcess) -> EmulatorProcess:
    """The shared TLS emulator, emptied: no records, faults or API usage."""
    shared_tls.reset()
    return shared_tls


@pytest.fixture
def http_emulator(shared_http: EmulatorProcess) -> EmulatorProcess:
    shared_http.reset()
    return shared_http


def sdk(emulator: EmulatorProcess, token: str = TOKEN) -> Salesforce:
    return Salesforce(instance_url=emulator.url, session_id=token, session=emulator.session())


@pytest.fixture
def sf(emulator: EmulatorProcess) -> Salesforce:
    return sdk(emulator)


def content(error: SalesforceError) -> list[dict[str, Any]]:
    body: Any = error.content
    return body if isinstance(body, list) else json.loads(body)


def sf_time(value: str) -> datetime:
    return datetime.strptime(value, SF_DATETIME)


def contact(n: int, **more: Any) -> dict[str, Any]:
    return {"LastName": f"Person {n}", "Email": f"person{n}@example.com",
            "crmsync_id__c": f"cust-{n}", **more}  # fmt: skip


# --------------------------------------------------------------------------------------------
# sObject rows
# --------------------------------------------------------------------------------------------


def test_created_contact_reads_back_with_salesforce_ids_attributes_and_system_fields(
    sf: Salesforce,
) -> None:
    created = sf.Contact.create(
        {"FirstName": "Ada", "LastName": "Lovelace", "Email": "ada@example.com",
         "MailingCity": "London", "Birthdate": "1815-12-10", "crmsync_id__c": "c-1"}
    )  # fmt: skip

    assert created == {"id": created["id"], "success": True, "errors": []}
    record_id = created["id"]
    assert len(record_id) == 18 and record_id.startswith("003")
    assert normalize_id(record_id[:15]) == record_id  # the suffix is the real case checksum
    record = sf.Contact.get(record_id)
    assert record["attributes"] == {
        "type": "Contact",
        "url": f"/services/data/v59.0/sobjects/Contact/{record_id}",
    }
    assert record["Id"] == record_id
    assert record["Name"] == "Ada Lovelace"
    assert record["Birthdate"] == "1815-12-10"
    assert record["IsDeleted"] is False
    assert record["Phone"] is None  # every field is returned, unset ones as null
    assert record["OwnerId"].startswith("005") and record["AccountId"] is None
    assert record["CreatedDate"] == record["LastModifiedDate"] == record["SystemModstamp"]
    assert sf_time(record["CreatedDate"]).utcoffset() == timedelta(0)
    assert record["CreatedDate"].endswith("+0000")
    # an 18-character id is case-insensitive; a 15-character one is not
    assert sf.Contact.get(record_id.lower())["Id"] == record_id
    assert sf.Contact.get(record_id[:15])["Id"] == record_id


def test_get_with_fields_returns_only_those_plus_id(sf: Salesforce) -> None:
    record_id = sf.Contact.create(contact(1))["id"]

    record = sf.Contact.get(record_id, params={"fields": "Email,LastName"})

    assert set(record) == {"attributes", "Email", "LastName", "Id"}


def test_update_answers_204_and_bumps_last_modified_even_without_changes(sf: Salesforce) -> None:
    record_id = sf.Contact.create(contact(1, Phone="+44 20 1234"))["id"]
    before = sf.Contact.get(record_id)

    assert sf.Contact.update(record_id, {"Email": "new@example.com", "Phone": None}) == 204
    after = sf.Contact.get(record_id)
    assert sf.Contact.update(record_id, {"Email": "new@example.com"}) == 204
    again = sf.Contact.get(record_id)

    assert after["Email"] == "new@example.com" and after["Phone"] is None  # null clears
    assert after["CreatedDate"] == before["CreatedDate"]
    assert sf_time(before["LastModifiedDate"]) <= sf_time(after["LastModifiedDate"])
    assert sf_time(after["SystemModstamp"]) <= sf_time(again["SystemModstamp"])
    assert again["LastModifiedDate"] == again["SystemModstamp"]


def test_deleted_contact_is_gone_from_reads_and_query_but_in_query_all(sf: Salesforce) -> None:
    record_id = sf.Contact.create(contact(1))["id"]

    assert sf.Contact.delete(record_id) == 204

    with pytest.raises(SalesforceResourceNotFound) as caught:
        sf.Contact.get(record_id)
    assert content(caught.value) == [
        {"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}
    ]
    with pytest.raises(SalesforceResourceNotFound) as again:
        sf.Contact.delete(record_id)
    assert content(again.value)[0]["errorCode"] == "ENTITY_IS_DELETED"
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0
    recycled = sf.query_all("SELECT Id, IsDeleted FROM Contact", include_deleted=True)
    assert [(r["Id"], r["IsDeleted"]) for r in recycled["records"]] == [(record_id, True)]
    # the recycle bin releases the external id: a new contact may take it
    assert sf.Contact.create(contact(1))["id"] != record_id


def test_write_errors_come_in_salesforces_list_shape(sf: Salesforce) -> None:
    def refusal(data: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(SalesforceMalformedRequest) as caught:
            sf.Contact.create(data)
        [error] = content(caught.value)
        return error

    assert refusal({"Email": "a@example.com"}) == {
        "message": "Required fields are missing: [LastName]",
        "errorCode": "REQUIRED_FIELD_MISSING",
        "fields": ["LastName"],
    }
    assert refusal({"LastName": "X", "Email": "not-an-email"}) == {
        "message": "Email: invalid email address: not-an-email",
        "errorCode": "INVALID_EMAIL_ADDRESS",
        "fields": ["Email"],
    }
    unknown = refusal({"LastName": "X", "Shoe_Size": 44})
    assert unknown["errorCode"] == "INVALID_FIELD"
    assert unknown["message"] == "No such column 'Shoe_Size' on sobject of type Contact"
    too_long = refusal({"LastName": "X" * 81})
    assert (too_long["errorCode"], too_long["fields"]) == ("STRING_TOO_LONG", ["LastName"])
    read_only = refusal({"LastName": "X", "CreatedDate": "2020-01-01T00:00:00.000+0000"})
    assert read_only["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    first = sf.Contact.create(contact(1))["id"]
    duplicate = refusal(contact(2, crmsync_id__c="CUST-1"))  # unique ignores case
    assert duplicate == {
        "message": f"duplicate value found: crmsync_id__c duplicates value on record with id:"
        f" {first}",
        "errorCode": "DUPLICATE_VALUE",
        "fields": [],
    }
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Contact.update(first, {"LastName": None})
    assert content(caught.value)[0]["errorCode"] == "REQUIRED_FIELD_MISSING"


def test_any_custom_field_is_accepted_and_read_back_by_any_casing(sf: Salesforce) -> None:
    record_id = sf.Contact.create(contact(1, Plan_Tier__c="gold", Seats__c=5))["id"]

    record = sf.Contact.get(record_id)
    rows = sf.query("SELECT plan_tier__c, SEATS__C FROM Contact WHERE plan_tier__c = 'GOLD'")

    assert (record["Plan_Tier__c"], record["Seats__c"]) == ("gold", "5")  # text fields
    assert [(r["Plan_Tier__c"], r["Seats__c"]) for r in rows["records"]] == [("gold", "5")]


def test_contact_references_a_live_account(sf: Salesforce) -> None:
    account_id = sf.Account.create({"Name": "Acme", "crmsync_key__c": "acme"})["id"]
    contact_id = sf.Contact.create(contact(1, AccountId=account_id))["id"]

    assert account_id.startswith("001")
    assert sf.Contact.get(contact_id)["AccountId"] == account_id
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.Contact.create(contact(2, AccountId=contact_id))
    assert content(caught.value)[0]["errorCode"] == "MALFORMED_ID"
    sf.Account.delete(account_id)  # deleting an account deletes its contacts
    with pytest.raises(SalesforceResourceNotFound):
        sf.Contact.get(contact_id)


def test_unknown_resources_and_methods_answer_like_salesforce(sf: Salesforce) -> None:
    with pytest.raises(SalesforceResourceNotFound) as unknown_type:
        sf.restful("sobjects/Lead/00Q5g0000000001AAA")
    with pytest.raises(SalesforceResourceNotFound) as not_an_id:
        sf.Contact.get("not-an-id")
    with pytest.raises(SalesforceGeneralError) as wrong_method:
        sf.restful("limits", method="POST")

    assert content(unknown_type.value)[0]["errorCode"] == "NOT_FOUND"
    assert content(not_an_id.value)[0]["message"] == (
        "Provided external ID field does not exist or is not accessible: not-an-id"
    )
    assert wrong_method.value.status == 405
    assert content(wrong_method.value)[0]["errorCode"] == "METHOD_NOT_ALLOWED"


# --------------------------------------------------------------------------------------------
# External ids
# --------------------------------------------------------------------------------------------


def test_upsert_by_external_id_creates_201_then_updates_200(sf: Salesforce) -> None:
    created = sf.Contact.upsert("crmsync_id__c/c-7", {"LastName": "Hopper"}, raw_response=True)
    updated = sf.Contact.upsert("crmsync_id__c/C-7", {"FirstName": "Grace"}, raw_response=True)

    assert created.status_code == 201
    assert created.json() == {"id": created.json()["id"], "success": True, "errors": [],
                              "created": True}  # fmt: skip
    assert updated.status_code == 200  # API v46.0 and later; 204 before
    assert updated.json() == {**created.json(), "created": False}
    record = sf.Contact.get_by_custom_id("crmsync_id__c", "c-7")
    assert (record["Id"], record["Name"]) == (created.json()["id"], "Grace Hopper")
    assert record["crmsync_id__c"] == "c-7"  # the value as first written


def test_external_id_lookups_refuse_what_salesforce_refuses(sf: Salesforce) -> None:
    with pytest.raises(SalesforceResourceNotFound) as missing:
        sf.Contact.get_by_custom_id("crmsync_id__c", "nobody")
    with pytest.raises(SalesforceResourceNotFound) as not_external:
        sf.Contact.upsert("Email/a@example.com", {"LastName": "X"})
    with pytest.raises(SalesforceMalformedRequest) as in_body:
        sf.Contact.upsert("crmsync_id__c/c-1", {"LastName": "X", "crmsync_id__c": "c-1"})

    assert content(missing.value)[0]["errorCode"] == "NOT_FOUND"
    assert content(not_external.value)[0]["message"] == (
        "Provided external ID field does not exist or is not accessible: Email"
    )
    assert content(in_body.value)[0]["fields"] == ["crmsync_id__c"]
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0


# --------------------------------------------------------------------------------------------
# sObject Collections
# --------------------------------------------------------------------------------------------


def _records(rows: list[dict[str, Any]], sobject: str = "Contact") -> list[dict[str, Any]]:
    return [{"attributes": {"type": sobject}, **row} for row in rows]


def collection_upsert(
    sf: Salesforce, rows: list[dict[str, Any]], all_or_none: bool = False
) -> list[dict[str, Any]]:
    body = {"allOrNone": all_or_none, "records": _records(rows)}
    return sf.restful("composite/sobjects/Contact/crmsync_id__c", method="PATCH", json=body)


def test_collection_upsert_reports_each_record_and_keeps_the_good_ones(sf: Salesforce) -> None:
    existing = sf.Contact.create(contact(1))["id"]

    results = collection_upsert(
        sf, [contact(1, FirstName="Again"), contact(2), contact(3, Email="broken")]
    )

    assert results[0] == {"id": existing, "success": True, "errors": [], "created": False}
    assert results[1]["success"] is True and results[1]["created"] is True
    assert results[2] == {
        "success": False,
        "errors": [
            {
                "statusCode": "INVALID_EMAIL_ADDRESS",
                "message": "Email: invalid email address: broken",
                "fields": ["Email"],
            }
        ],
    }
    names = sf.query("SELECT crmsync_id__c, FirstName FROM Contact ORDER BY crmsync_id__c")
    assert [(r["crmsync_id__c"], r["FirstName"]) for r in names["records"]] == [
        ("cust-1", "Again"),
        ("cust-2", None),
    ]


def test_collection_upsert_all_or_none_rolls_every_record_back(sf: Salesforce) -> None:
    sf.Contact.create(contact(1))

    results = collection_upsert(
        sf, [contact(1, FirstName="Changed"), contact(2), contact(3, LastName=None)],
        all_or_none=True,
    )  # fmt: skip

    rolled_back = {
        "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
        "message": "Record rolled back because not all records were valid and the request was"
        " using AllOrNone header",
        "fields": [],
    }
    assert [r["success"] for r in results] == [False, False, False]
    assert results[0]["errors"] == [rolled_back] and results[1]["errors"] == [rolled_back]
    assert results[2]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    rows = sf.query("SELECT crmsync_id__c, FirstName FROM Contact")["records"]
    assert [(r["crmsync_id__c"], r["FirstName"]) for r in rows] == [("cust-1", None)]


def test_collection_upsert_refuses_repeated_external_ids_and_missing_ones(sf: Salesforce) -> None:
    results = collection_upsert(sf, [contact(1), contact(1, FirstName="Twin"),
                                     {"LastName": "No Key"}])  # fmt: skip

    assert [e["statusCode"] for r in results for e in r["errors"]] == [
        "DUPLICATE_VALUE", "DUPLICATE_VALUE", "MISSING_ARGUMENT",
    ]  # fmt: skip
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0


def test_collections_take_at_most_200_records(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as caught:
        collection_upsert(sf, [contact(n) for n in range(201)])
    with pytest.raises(SalesforceMalformedRequest) as deletes:
        ids = ",".join(f"0035g0000000{n:03d}AAA" for n in range(201))
        sf.restful("composite/sobjects", params={"ids": ids}, method="DELETE")

    assert content(caught.value) == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
        }
    ]
    assert content(deletes.value)[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert len(collection_upsert(sf, [contact(n) for n in range(200)])) == 200


def test_collection_create_update_retrieve_and_delete(sf: Salesforce) -> None:
    created = sf.restful(
        "composite/sobjects", method="POST",
        json={"allOrNone": False, "records": _records([contact(1), contact(2)])
              + _records([{"Name": "Acme"}], "Account")},
    )  # fmt: skip
    contact_ids = [r["id"] for r in created[:2]]
    account_id = created[2]["id"]
    updated = sf.restful(
        "composite/sobjects", method="PATCH",
        json={"records": _records([{"Id": contact_ids[0], "Title": "CTO"}, {"Title": "No Id"}])},
    )  # fmt: skip
    fetched = sf.restful(
        "composite/sobjects/Contact",
        params={"ids": f"{contact_ids[0]},{account_id}", "fields": "Title"},
    )
    sf.Contact.delete(contact_ids[1])
    deleted = sf.restful(
        "composite/sobjects",
        params={"ids": f"{contact_ids[0]},{contact_ids[1]},{account_id}", "allOrNone": "false"},
        method="DELETE",
    )

    assert [r["success"] for r in created] == [True, True, True] and account_id[:3] == "001"
    assert updated[0] == {"id": contact_ids[0], "success": True, "errors": []}
    assert updated[1]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"
    assert fetched[0]["Title"] == "CTO" and fetched[1] is None  # an Account id is no Contact
    assert deleted[0] == {"id": contact_ids[0], "success": True, "errors": []}
    assert deleted[1] == {
        "id": contact_ids[1],
        "success": False,
        "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted",
                    "fields": []}],
    }  # fmt: skip
    assert deleted[2]["success"] is True


def test_collection_update_takes_the_id_in_any_casing_and_sets_the_external_id(
    sf: Salesforce, emulator: EmulatorProcess
) -> None:
    hand_made = sf.Contact.create({"LastName": "Lovelace", "Email": "ada@home.example"})["id"]
    taken = sf.Contact.create(contact(2))["id"]

    updated = sf.restful(
        "composite/sobjects", method="PATCH",
        json={"allOrNone": False, "records": _records([
            {"id": hand_made, "crmsync_id__c": "cust-1", "Email": "ada@example.com"},
            {"ID": taken, "crmsync_id__c": "cust-1"},
        ])},
    )  # fmt: skip

    assert updated[0] == {"id": hand_made, "success": True, "errors": []}
    assert updated[1]["success"] is False
    assert updated[1]["errors"][0]["statusCode"] == "DUPLICATE_VALUE"
    row = sf.Contact.get(hand_made)
    assert (row["crmsync_id__c"], row["Email"]) == ("cust-1", "ada@example.com")
    assert sf.Contact.get_by_custom_id("crmsync_id__c", "cust-1")["Id"] == hand_made
    stats = emulator.stats()
    assert (stats["contacts"], stats["creates"], stats["updates"]) == (2, 2, 1)


# --------------------------------------------------------------------------------------------
# SOQL
# --------------------------------------------------------------------------------------------


def test_query_filters_orders_and_limits_like_soql(sf: Salesforce) -> None:
    for n, city in [(1, "London"), (2, "paris"), (3, None), (4, "Berlin"), (5, "London")]:
        sf.Contact.create(contact(n, MailingCity=city))

    def ids(where: str) -> list[str]:
        rows = sf.query(f"SELECT crmsync_id__c FROM Contact {where}")["records"]
        return [row["crmsync_id__c"] for row in rows]

    assert ids("WHERE Email = 'PERSON2@example.com'") == ["cust-2"]  # case-insensitive
    assert ids("WHERE MailingCity IN ('london', 'Paris') ORDER BY crmsync_id__c DESC") == [
        "cust-5", "cust-2", "cust-1",
    ]  # fmt: skip
    assert ids("WHERE MailingCity != 'London' AND MailingCity != null") == ["cust-2", "cust-4"]
    assert ids("WHERE (MailingCity = 'Berlin' OR LastName LIKE '%3') AND NOT Email = null") == [
        "cust-3", "cust-4",
    ]  # fmt: skip
    assert ids("WHERE MailingCity NOT IN ('London') ORDER BY MailingCity NULLS LAST") == [
        "cust-4", "cust-2", "cust-3",
    ]  # fmt: skip
    assert ids("ORDER BY MailingCity LIMIT 2 OFFSET 1") == ["cust-4", "cust-1"]  # nulls first
    rows = sf.query("select id, EMAIL from contact where crmsync_id__c = 'cust-1'")["records"]
    assert list(rows[0]) == ["attributes", "Id", "Email"]  # canonical names, in SELECT order
    assert sf.query("SELECT COUNT() FROM Contact WHERE MailingCity = 'London'") == {
        "totalSize": 2, "done": True, "records": [],
    }  # fmt: skip


def test_query_pages_through_next_records_url(sf: Salesforce) -> None:
    total = 2 * BATCH_SIZE + 2
    for n in range(total):
        sf.Contact.create(contact(n))

    first = sf.query("SELECT Id, crmsync_id__c FROM Contact")
    everything = sf.query_all("SELECT Id, crmsync_id__c FROM Contact")

    assert (first["totalSize"], first["done"], len(first["records"])) == (total, False, BATCH_SIZE)
    locator, _, offset = first["nextRecordsUrl"].rpartition("/")[2].partition("-")
    assert first["nextRecordsUrl"].startswith("/services/data/v59.0/query/01g")
    assert offset == str(BATCH_SIZE) and len(locator) == 18
    second = sf.query_more(first["nextRecordsUrl"], identifier_is_url=True)
    assert second["totalSize"] == total and second["done"] is False
    assert second["records"][0]["crmsync_id__c"] == f"cust-{BATCH_SIZE}"
    assert [r["crmsync_id__c"] for r in everything["records"]] == [
        f"cust-{n}" for n in range(total)
    ]
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.query_more("01g5g0000000000AAA-2000")
    assert content(caught.value)[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_query_by_last_modified_date_for_polling(sf: Salesforce) -> None:
    untouched = sf.Contact.create(contact(0))["id"]
    early = sf.Contact.create(contact(1))["id"]
    since = sf_time(sf.Contact.get(early)["LastModifiedDate"])
    wait_until(lambda: datetime.now(UTC) > since + timedelta(milliseconds=2), what="a tick")
    late = sf.Contact.create(contact(2))["id"]
    sf.Contact.update(early, {"Title": "Touched"})

    def changed(literal: str) -> list[str]:
        soql = (
            f"SELECT Id FROM Contact WHERE LastModifiedDate > {literal} ORDER BY LastModifiedDate"
        )
        return [row["Id"] for row in sf.query_all(soql)["records"]]

    in_utc = since.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    plus_one = since.astimezone(timezone(timedelta(hours=1))).isoformat(timespec="milliseconds")
    assert changed(in_utc) == [late, early]
    assert changed(plus_one) == [late, early]  # the same instant written as +01:00
    assert untouched in changed("2000-01-01T00:00:00Z")
    assert untouched not in changed(in_utc)


def test_query_errors_carry_salesforces_codes_and_positions(sf: Salesforce) -> None:
    def refusal(soql: str) -> dict[str, Any]:
        with pytest.raises(SalesforceMalformedRequest) as caught:
            sf.query(soql)
        [error] = content(caught.value)
        return error

    malformed = refusal("SELECT Id FORM Contact")
    assert malformed["errorCode"] == "MALFORMED_QUERY"
    assert malformed["message"] == (
        "\nSELECT Id FORM Contact\n          ^\nERROR at Row:1:Column:11\nunexpected token: FORM"
    )
    invalid = refusal("SELECT Id, Shoe_Size FROM Contact")
    assert invalid["errorCode"] == "INVALID_FIELD"
    assert (
        "ERROR at Row:1:Column:12\nNo such column 'Shoe_Size' on entity 'Contact'."
        in (invalid["message"])
    )
    assert refusal("SELECT Id FROM Lead")["errorCode"] == "INVALID_TYPE"
    quoted = refusal("SELECT Id FROM Contact WHERE LastModifiedDate > '2024-01-01'")
    assert quoted["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"
    assert "must be of type dateTime and should not be enclosed in quotes" in quoted["message"]
    assert (
        refusal("SELECT Id FROM Contact WHERE Email = 'a' AND Phone = 'b' OR Title = 'c'")[
            "errorCode"
        ]
        == "MALFORMED_QUERY"
    )  # SOQL needs parentheses to mix AND and OR


# --------------------------------------------------------------------------------------------
# Sessions, limits, faults, durability
# --------------------------------------------------------------------------------------------


def test_a_wrong_session_id_gets_invalid_session_id(emulator: EmulatorProcess) -> None:
    with pytest.raises(SalesforceExpiredSession) as caught:
        sdk(emulator, token="00D!wrong").query("SELECT Id FROM Contact")

    assert caught.value.status == 401
    assert content(caught.value) == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]


def test_every_response_reports_api_usage_and_limits_agree(sf: Salesforce) -> None:
    sf.query("SELECT Id FROM Contact")
    first = sf.api_usage["api-usage"]
    sf.Contact.create(contact(1))
    limits = sf.limits()

    assert (first.used, first.total) == (1, 15_000)  # a Developer Edition org's allocation
    assert sf.api_usage["api-usage"].used == 3  # the limits call counts too
    assert limits["DailyApiRequests"] == {"Max": 15_000, "Remaining": 15_000 - 3}


def test_a_spent_daily_allocation_refuses_every_call(
    launch: Callable[..., EmulatorProcess],
) -> None:
    emulator = launch("--daily-api-limit", "3")
    sf = sdk(emulator, token="any-session")
    for _ in range(3):
        sf.query("SELECT Id FROM Contact")

    with pytest.raises(SalesforceRefusedRequest) as caught:
        sf.Contact.create(contact(1))

    assert caught.value.status == 403
    assert content(caught.value) == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    raw = emulator.session().get(
        f"{emulator.url}/services/data/v59.0/limits",
        headers={"Authorization": "Bearer any-session"},
    )
    assert raw.status_code == 403 and raw.headers["Sforce-Limit-Info"] == "api-usage=3/3"
    assert emulator.stats()["rate_limited"] == 2


def test_oauth_password_flow_logs_the_sdk_in_and_relogs_after_a_revoke(
    emulator: EmulatorProcess,
) -> None:
    session = _routing_session(emulator, "login.salesforce.com")
    sf = Salesforce(username=USERNAME, password=PASSWORD, consumer_key=CLIENT_ID,
                    consumer_secret=CLIENT_SECRET, session=session)  # fmt: skip

    assert sf.sf_instance == urlsplit(emulator.url).netloc
    assert sf.session_id == TOKEN
    sf.Contact.create(contact(1))
    session.post(f"{emulator.url}/services/oauth2/revoke", data={"token": sf.session_id})
    # the revoked session gets INVALID_SESSION_ID; the SDK logs in again and retries
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 1
    with pytest.raises(SalesforceAuthenticationFailed) as caught:
        Salesforce(username=USERNAME, password="wrong", consumer_key=CLIENT_ID,
                   consumer_secret=CLIENT_SECRET, session=session)  # fmt: skip
    assert caught.value.code == "invalid_grant"


def test_oauth_client_credentials_flow(emulator: EmulatorProcess) -> None:
    session = _routing_session(emulator, "crmsync-dev.my.salesforce.com")
    sf = Salesforce(consumer_key=CLIENT_ID, consumer_secret=CLIENT_SECRET,
                    domain="crmsync-dev.my", session=session)  # fmt: skip
    token = session.post(
        f"{emulator.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET),
    ).json()  # fmt: skip

    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0
    assert set(token) == {"access_token", "instance_url", "id", "token_type", "issued_at",
                          "signature"}  # fmt: skip
    assert token["instance_url"] == emulator.url and token["token_type"] == "Bearer"
    with pytest.raises(SalesforceAuthenticationFailed) as caught:
        Salesforce(consumer_key=CLIENT_ID, consumer_secret="wrong", domain="crmsync-dev.my",
                   session=session)  # fmt: skip
    assert caught.value.code == "invalid_client"


class _RouteTo(HTTPAdapter):
    """Sends requests for another host to the emulator, as a hosts-file entry would."""

    def __init__(self, netloc: str) -> None:
        super().__init__()
        self._netloc = netloc

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        request.url = urlunsplit(urlsplit(request.url or "")._replace(netloc=self._netloc))
        return super().send(request, *args, **kwargs)


def _routing_session(emulator: EmulatorProcess, host: str) -> requests.Session:
    session = emulator.session()
    session.mount(f"https://{host}", _RouteTo(urlsplit(emulator.url).netloc))
    return session


def test_describe_names_the_external_id_field(sf: Salesforce) -> None:
    fields = {f["name"]: f for f in sf.Contact.describe()["fields"]}
    objects = {o["name"]: o["keyPrefix"] for o in sf.describe()["sobjects"]}

    assert fields["crmsync_id__c"]["externalId"] and fields["crmsync_id__c"]["unique"]
    assert fields["LastName"]["nillable"] is False and fields["Name"]["createable"] is False
    assert objects == {"Contact": "003", "Account": "001"}


def test_versions_are_listed_without_a_session(emulator: EmulatorProcess) -> None:
    versions = emulator.session().get(f"{emulator.url}/services/data/").json()

    assert {"label": "Winter '24", "url": "/services/data/v59.0", "version": "59.0"} in versions
    assert emulator.stats()["requests"] == 0  # no API call counted


def test_injected_faults_reach_the_sdk_as_salesforce_errors(
    emulator: EmulatorProcess, sf: Salesforce
) -> None:
    emulator.inject(error_rate=1.0, error_status=500)
    with pytest.raises(SalesforceGeneralError) as server_error:
        sf.query("SELECT Id FROM Contact")
    emulator.inject(error_rate=1.0, error_status=503)
    with pytest.raises(SalesforceGeneralError) as unavailable:
        sf.query("SELECT Id FROM Contact")
    emulator.inject(throttle=True)
    with pytest.raises(SalesforceRefusedRequest) as throttled:
        sf.query("SELECT Id FROM Contact")
    emulator.inject(outage=True)
    with pytest.raises(SalesforceGeneralError) as outage:
        sf.query("SELECT Id FROM Contact")
    emulator.inject()

    assert server_error.value.status == 500
    assert content(server_error.value)[0]["errorCode"] == "UNKNOWN_EXCEPTION"
    assert content(unavailable.value)[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert content(throttled.value) == [
        {"message": "ConcurrentPerOrgLongTxn Limit exceeded.",
         "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]  # fmt: skip
    assert (outage.value.status, outage.value.content) == (503, "503 Service Unavailable")
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 0
    assert emulator.stats()["faults_injected"] == 4


def test_a_killed_emulator_restarts_with_every_record(
    launch: Callable[..., EmulatorProcess], tmp_path: Path
) -> None:
    data = tmp_path / "org.sqlite3"
    first = launch(data=data)
    sf = sdk(first, token="s1")
    kept = sf.Contact.create(contact(1, Plan__c="gold"))["id"]
    gone = sf.Contact.create(contact(2))["id"]
    sf.Contact.delete(gone)
    collection_upsert(sf, [contact(1, Title="Boss"), contact(3)], all_or_none=False)
    before = sf.query_all("SELECT Id, Title, Plan__c, LastModifiedDate FROM Contact",
                          include_deleted=True)["records"]  # fmt: skip
    first.kill()  # SIGKILL: nothing is flushed on the way out

    second = launch(data=data)
    sf = sdk(second, token="s2")
    after = sf.query_all("SELECT Id, Title, Plan__c, LastModifiedDate FROM Contact",
                         include_deleted=True)["records"]  # fmt: skip

    assert after == before and len(after) == 3
    assert sf.Contact.get_by_custom_id("crmsync_id__c", "cust-1")["Id"] == kept
    assert sf.Contact.create(contact(4))["id"] not in {r["Id"] for r in before}
    assert sf.query("SELECT COUNT() FROM Contact")["totalSize"] == 3


def test_control_routes_count_requests_and_writes(
    emulator: EmulatorProcess, sf: Salesforce
) -> None:
    record_id = sf.Contact.create(contact(1))["id"]
    sf.Contact.update(record_id, {"Title": "CTO"})
    sf.Contact.delete(record_id)

    stats = emulator.stats()

    assert {k: stats[k] for k in ("requests", "creates", "updates", "deletes", "contacts",
                                  "recycle_bin", "api_usage")} == {
        "requests": 3, "creates": 1, "updates": 1, "deletes": 1, "contacts": 0,
        "recycle_bin": 1, "api_usage": 3,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# crmsync's Salesforce client
# --------------------------------------------------------------------------------------------


def upsert(customer: str, **properties: Any) -> Upsert:
    return Upsert(customer, {"crmsync_id__c": customer, **properties}, None, f"key-{customer}")


@pytest.fixture
async def client(http_emulator: EmulatorProcess) -> Any:
    client = SalesforceClient(http_emulator.url, TOKEN, timeout=5.0)
    yield client
    await client.aclose()


def _contacts(emulator: EmulatorProcess) -> dict[str, dict[str, Any]]:
    response = httpx.get(
        f"{emulator.url}/services/data/v59.0/queryAll",
        params={"q": "SELECT Id, IsDeleted, crmsync_id__c, Email, FirstName, Phone FROM Contact"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.raise_for_status()
    assert response.json()["done"]
    return {row["crmsync_id__c"]: row for row in response.json()["records"]}


async def test_client_upserts_create_then_update_by_external_id(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    first = await client.upsert([
        upsert("c1", LastName="One", Email="one@example.com", Phone="+1 555 0100"),
        upsert("c2", LastName="Two", Birthdate="1990-05-01"),
    ])  # fmt: skip
    second = await client.upsert([upsert("c1", FirstName="Uno", Phone=None)])

    assert [o.customer_id for o in first] == ["c1", "c2"]
    assert all(o.error is None and o.external_id and o.external_id[:3] == "003" for o in first)
    assert second[0].external_id == first[0].external_id
    rows = _contacts(http_emulator)
    assert rows["c1"]["FirstName"] == "Uno" and rows["c1"]["Phone"] is None  # None clears
    assert rows["c1"]["Email"] == "one@example.com"
    assert http_emulator.stats()["creates"] == 2


async def test_client_replay_of_a_batch_creates_no_duplicates(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    batch = [upsert(f"c{n}", LastName=f"N{n}") for n in range(50)]

    first = await client.upsert(batch)
    replay = await client.upsert(batch)

    assert [o.external_id for o in replay] == [o.external_id for o in first]
    stats = http_emulator.stats()
    assert (stats["contacts"], stats["creates"], stats["updates"]) == (50, 50, 50)


async def test_client_reports_a_refused_record_and_writes_the_rest(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    outcomes = await client.upsert([
        upsert("good", LastName="Fine"),
        upsert("bad", LastName="Broken", Email="no-at-sign"),
        upsert("nameless"),
    ])  # fmt: skip

    good, bad, nameless = outcomes
    assert good.error is None and good.external_id
    assert bad.external_id is None
    assert json.loads(bad.error or "") == [
        {"statusCode": "INVALID_EMAIL_ADDRESS",
         "message": "Email: invalid email address: no-at-sign", "fields": ["Email"]}
    ]  # fmt: skip
    assert json.loads(nameless.error or "")[0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert set(_contacts(http_emulator)) == {"good"}


async def test_client_adopts_a_hand_made_contact_by_its_id_and_creates_nothing(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    response = httpx.post(
        f"{http_emulator.url}/services/data/v59.0/sobjects/Contact",
        json={"LastName": "Lovelace", "Email": "ada@home.example"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    hand_made = response.json()["id"]
    adopt = Upsert(
        "c1", {"crmsync_id__c": "c1", "LastName": "Lovelace", "Email": "ada@example.com"},
        hand_made, "key-c1", adopt=True,
    )  # fmt: skip
    gone = Upsert("c3", {"crmsync_id__c": "c3", "LastName": "Gone"}, "0035g00000zzzzzAAA",
                  "key-c3", adopt=True)  # fmt: skip

    outcomes = await client.upsert([upsert("c2", LastName="Two"), adopt, gone])
    replayed = await client.upsert([adopt])

    by_customer = {o.customer_id: o for o in outcomes}
    assert by_customer["c1"] == Outcome("c1", external_id=hand_made)
    assert replayed == [Outcome("c1", external_id=hand_made)]
    assert by_customer["c2"].error is None and by_customer["c2"].external_id != hand_made
    assert by_customer["c3"].external_id is None
    assert "INVALID_CROSS_REFERENCE_KEY" in (by_customer["c3"].error or "")  # no such record
    rows = _contacts(http_emulator)
    assert set(rows) == {"c1", "c2"}
    assert (rows["c1"]["Id"], rows["c1"]["Email"]) == (hand_made, "ada@example.com")
    assert http_emulator.stats()["creates"] == 2  # the hand-made contact and c2


async def test_client_archives_and_treats_already_deleted_as_done(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    [kept, doomed] = await client.upsert(
        [upsert("kept", LastName="K"), upsert("doomed", LastName="D")]
    )
    archive = Archive("doomed", doomed.external_id or "", "archive-doomed")

    first = await client.archive([archive])
    again = await client.archive([archive])
    never = await client.archive([Archive("ghost", "0035g00000zzzzzAAA", "archive-ghost")])

    assert first == again == [Outcome("doomed", external_id=doomed.external_id)]
    assert never[0].error is None
    rows = _contacts(http_emulator)
    assert rows["doomed"]["IsDeleted"] is True and rows["kept"]["IsDeleted"] is False
    assert kept.error is None


async def test_client_reports_the_daily_allocation_as_quotas(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    assert client.quotas() == []

    await client.upsert([upsert("c1", LastName="One")])
    await client.archive([Archive("c1", "0035g00000zzzzzAAA", "k")])

    assert client.quotas() == [Quota(limit=15_000, remaining=15_000 - 2, window=86_400)]
    assert client.vendor == "salesforce" and client.max_batch == 200
    assert TOKEN not in repr(client)


async def test_client_maps_a_spent_allocation_to_rate_limited(
    launch: Callable[..., EmulatorProcess],
) -> None:
    emulator = launch("--daily-api-limit", "1", tls=False)
    client = SalesforceClient(emulator.url, "any-session")
    try:
        await client.upsert([upsert("c1", LastName="One")])
        with pytest.raises(RateLimited) as caught:
            await client.upsert([upsert("c2", LastName="Two")])
    finally:
        await client.aclose()

    assert caught.value.retry_after == DAILY_LIMIT_RETRY_AFTER
    assert "TotalRequests Limit exceeded." in caught.value.body
    assert client.quotas() == [Quota(limit=1, remaining=0, window=86_400)]


async def test_client_maps_faults_to_transient_and_rate_limited_errors(
    client: SalesforceClient, http_emulator: EmulatorProcess
) -> None:
    http_emulator.inject(error_rate=1.0, error_status=500)
    with pytest.raises(TransientError) as server_error:
        await client.upsert([upsert("c1", LastName="One")])
    http_emulator.inject(outage=True)
    with pytest.raises(TransientError) as outage:
        await client.archive([Archive("c1", "0035g00000zzzzzAAA", "k")])
    http_emulator.inject(throttle=True)
    with pytest.raises(RateLimited) as throttled:
        await client.upsert([upsert("c1", LastName="One")])
    http_emulator.inject()

    assert (server_error.value.status, outage.value.status) == (500, 503)
    assert throttled.value.retry_after is None  # concurrency frees fast: the caller's backoff
    assert http_emulator.stats()["contacts"] == 0


async def test_client_maps_a_bad_session_and_a_bad_request_to_permanent_errors(
    http_emulator: EmulatorProcess,
) -> None:
    wrong = SalesforceClient(http_emulator.url, "00D!expired")
    right = SalesforceClient(http_emulator.url, TOKEN)
    try:
        with pytest.raises(PermanentError) as session:
            await wrong.upsert([upsert("c1", LastName="One")])
        with pytest.raises(PermanentError) as unknown_field:
            await right.upsert([upsert("c1", LastName="One", NoSuchField="x")])
    finally:
        await wrong.aclose()
        await right.aclose()

    assert session.value.status == 401 and "INVALID_SESSION_ID" in session.value.body
    assert unknown_field.value.status == 400 and "INVALID_FIELD" in unknown_field.value.body


async def test_client_maps_connection_failures_to_transient_errors() -> None:
    client = SalesforceClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2.0)
    try:
        with pytest.raises(TransientError):
            await client.upsert([upsert("c1", LastName="One")])
    finally:
        await client.aclose()
