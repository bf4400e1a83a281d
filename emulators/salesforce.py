"""Local emulator of Salesforce's REST API for the Contact and Account sObjects.

crmsync's Salesforce adapter and its tests talk to this instead of a real org. It serves the REST
resources under their real paths (``/services/data/vXX.X/...``): sObject rows (by record id and by
external id), sObject Collections (create, update, upsert, delete, retrieve; ``allOrNone``
honoured), SOQL ``query`` / ``queryAll`` with query-locator paging, ``limits``, describe, and an
OAuth 2.0 token endpoint, all with Salesforce's bodies and error shapes
(``[{"message", "errorCode", "fields"}]``), so ``simple-salesforce`` works against it unchanged.

The org's daily API allocation is a rolling 24-hour count reported on every response in
``Sforce-Limit-Info: api-usage=N/MAX``; once spent every call gets 403 REQUEST_LIMIT_EXCEEDED.
Salesforce has no per-second limit; its limit on concurrent long-running requests is not modelled
(the ``throttle`` fault answers with that limit's 403 instead).

Records live in memory and are written through to a ``DurableStore`` (deleted records stay in
the recycle bin, ``IsDeleted = true``, visible to ``queryAll``). ``/_emulator/*`` control routes
come from ``emulators.common``. Salesforce's outbound messages are SOAP, so no webhooks are sent.

Run it with ``python -m emulators.salesforce --port 18081 --data sf.sqlite3``; simple-salesforce
always speaks HTTPS, so give it ``--tls-cert`` / ``--tls-key`` when an SDK is the client.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pydantic
from aiohttp import web

from emulators.common import (
    UNLIMITED,
    Admission,
    DurableStore,
    FaultInjector,
    SlidingWindowLimiter,
    WebhookEmitter,
    add_control_routes,
    emulator_parser,
    outage_response,
    serve,
)

__all__ = ["SalesforceEmulatorConfig", "create_app", "main"]

OLDEST_API_VERSION = 20
NEWEST_API_VERSION = 62
MAX_COLLECTION_RECORDS = 200
MAX_QUERY_BATCH = 2000
MIN_QUERY_BATCH = 200
QUERY_LOCATOR_TTL = 15 * 60  # Salesforce drops a query cursor after 15 minutes unused
#: Developer Edition's daily API allocation (Enterprise: 100,000 + 1,000 per user licence).
DEVELOPER_EDITION_DAILY_API_REQUESTS = 15_000
DAY = 86_400.0
#: ``--require-token`` takes the session id from here, as the HubSpot emulator does.
TOKEN_VARIABLE = "CRMSYNC_CRM_TOKEN"
DEFAULT_TOKEN = "local-dev-token"

NOT_FOUND_MESSAGE = "The requested resource does not exist"
SESSION_MESSAGE = "Session expired or invalid"
TOTAL_REQUESTS_MESSAGE = "TotalRequests Limit exceeded."
CONCURRENT_REQUESTS_MESSAGE = "ConcurrentPerOrgLongTxn Limit exceeded."
ROLLED_BACK_MESSAGE = (
    "Record rolled back because not all records were valid and the request was using AllOrNone"
    " header"
)
TOO_MANY_RECORDS_MESSAGE = (
    f"record limit reached. cannot submit more than {MAX_COLLECTION_RECORDS} records into this call"
)
NO_SUCH_SOQL_COLUMN = (
    "No such column '{name}' on entity '{sobject}'. If you are attempting to use a custom field,"
    " be sure to append the '__c' after the custom field name. Please reference your WSDL or the"
    " describe call for the appropriate names."
)
UNSUPPORTED_SOQL_TYPE = (
    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure"
    " to append the '__c' after the entity name. Please reference your WSDL or the describe call"
    " for the appropriate names."
)


def _utc_now() -> datetime:
    """Now, at Salesforce's precision (milliseconds)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def sf_datetime(moment: datetime) -> str:
    """Salesforce's JSON dateTime: UTC with milliseconds and a ``+0000`` offset."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}+0000"


# --------------------------------------------------------------------------------------------
# Record ids: 15 case-sensitive characters plus a 3-character case checksum
# --------------------------------------------------------------------------------------------

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_SHAPE = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")


def id18(id15: str) -> str:
    """The 18-character id: each suffix character encodes which of 5 characters are upper case."""
    suffix = ""
    for chunk in range(3):
        part = id15[chunk * 5 : chunk * 5 + 5]
        suffix += _CHECKSUM[sum(1 << bit for bit, char in enumerate(part) if char.isupper())]
    return id15 + suffix


def normalize_id(value: str) -> str | None:
    """The canonical 18-character form of a 15- or 18-character id, or None if it is not one.

    An 18-character id is case-insensitive: its suffix restores the case of the first 15.
    """
    if not _ID_SHAPE.fullmatch(value):
        return None
    if len(value) == 15:
        return id18(value)
    chars = list(value[:15].lower())
    for chunk, flag_char in enumerate(value[15:].upper()):
        flags = _CHECKSUM.find(flag_char)
        if flags < 0:
            return None
        for bit in range(5):
            if flags & (1 << bit):
                chars[chunk * 5 + bit] = chars[chunk * 5 + bit].upper()
    return id18("".join(chars))


def _base62(number: int, width: int) -> str:
    digits = ""
    while number:
        number, digit = divmod(number, 62)
        digits = _BASE62[digit] + digits
    return digits.rjust(width, "0")


ORG_ID = id18("00D5g000004zCrm")
USER_ID = id18("0055g00000CrmSy")


# --------------------------------------------------------------------------------------------
# Schema: the standard fields of Contact and Account, plus any custom (``__c``) field
# --------------------------------------------------------------------------------------------

TEXT_TYPES = frozenset({"string", "textarea", "picklist", "phone", "email", "url"})
ID_TYPES = frozenset({"id", "reference"})


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # id, reference, string, textarea, picklist, phone, email, url, date, datetime,
    #            boolean, int, currency
    label: str
    length: int = 0
    writable: bool = True
    required: bool = False
    external_id: bool = False
    unique: bool = False
    custom: bool = False
    reference_to: str | None = None
    default: Any = None


def _text(name: str, label: str, length: int, kind: str = "string", **more: Any) -> Field:
    return Field(name, kind, label, length, **more)


def _system_fields() -> tuple[Field, ...]:
    return (
        Field("Id", "id", "Record ID", 18, writable=False),
        Field("IsDeleted", "boolean", "Deleted", writable=False, default=False),
        Field("MasterRecordId", "reference", "Master Record ID", 18, writable=False),
    )


def _audit_fields() -> tuple[Field, ...]:
    return (
        Field("OwnerId", "reference", "Owner ID", 18, reference_to="User"),
        Field("CreatedDate", "datetime", "Created Date", writable=False),
        Field("CreatedById", "reference", "Created By ID", 18, writable=False, reference_to="User"),
        Field("LastModifiedDate", "datetime", "Last Modified Date", writable=False),
        Field("LastModifiedById", "reference", "Last Modified By ID", 18, writable=False,
              reference_to="User"),
        Field("SystemModstamp", "datetime", "System Modstamp", writable=False),
    )  # fmt: skip


def _address(prefix: str, label: str) -> tuple[Field, ...]:
    return (
        _text(f"{prefix}Street", f"{label} Street", 255, "textarea"),
        _text(f"{prefix}City", f"{label} City", 40),
        _text(f"{prefix}State", f"{label} State/Province", 80),
        _text(f"{prefix}PostalCode", f"{label} Zip/Postal Code", 20),
        _text(f"{prefix}Country", f"{label} Country", 80),
    )


@dataclass(frozen=True)
class SObjectType:
    name: str
    label: str
    label_plural: str
    key_prefix: str
    fields: tuple[Field, ...]

    def standard(self, name: str) -> Field | None:
        return self._by_name().get(name.casefold())

    def _by_name(self) -> dict[str, Field]:
        return {f.name.casefold(): f for f in self.fields}

    @property
    def external_ids(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.external_id)


CONTACT = SObjectType(
    "Contact",
    "Contact",
    "Contacts",
    "003",
    (
        *_system_fields(),
        Field("AccountId", "reference", "Account ID", 18, reference_to="Account"),
        _text("LastName", "Last Name", 80, required=True),
        _text("FirstName", "First Name", 40),
        _text("Salutation", "Salutation", 40, "picklist"),
        _text("Name", "Full Name", 121, writable=False),
        *_address("Mailing", "Mailing"),
        _text("Phone", "Business Phone", 40, "phone"),
        _text("MobilePhone", "Mobile Phone", 40, "phone"),
        _text("Email", "Email", 80, "email"),
        _text("Title", "Title", 128),
        _text("Department", "Department", 80),
        Field("Birthdate", "date", "Birthdate"),
        _text("Description", "Contact Description", 32000, "textarea"),
        _text("LeadSource", "Lead Source", 255, "picklist"),
        Field("HasOptedOutOfEmail", "boolean", "Email Opt Out", default=False),
        Field("DoNotCall", "boolean", "Do Not Call", default=False),
        *_audit_fields(),
        _text("crmsync_id__c", "crmsync ID", 255, external_id=True, unique=True, custom=True),
    ),
)
ACCOUNT = SObjectType(
    "Account",
    "Account",
    "Accounts",
    "001",
    (
        *_system_fields(),
        _text("Name", "Account Name", 255, required=True),
        _text("Type", "Account Type", 255, "picklist"),
        Field("ParentId", "reference", "Parent Account ID", 18, reference_to="Account"),
        *_address("Billing", "Billing"),
        *_address("Shipping", "Shipping"),
        _text("Phone", "Account Phone", 40, "phone"),
        _text("Website", "Website", 255, "url"),
        _text("Industry", "Industry", 255, "picklist"),
        Field("AnnualRevenue", "currency", "Annual Revenue"),
        Field("NumberOfEmployees", "int", "Employees"),
        _text("Description", "Account Description", 32000, "textarea"),
        *_audit_fields(),
        _text("crmsync_key__c", "crmsync Key", 255, external_id=True, unique=True, custom=True),
    ),
)
SOBJECTS = {sobject.name: sobject for sobject in (CONTACT, ACCOUNT)}
_BY_PREFIX = {sobject.key_prefix: sobject for sobject in SOBJECTS.values()}
_CUSTOM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*__c", re.IGNORECASE)
_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
)


def sobject_named(name: str) -> SObjectType | None:
    """The type a URL or SOQL names (case-insensitively)."""
    return next((s for s in SOBJECTS.values() if s.name.casefold() == name.casefold()), None)


def sobject_of(record_id: str) -> SObjectType | None:
    return _BY_PREFIX.get(record_id[:3])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RecordError(Exception):
    """Salesforce refused one record; in a collection it becomes that record's result."""

    def __init__(self, status_code: str, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.fields = list(fields)

    def result(self, record_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {} if record_id is None else {"id": record_id}
        error = {"statusCode": self.status_code, "message": self.message, "fields": self.fields}
        return {**body, "success": False, "errors": [error]}


class SalesforceError(Exception):
    """A refused request, answered in Salesforce's list shape."""

    def __init__(
        self, status: int, error_code: str, message: str, fields: Sequence[str] | None = None
    ) -> None:
        super().__init__(f"{error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = fields

    @classmethod
    def from_record(cls, error: RecordError, status: int = 400) -> SalesforceError:
        return cls(status, error.status_code, error.message, error.fields)

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "errorCode": self.error_code}
        if self.fields is not None:
            body["fields"] = list(self.fields)
        return _json(self.status, [body])


def _not_found(message: str = NOT_FOUND_MESSAGE) -> SalesforceError:
    return SalesforceError(404, "NOT_FOUND", message)


# --------------------------------------------------------------------------------------------
# Records and the org that holds them, free of HTTP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One stored record. Never mutated: every write stores a replacement.

    ``values`` holds the writable and custom fields that have a value, by canonical name, as
    JSON-able values (dates as ``YYYY-MM-DD``); system fields are derived.
    """

    sobject: str
    id: str
    values: Mapping[str, Any]
    created: datetime
    modified: datetime
    deleted: bool = False

    def doc(self) -> dict[str, Any]:
        return {
            "sobject": self.sobject,
            "values": dict(self.values),
            "created": self.created.isoformat(),
            "modified": self.modified.isoformat(),
            "deleted": self.deleted,
        }

    @classmethod
    def from_doc(cls, record_id: str, doc: Mapping[str, Any]) -> Record:
        return cls(
            doc["sobject"],
            record_id,
            doc["values"],
            datetime.fromisoformat(doc["created"]),
            datetime.fromisoformat(doc["modified"]),
            doc["deleted"],
        )


@dataclass
class WriteCounts:
    creates: int = 0
    updates: int = 0
    deletes: int = 0


@dataclass
class _Transaction:
    undo: dict[str, Record | None] = field(default_factory=dict)
    counts: WriteCounts = field(default_factory=WriteCounts)
    rolled_back: bool = False

    def rollback(self) -> None:
        """Undo every write of the transaction when it ends (an allOrNone failure)."""
        self.rolled_back = True


class Org:
    """The emulated org's records with Salesforce's rules: ids, required fields, uniqueness
    of external ids (case-insensitive, live records only), references and the recycle bin.

    Writes inside ``atomic()`` are persisted together when it ends, or undone together when it
    is rolled back or a RecordError escapes it.
    """

    def __init__(self, durable: DurableStore, clock: Callable[[], datetime] = _utc_now) -> None:
        self._durable = durable
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._unique: dict[tuple[str, str, str], str] = {}  # (sobject, field, value key) -> id
        self._custom: dict[str, dict[str, Field]] = {name: {} for name in SOBJECTS}
        self._transaction: _Transaction | None = None
        self.counts = WriteCounts()
        for sobject in SOBJECTS:
            for record_id, doc in durable.load(sobject):
                record = Record.from_doc(record_id, doc)
                self._records[record_id] = record
                self._register_customs(record)
                self._index(record)

    # -- reading ------------------------------------------------------------------------------

    def field(self, sobject: SObjectType, name: str) -> Field | None:
        """A field by any casing: standard, or custom (any ``__c`` name is accepted)."""
        known = sobject.standard(name) or self._custom[sobject.name].get(name.casefold())
        if known is not None or not _CUSTOM_NAME.fullmatch(name):
            return known
        return _text(name, name.removesuffix("__c").replace("_", " "), 255, custom=True)

    def fields(self, sobject: SObjectType) -> list[Field]:
        """Every field of the type: standard ones, then the custom ones any record has used."""
        standard = {f.name.casefold() for f in sobject.fields}
        customs = [f for k, f in self._custom[sobject.name].items() if k not in standard]
        return [*sobject.fields, *customs]

    def get(self, record_id: str, *, include_deleted: bool = False) -> Record | None:
        record = self._records.get(record_id)
        if record is None or (record.deleted and not include_deleted):
            return None
        return record

    def find(self, sobject: SObjectType, field_name: str, value: str) -> Record | None:
        """The live record whose unique external id ``field_name`` is ``value``."""
        record_id = self._unique.get((sobject.name, field_name, _value_key(value)))
        return None if record_id is None else self._records[record_id]

    def records(self, sobject: SObjectType, *, include_deleted: bool) -> Iterator[Record]:
        """In creation order (Salesforce's order when a query names none)."""
        for record in self._records.values():
            if record.sobject == sobject.name and (include_deleted or not record.deleted):
                yield record

    def count(self, sobject: SObjectType, *, deleted: bool) -> int:
        return sum(
            r.sobject == sobject.name and r.deleted == deleted for r in self._records.values()
        )

    # -- writing ------------------------------------------------------------------------------

    def create(self, sobject: SObjectType, values: Mapping[str, Any]) -> Record:
        self._refuse_read_only(sobject, values, "Id")
        now = self._clock()
        defaults = {f.name: f.default for f in sobject.fields if f.default is not None}
        merged = {**defaults, "OwnerId": USER_ID, **values}
        record = Record(sobject.name, self._new_id(sobject), _present(merged), now, now)
        self._check(sobject, record)
        self._put(record)
        self._count("creates")
        return record

    def update(self, record_id: str, values: Mapping[str, Any]) -> Record:
        current = self._live(record_id)
        sobject = SOBJECTS[current.sobject]
        values = {name: value for name, value in values.items() if name != "Id"}  # the URL's
        self._refuse_read_only(sobject, values)
        # Salesforce bumps LastModifiedDate on every update, even one that changes nothing.
        merged = _present({**current.values, **values})
        record = replace(current, values=merged, modified=self._clock())
        self._check(sobject, record)
        self._put(record)
        self._count("updates")
        return record

    def upsert(
        self, sobject: SObjectType, field_name: str, value: str | None, values: Mapping[str, Any]
    ) -> tuple[Record, bool]:
        """Update the live record matching ``field_name = value``, or create one with it."""
        if field_name == "Id":
            if value is None:
                return self.create(sobject, values), True
            record_id = normalize_id(value)
            if record_id is None or sobject_of(record_id) is not sobject:
                raise RecordError(
                    "MALFORMED_ID", f"Id: id value of incorrect type: {value}", ["Id"]
                )
            return self.update(self._live(record_id).id, values), False
        if value is None or value == "":
            raise RecordError("MISSING_ARGUMENT", f"{field_name} not specified", [field_name])
        existing = self.find(sobject, field_name, value)
        if existing is None:
            return self.create(sobject, {**values, field_name: value}), True
        return self.update(existing.id, values), False

    def delete(self, record_id: str) -> Record:
        """Move a record (and an account's contacts) to the recycle bin."""
        record = self._records.get(record_id)
        if record is None:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if record.deleted:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
        now = self._clock()
        self._put(replace(record, deleted=True, modified=now))
        self._count("deletes")
        if record.sobject == ACCOUNT.name:
            for contact in list(self.records(CONTACT, include_deleted=False)):
                if contact.values.get("AccountId") == record_id:
                    self._put(replace(contact, deleted=True, modified=now))
                    self._count("deletes")
        return record

    @contextlib.contextmanager
    def atomic(self) -> Iterator[_Transaction]:
        """One transaction; nested blocks join the outer one."""
        if self._transaction is not None:
            yield self._transaction
            return
        transaction = self._transaction = _Transaction()
        try:
            yield transaction
        except BaseException:
            self._undo(transaction)
            raise
        finally:
            self._transaction = None
        if transaction.rolled_back:
            self._undo(transaction)
            return
        for record_id in transaction.undo:
            self._persist(self._records[record_id])
        for name in ("creates", "updates", "deletes"):
            setattr(
                self.counts, name, getattr(self.counts, name) + getattr(transaction.counts, name)
            )

    # -- rules --------------------------------------------------------------------------------

    def _live(self, record_id: str) -> Record:
        record = self._records.get(record_id)
        if record is None:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if record.deleted:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
        return record

    def _refuse_read_only(
        self, sobject: SObjectType, values: Mapping[str, Any], *also: str
    ) -> None:
        if "Id" in values and "Id" in also:
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE", "cannot specify Id in an insert call", ["Id"]
            )
        fixed = [
            name
            for name in values
            if (f := sobject.standard(name)) is not None and not f.writable and name != "Id"
        ]
        if fixed:
            message = (
                f"Unable to create/update fields: {', '.join(fixed)}. Please check the security"
                " settings of this field and verify that it is read/write for your profile or"
                " permission set."
            )
            raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", message, fixed)

    def _check(self, sobject: SObjectType, record: Record) -> None:
        missing = [f.name for f in sobject.fields if f.required and f.name not in record.values]
        if missing:
            message = f"Required fields are missing: [{', '.join(missing)}]"
            raise RecordError("REQUIRED_FIELD_MISSING", message, missing)
        for name, value in record.values.items():
            spec = self.field(sobject, name)
            if spec is None:
                continue
            if spec.type in TEXT_TYPES and len(value) > spec.length:
                message = f"{spec.label}: data value too large: {value} (max length={spec.length})"
                raise RecordError("STRING_TOO_LONG", message, [name])
            if spec.type == "email" and not _EMAIL.fullmatch(value):
                message = f"{spec.label}: invalid email address: {value}"
                raise RecordError("INVALID_EMAIL_ADDRESS", message, [name])
            if spec.type == "reference":
                self._check_reference(spec, value)
        for spec in sobject.external_ids:
            value = record.values.get(spec.name)
            holder = None if value is None else self.find(sobject, spec.name, value)
            if holder is not None and holder.id != record.id:
                message = (
                    f"duplicate value found: {spec.name} duplicates value on record with id:"
                    f" {holder.id}"
                )
                raise RecordError("DUPLICATE_VALUE", message)

    def _check_reference(self, spec: Field, value: str) -> None:
        target = SOBJECTS.get(spec.reference_to or "")
        target_prefix = "005" if target is None else target.key_prefix
        record_id = normalize_id(value)
        if record_id is None or record_id[:3] != target_prefix:
            message = f"{spec.label}: id value of incorrect type: {value}"
            raise RecordError("MALFORMED_ID", message, [spec.name])
        if spec.reference_to == "User":
            if record_id != USER_ID:
                raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
            return
        self._live(record_id)

    def _new_id(self, sobject: SObjectType) -> str:
        number = self._durable.next_value(f"ids.{sobject.key_prefix}", 1)
        return id18(f"{sobject.key_prefix}5g000{_base62(number, 7)}")

    # -- bookkeeping --------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        counts = self.counts if self._transaction is None else self._transaction.counts
        setattr(counts, name, getattr(counts, name) + 1)

    def _put(self, record: Record) -> None:
        previous = self._records.get(record.id)
        if previous is not None:
            self._unindex(previous)
        self._records[record.id] = record
        self._index(record)
        self._register_customs(record)
        if self._transaction is None:
            self._persist(record)
        else:
            self._transaction.undo.setdefault(record.id, previous)

    def _undo(self, transaction: _Transaction) -> None:
        for record_id, previous in reversed(transaction.undo.items()):
            self._unindex(self._records.pop(record_id))
            if previous is not None:
                self._records[record_id] = previous
                self._index(previous)

    def _persist(self, record: Record) -> None:
        self._durable.put(record.sobject, record.id, record.doc())

    def _index(self, record: Record) -> None:
        if record.deleted:
            return
        for spec in SOBJECTS[record.sobject].external_ids:
            value = record.values.get(spec.name)
            if value is not None:
                self._unique[(record.sobject, spec.name, _value_key(value))] = record.id

    def _unindex(self, record: Record) -> None:
        for spec in SOBJECTS[record.sobject].external_ids:
            value = record.values.get(spec.name)
            key = (record.sobject, spec.name, _value_key(value or ""))
            if value is not None and self._unique.get(key) == record.id:
                del self._unique[key]

    def _register_customs(self, record: Record) -> None:
        sobject = SOBJECTS[record.sobject]
        registry = self._custom[record.sobject]
        for name in record.values:
            if name.casefold() not in registry and sobject.standard(name) is None:
                registry[name.casefold()] = self.field(sobject, name)  # type: ignore[assignment]


def _value_key(value: str) -> str:
    """External ids match case-insensitively (the Unique attribute's default)."""
    return value.casefold()


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# --------------------------------------------------------------------------------------------
# Field values: JSON in, JSON out
# --------------------------------------------------------------------------------------------


def decode_fields(
    org: Org, sobject: SObjectType, body: Mapping[str, Any], *, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """A JSON record as canonical field names and stored values (None clears).

    Raises SalesforceError for what Salesforce refuses while reading the JSON (an unknown field,
    a value of the wrong JSON type); rules on values (lengths, emails...) are the Org's.
    """
    skipped = {name.casefold() for name in ("attributes", *skip)}
    values: dict[str, Any] = {}
    for name, raw in body.items():
        if name.casefold() in skipped:
            continue
        spec = org.field(sobject, name)
        if spec is None:
            message = f"No such column '{name}' on sobject of type {sobject.name}"
            raise SalesforceError(400, "INVALID_FIELD", message)
        values[spec.name] = _decode_value(spec, raw)
    return values


def _decode_value(spec: Field, raw: Any) -> Any:
    if raw is None or raw == "":
        return False if spec.type == "boolean" else None
    kind = spec.type
    if kind in TEXT_TYPES or kind in ID_TYPES:
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, int | float | str):
            return str(raw)
    elif kind == "boolean" and isinstance(raw, bool):
        return raw
    elif kind == "int" and isinstance(raw, int | float) and not isinstance(raw, bool):
        if float(raw).is_integer():
            return int(raw)
    elif kind == "currency" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return raw
    elif kind == "date" and isinstance(raw, str) and len(raw) == 10:
        with contextlib.suppress(ValueError):
            return date.fromisoformat(raw).isoformat()
    elif kind == "datetime" and isinstance(raw, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(raw).isoformat()
    token = "VALUE_STRING" if isinstance(raw, str) else type(raw).__name__.upper()
    message = (
        f"Cannot deserialize instance of {_JAVA_TYPES.get(kind, kind)} from {token} value {raw}"
        " or request may be missing a required field"
    )
    raise SalesforceError(400, "JSON_PARSER_ERROR", message)


_JAVA_TYPES = {"int": "int", "currency": "double", "boolean": "boolean", "date": "date"}


def field_value(record: Record, spec: Field) -> Any:
    """A field's value as Python data: str, bool, int, float, date, datetime or None."""
    name = spec.name
    if name == "Id":
        return record.id
    if name == "IsDeleted":
        return record.deleted
    if name == "CreatedDate":
        return record.created
    if name in ("LastModifiedDate", "SystemModstamp"):
        return record.modified
    if name in ("CreatedById", "LastModifiedById"):
        return USER_ID
    if name == "Name" and record.sobject == CONTACT.name:
        parts = (record.values.get("FirstName"), record.values.get("LastName"))
        return " ".join(part for part in parts if part)
    value = record.values.get(name)
    if value is not None and spec.type == "date":
        return date.fromisoformat(value)
    if value is not None and spec.type == "datetime":
        return datetime.fromisoformat(value)
    return value


def json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return sf_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def attributes(record: Record, version: str) -> dict[str, str]:
    url = f"/services/data/{version}/sobjects/{record.sobject}/{record.id}"
    return {"type": record.sobject, "url": url}


def render(record: Record, fields: Iterable[Field], version: str) -> dict[str, Any]:
    body: dict[str, Any] = {"attributes": attributes(record, version)}
    for spec in fields:
        body[spec.name] = json_value(field_value(record, spec))
    return body


# --------------------------------------------------------------------------------------------
# SOQL: SELECT fields FROM type [WHERE ...] [ORDER BY ...] [LIMIT n] [OFFSET n]
# --------------------------------------------------------------------------------------------

_SOQL_TOKEN = re.compile(
    r"""
     (?P<ws>\s+)
    |(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
    |(?P<date>\d{4}-\d{2}-\d{2})(?![\dT:])
    |(?P<number>\d+(?:\.\d+)?)
    |(?P<string>'(?:[^'\\]|\\.)*')
    |(?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<op>!=|<>|<=|>=|=|<|>)
    |(?P<punct>[(),])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "'": "'", '"': '"', "\\": "\\"}
_COMPARISONS = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    position: int


@dataclass(frozen=True)
class Literal:
    value: Any
    raw: str  # a string literal without quotes, escapes kept (LIKE needs \% and \_)


@dataclass(frozen=True)
class Comparison:
    field: Field
    operator: str  # =, !=, <, <=, >, >=, LIKE, IN, NOT IN
    values: tuple[Literal, ...]

    def matches(self, record: Record) -> bool:
        left = _comparable(field_value(record, self.field))
        if self.operator in ("IN", "NOT IN"):
            found = any(left == _comparable(v.value) for v in self.values)
            return found if self.operator == "IN" else not found
        literal = self.values[0]
        if self.operator == "LIKE":
            return left is not None and bool(_like(literal.raw).fullmatch(left))
        right = _comparable(literal.value)
        if right is None or left is None:
            equal = left is right
            return {"=": equal, "!=": not equal, "<>": not equal}.get(self.operator, False)
        return bool(_COMPARISONS[self.operator](left, right))


@dataclass(frozen=True)
class Junction:
    operator: str  # AND, OR
    parts: tuple[Condition, ...]

    def matches(self, record: Record) -> bool:
        test = all if self.operator == "AND" else any
        return test(part.matches(record) for part in self.parts)


@dataclass(frozen=True)
class Negation:
    part: Condition

    def matches(self, record: Record) -> bool:
        return not self.part.matches(record)


Condition = Comparison | Junction | Negation


@dataclass(frozen=True)
class Ordering:
    field: Field
    descending: bool
    nulls_first: bool


@dataclass(frozen=True)
class Query:
    sobject: SObjectType
    fields: tuple[Field, ...]  # empty for SELECT COUNT()
    where: Condition | None
    order: tuple[Ordering, ...]
    limit: int | None
    offset: int

    def run(self, org: Org, *, include_deleted: bool) -> list[Record]:
        rows = [
            record
            for record in org.records(self.sobject, include_deleted=include_deleted)
            if self.where is None or self.where.matches(record)
        ]
        for ordering in reversed(self.order):

            def key(record: Record, spec: Field = ordering.field) -> Any:
                return _comparable(field_value(record, spec))

            nulls = [r for r in rows if key(r) is None]
            values = sorted((r for r in rows if key(r) is not None), key=key,
                            reverse=ordering.descending)  # fmt: skip
            rows = nulls + values if ordering.nulls_first else values + nulls
        rows = rows[self.offset :]
        return rows if self.limit is None else rows[: self.limit]


def _comparable(value: Any) -> Any:
    """Text compares case-insensitively in SOQL."""
    return value.casefold() if isinstance(value, str) else value


def _like(pattern: str) -> re.Pattern[str]:
    parts, escaped = [], False
    for char in pattern:
        if escaped:
            parts.append(re.escape(_ESCAPES.get(char, char)))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


class SoqlParser:
    """A recursive-descent parser for the SOQL subset crmsync (and its tests) use.

    Errors carry Salesforce's caret diagram (``ERROR at Row:r:Column:c``) and error codes:
    MALFORMED_QUERY, INVALID_TYPE, INVALID_FIELD, INVALID_QUERY_FILTER_OPERATOR.
    """

    def __init__(self, org: Org, text: str) -> None:
        self._org = org
        self._text = text
        self._tokens = self._tokenize(text)
        self._at = 0
        self._sobject: SObjectType | None = None

    def parse(self) -> Query:
        self._expect_keyword("SELECT")
        count, names = self._select_list()
        self._expect_keyword("FROM")
        type_token = self._next()
        sobject = sobject_named(type_token.text) if type_token.kind == "name" else None
        if sobject is None:
            if type_token.kind != "name":
                raise self._unexpected(type_token)
            message = UNSUPPORTED_SOQL_TYPE.format(name=type_token.text)
            raise self._error(type_token, message, "INVALID_TYPE")
        self._sobject = sobject
        fields = self._resolve_select(names)
        where = self._condition() if self._keyword("WHERE") else None
        order = self._order_by() if self._keyword("ORDER") else ()
        limit = self._integer() if self._keyword("LIMIT") else None
        offset = self._integer() if self._keyword("OFFSET") else 0
        if self._peek().kind != "eof":
            raise self._unexpected(self._peek())
        return Query(sobject, () if count else fields, where, order, limit, offset)

    # -- clauses ------------------------------------------------------------------------------

    def _select_list(self) -> tuple[bool, list[Token]]:
        first = self._peek()
        if first.kind == "name" and first.text.upper() == "COUNT":
            self._next()
            self._expect_punct("(")
            self._expect_punct(")")
            return True, []
        names = [self._name()]
        while self._punct(","):
            names.append(self._name())
        return False, names

    def _resolve_select(self, names: list[Token]) -> tuple[Field, ...]:
        fields: list[Field] = []
        for token in names:
            spec = self._field(token)
            if spec in fields:
                raise self._error(token, f"duplicate field selected: {spec.name}")
            fields.append(spec)
        return tuple(fields)

    def _condition(self) -> Condition:
        parts = [self._simple_condition()]
        junction: str | None = None
        while (token := self._peek()).kind == "name" and token.text.upper() in ("AND", "OR"):
            if junction is not None and token.text.upper() != junction:
                raise self._unexpected(token)  # SOQL needs parentheses to mix AND and OR
            junction = token.text.upper()
            self._next()
            parts.append(self._simple_condition())
        return parts[0] if junction is None else Junction(junction, tuple(parts))

    def _simple_condition(self) -> Condition:
        if self._keyword("NOT"):
            return Negation(self._simple_condition())
        if self._punct("("):
            condition = self._condition()
            self._expect_punct(")")
            return condition
        field_token = self._name()
        spec = self._field(field_token)
        if self._keyword("NOT"):
            self._expect_keyword("IN")
            return Comparison(spec, "NOT IN", self._value_list(spec))
        if self._keyword("IN"):
            return Comparison(spec, "IN", self._value_list(spec))
        if self._keyword("LIKE"):
            token = self._peek()
            literal = self._value(spec)
            if not isinstance(literal.value, str):
                raise self._type_error(token, spec)
            return Comparison(spec, "LIKE", (literal,))
        operator = self._next()
        if operator.kind != "op":
            raise self._unexpected(operator)
        return Comparison(spec, operator.text, (self._value(spec),))

    def _value_list(self, spec: Field) -> tuple[Literal, ...]:
        self._expect_punct("(")
        values = [self._value(spec)]
        while self._punct(","):
            values.append(self._value(spec))
        self._expect_punct(")")
        return tuple(values)

    def _value(self, spec: Field) -> Literal:
        token = self._next()
        literal = self._literal(token)
        value = literal.value
        if value is None:
            return literal
        kind = spec.type
        if kind in ID_TYPES:
            record_id = normalize_id(value) if isinstance(value, str) else None
            if record_id is None:
                if isinstance(value, str):
                    raise self._error(token, f"invalid ID field: {value}",
                                      "INVALID_QUERY_FILTER_OPERATOR")  # fmt: skip
                raise self._type_error(token, spec)
            return Literal(record_id, literal.raw)
        expected: type | tuple[type, ...] = {
            "boolean": bool, "date": date, "datetime": datetime, "int": (int, float),
            "currency": (int, float),
        }.get(kind, str)  # fmt: skip
        if not isinstance(value, expected) or (kind == "date" and isinstance(value, datetime)):
            raise self._type_error(token, spec)
        if isinstance(value, bool) and kind != "boolean":
            raise self._type_error(token, spec)
        return literal

    def _literal(self, token: Token) -> Literal:
        if token.kind == "string":
            raw = token.text[1:-1]
            return Literal(re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), raw), raw)
        if token.kind == "number":
            number = float(token.text) if "." in token.text else int(token.text)
            return Literal(number, token.text)
        if token.kind == "date":
            return Literal(date.fromisoformat(token.text), token.text)
        if token.kind == "datetime":
            return Literal(datetime.fromisoformat(token.text), token.text)
        if token.kind == "name" and token.text.lower() in ("null", "true", "false"):
            return Literal({"null": None, "true": True, "false": False}[token.text.lower()], "")
        raise self._unexpected(token)

    def _order_by(self) -> tuple[Ordering, ...]:
        self._expect_keyword("BY")
        orderings = [self._ordering()]
        while self._punct(","):
            orderings.append(self._ordering())
        return tuple(orderings)

    def _ordering(self) -> Ordering:
        spec = self._field(self._name())
        descending = self._keyword("DESC")
        if not descending:
            self._keyword("ASC")
        nulls_first = not descending
        if self._keyword("NULLS"):
            nulls_first = self._keyword("FIRST")
            if not nulls_first:
                self._expect_keyword("LAST")
        return Ordering(spec, descending, nulls_first)

    def _integer(self) -> int:
        token = self._next()
        if token.kind != "number" or "." in token.text:
            raise self._unexpected(token)
        return int(token.text)

    # -- tokens -------------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[Token]:
        tokens, position = [], 0
        while position < len(text):
            match = _SOQL_TOKEN.match(text, position)
            if match is None:
                char = text[position]
                message = f"line 1:{position} no viable alternative at character '{char}'"
                raise self._error(Token("char", char, position), message)
            if match.lastgroup != "ws":
                tokens.append(Token(match.lastgroup or "", match.group(), position))
            position = match.end()
        tokens.append(Token("eof", "<EOF>", len(text)))
        return tokens

    def _peek(self) -> Token:
        return self._tokens[self._at]

    def _next(self) -> Token:
        token = self._tokens[self._at]
        self._at = min(self._at + 1, len(self._tokens) - 1)
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token.kind == "name" and token.text.upper() == word:
            self._next()
            return True
        return False

    def _expect_keyword(self, word: str) -> None:
        if not self._keyword(word):
            raise self._unexpected(self._peek())

    def _punct(self, char: str) -> bool:
        if self._peek().kind == "punct" and self._peek().text == char:
            self._next()
            return True
        return False

    def _expect_punct(self, char: str) -> None:
        if not self._punct(char):
            raise self._unexpected(self._peek())

    def _name(self) -> Token:
        token = self._next()
        if token.kind != "name":
            raise self._unexpected(token)
        return token

    def _field(self, token: Token) -> Field:
        assert self._sobject is not None
        spec = self._org.field(self._sobject, token.text)
        if spec is None:
            message = NO_SUCH_SOQL_COLUMN.format(name=token.text, sobject=self._sobject.name)
            raise self._error(token, message, "INVALID_FIELD")
        return spec

    # -- errors -------------------------------------------------------------------------------

    def _unexpected(self, token: Token) -> SalesforceError:
        return self._error(token, f"unexpected token: {token.text}")

    def _type_error(self, token: Token, spec: Field) -> SalesforceError:
        kind = {"datetime": "dateTime", "int": "number", "currency": "number"}.get(
            spec.type, spec.type if spec.type in ("date", "boolean") else "string"
        )
        quoting = (
            "and should be enclosed in quotes"
            if kind == "string"
            else ("and should not be enclosed in quotes")
        )
        message = (
            f"value of filter criterion for field '{spec.name}' must be of type {kind} {quoting}"
        )
        return self._error(token, message, "INVALID_QUERY_FILTER_OPERATOR")

    def _error(self, token: Token, message: str, code: str = "MALFORMED_QUERY") -> SalesforceError:
        before = self._text[: token.position]
        row = before.count("\n") + 1
        column = token.position - (before.rfind("\n") + 1) + 1
        line = self._text.splitlines()[row - 1] if self._text.strip() else ""
        diagram = f"\n{line}\n{' ' * (column - 1)}^\nERROR at Row:{row}:Column:{column}\n"
        return SalesforceError(400, code, diagram + message)


# --------------------------------------------------------------------------------------------
# Query cursors (query locators)
# --------------------------------------------------------------------------------------------


@dataclass
class _Cursor:
    rows: list[dict[str, Any]]
    batch: int
    used_at: float


class QueryCursors:
    """Result sets still being paged through, by query locator (``01g...``).

    Like Salesforce's they expire after 15 minutes unused, and a restart forgets them.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cursors: dict[str, _Cursor] = {}

    def open(self, rows: list[dict[str, Any]], batch: int) -> str:
        self._expire()
        locator = id18("01g5g" + _base62(secrets.randbelow(62**10), 10))
        self._cursors[locator] = _Cursor(rows, batch, self._clock())
        return locator

    def rows(self, locator: str) -> _Cursor | None:
        self._expire()
        cursor = self._cursors.get(locator)
        if cursor is not None:
            cursor.used_at = self._clock()
        return cursor

    def close(self, locator: str) -> None:
        self._cursors.pop(locator, None)

    def _expire(self) -> None:
        horizon = self._clock() - QUERY_LOCATOR_TTL
        for locator in [k for k, c in self._cursors.items() if c.used_at < horizon]:
            del self._cursors[locator]


# --------------------------------------------------------------------------------------------
# Emulator state
# --------------------------------------------------------------------------------------------


class SalesforceEmulatorConfig(pydantic.BaseModel):
    """How the emulated org behaves; the defaults are a Developer Edition org's limits."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: None accepts any session id (except revoked ones); otherwise only this one.
    required_token: pydantic.SecretStr | None = None
    #: API requests allowed in any rolling 24 hours (Developer Edition: 15,000).
    daily_api_limit: int = pydantic.Field(default=DEVELOPER_EDITION_DAILY_API_REQUESTS, gt=0)
    #: Records per query batch; Salesforce's is 2,000 (tests make it small to exercise paging).
    query_batch_size: int = pydantic.Field(default=MAX_QUERY_BATCH, ge=1, le=MAX_QUERY_BATCH)
    #: OAuth credentials the token endpoint checks; None accepts any.
    client_id: str | None = None
    client_secret: pydantic.SecretStr | None = None
    username: str | None = None
    password: pydantic.SecretStr | None = None


def _unsigned(_body: bytes, _url: str, _secret: str) -> dict[str, str]:
    return {}  # Salesforce sends no JSON webhooks to sign


class EmulatorState:
    """Everything one emulator holds: the org's records, API usage, faults and counters."""

    def __init__(self, config: SalesforceEmulatorConfig, store: DurableStore) -> None:
        self.config = config
        self.store = store
        self.faults = FaultInjector()
        self.webhooks = WebhookEmitter(store, _unsigned)
        self._start()

    def _start(self) -> None:
        self.org = Org(self.store)
        self.api_usage = SlidingWindowLimiter(self.config.daily_api_limit, DAY)
        self.cursors = QueryCursors()
        self.revoked: set[str] = set()
        self.last_admission = Admission(
            True, self.config.daily_api_limit, self.config.daily_api_limit, DAY
        )
        self.requests = self.rate_limited = 0

    def reset(self) -> None:
        self.store.clear()
        self._start()

    def accepts(self, token: str | None) -> bool:
        if not token or token in self.revoked:
            return False
        required = self.config.required_token
        return required is None or hmac.compare_digest(
            token.encode(), required.get_secret_value().encode()
        )

    def admit(self) -> Admission:
        """Count one API request against the rolling daily allocation."""
        self.last_admission = self.api_usage.admit()
        return self.last_admission

    def stats(self) -> dict[str, Any]:
        counts = self.org.counts
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "creates": counts.creates,
            "updates": counts.updates,
            "deletes": counts.deletes,
            "contacts": self.org.count(CONTACT, deleted=False),
            "accounts": self.org.count(ACCOUNT, deleted=False),
            "recycle_bin": self.org.count(CONTACT, deleted=True)
            + self.org.count(ACCOUNT, deleted=True),
            # As of the last API request: SlidingWindowLimiter has no look without counting.
            "api_usage": self.last_admission.limit - self.last_admission.remaining,
            "api_limit": self.config.daily_api_limit,
        }


STATE = web.AppKey("salesforce_emulator_state", EmulatorState)


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_API_PATH = re.compile(r"/services/data/v(\d+)\.(\d+)(?:/|$)")


def _json(status: int, body: object) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", charset="UTF-8"
    )


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # Salesforce also takes the legacy "OAuth <session id>" scheme.
    return (token.strip() or None) if scheme.lower() in ("bearer", "oauth") else None


def _fault_response(status: int) -> web.Response:
    if status == 500:
        error_id = f"{secrets.randbelow(10**10)}-{secrets.randbelow(10**5)}"
        message = (
            "An unexpected error occurred. Please include this ErrorId if you contact support:"
            f" {error_id} ({-secrets.randbelow(10**9)})"
        )
        return _json(500, [{"message": message, "errorCode": "UNKNOWN_EXCEPTION"}])
    if status == 503:
        return _json(503, [{"message": "Server is unavailable", "errorCode": "SERVER_UNAVAILABLE"}])
    reason = {502: "Bad Gateway", 504: "Gateway Timeout"}.get(status, "Error")
    return web.Response(status=status, text=f"{status} {reason}", content_type="text/html")


@web.middleware
async def _salesforce_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What Salesforce does around every call: faults, auth, the daily allocation, errors."""
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    state = request.app[STATE]
    fault = await state.faults.draw()
    if fault == "outage":
        return outage_response()
    if fault == "error":
        return _fault_response(state.faults.faults.error_status)
    api = _API_PATH.match(request.path)
    if api is None:  # the versions list and OAuth need no session and cost no API call
        return await _answer(request, handler)
    state.requests += 1
    if fault == "throttle":  # as if too many long-running requests were already in flight
        state.rate_limited += 1
        error = SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", CONCURRENT_REQUESTS_MESSAGE)
        return error.response()
    if not state.accepts(_bearer(request)):
        return SalesforceError(401, "INVALID_SESSION_ID", SESSION_MESSAGE).response()
    admission = request["admission"] = state.admit()
    if admission.allowed:
        major, minor = int(api[1]), int(api[2])
        supported = OLDEST_API_VERSION <= major <= NEWEST_API_VERSION and minor == 0
        response = await _answer(request, handler) if supported else _not_found().response()
    else:
        state.rate_limited += 1
        response = SalesforceError(403, "REQUEST_LIMIT_EXCEEDED", TOTAL_REQUESTS_MESSAGE).response()
    used = admission.limit - admission.remaining
    response.headers["Sforce-Limit-Info"] = f"api-usage={used}/{admission.limit}"
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SalesforceError as error:
        return error.response()
    except RecordError as error:
        return SalesforceError.from_record(error).response()
    except web.HTTPMethodNotAllowed as error:
        allowed = ",".join(sorted(error.allowed_methods))
        message = f"HTTP Method '{request.method}' not allowed. Allowed are {allowed}"
        return _json(405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": message}])
    except web.HTTPNotFound:
        return _json(404, [{"errorCode": "NOT_FOUND", "message": NOT_FOUND_MESSAGE}])


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        message = f"{error.msg} at [line:{error.lineno}, column:{error.colno}]"
        raise SalesforceError(400, "JSON_PARSER_ERROR", message) from None


async def _record_body(request: web.Request) -> dict[str, Any]:
    body = await _body(request)
    if not isinstance(body, dict):
        message = "Cannot deserialize instance of SObject from START_ARRAY value"
        raise SalesforceError(400, "JSON_PARSER_ERROR", message)
    return body


def _state(request: web.Request) -> EmulatorState:
    return request.app[STATE]


def _version(request: web.Request) -> str:
    return request.match_info["version"]


def _sobject(request: web.Request) -> SObjectType:
    sobject = sobject_named(request.match_info["sobject"])
    if sobject is None:
        raise _not_found()
    return sobject


def _record_id(sobject: SObjectType, value: str) -> str | None:
    record_id = normalize_id(value)
    return record_id if record_id is not None and record_id[:3] == sobject.key_prefix else None


def _external_id_field(org: Org, sobject: SObjectType, name: str) -> Field | None:
    spec = org.field(sobject, name)
    return spec if spec is not None and (spec.external_id or spec.name == "Id") else None


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _requested_fields(org: Org, sobject: SObjectType, request: web.Request) -> list[Field]:
    names = [n.strip() for n in request.query.get("fields", "").split(",") if n.strip()]
    if not names:
        return org.fields(sobject)
    fields = []
    for name in names:
        spec = org.field(sobject, name)
        if spec is None:
            message = f"No such column '{name}' on sobject of type {sobject.name}"
            raise SalesforceError(400, "INVALID_FIELD", message)
        fields.append(spec)
    return fields if any(f.name == "Id" for f in fields) else [*fields, org.field(sobject, "Id")]


# --------------------------------------------------------------------------------------------
# Resources: versions, limits, describe
# --------------------------------------------------------------------------------------------


def _release_label(major: int) -> str:
    season = ("Winter", "Spring", "Summer")[(major - OLDEST_API_VERSION) % 3]
    year = 11 + (major - OLDEST_API_VERSION) // 3
    return f"{season} '{year:02d}"


async def list_versions(_: web.Request) -> web.Response:
    return _json(
        200,
        [
            {"label": _release_label(v), "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
            for v in range(OLDEST_API_VERSION, NEWEST_API_VERSION + 1)
        ],
    )


async def list_resources(request: web.Request) -> web.Response:
    base = f"/services/data/{_version(request)}"
    names = ("sobjects", "query", "queryAll", "limits", "composite")
    return _json(200, {name: f"{base}/{name}" for name in names})


async def get_limits(request: web.Request) -> web.Response:
    state = _state(request)
    admission: Admission = request["admission"]  # this call counts, as on Salesforce
    records = sum(1 for _ in state.org.records(CONTACT, include_deleted=True)) + sum(
        1 for _ in state.org.records(ACCOUNT, include_deleted=True)
    )
    data_used = math.ceil(records * 2 / 1024)  # Salesforce counts 2 KB per record
    return _json(
        200,
        {
            "DailyApiRequests": {"Max": admission.limit, "Remaining": admission.remaining},
            "DailyAsyncApexExecutions": {"Max": 250000, "Remaining": 250000},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
            "DataStorageMB": {"Max": 5, "Remaining": max(0, 5 - data_used)},
            "FileStorageMB": {"Max": 20, "Remaining": 20},
            "SingleEmail": {"Max": 15, "Remaining": 15},
        },
    )


def _sobject_summary(sobject: SObjectType, version: str) -> dict[str, Any]:
    base = f"/services/data/{version}/sobjects/{sobject.name}"
    return {
        "name": sobject.name,
        "label": sobject.label,
        "labelPlural": sobject.label_plural,
        "keyPrefix": sobject.key_prefix,
        "custom": False,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "queryable": True,
        "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
    }


async def describe_global(request: web.Request) -> web.Response:
    sobjects = [_sobject_summary(s, _version(request)) for s in SOBJECTS.values()]
    return _json(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects})


async def sobject_info(request: web.Request) -> web.Response:
    sobject = _sobject(request)
    return _json(
        200, {"objectDescribe": _sobject_summary(sobject, _version(request)), "recentItems": []}
    )


def _describe_field(spec: Field) -> dict[str, Any]:
    return {
        "name": spec.name,
        "label": spec.label,
        "type": spec.type,
        "length": spec.length,
        "custom": spec.custom,
        "createable": spec.writable,
        "updateable": spec.writable,
        "nillable": not spec.required and spec.type != "boolean" and spec.writable,
        "defaultedOnCreate": spec.default is not None or spec.name == "OwnerId",
        "externalId": spec.external_id,
        "unique": spec.unique,
        "caseSensitive": False,
        "idLookup": spec.name == "Id" or spec.external_id,
        "referenceTo": [spec.reference_to] if spec.reference_to else [],
    }


async def describe_sobject(request: web.Request) -> web.Response:
    sobject = _sobject(request)
    summary = _sobject_summary(sobject, _version(request))
    fields = [_describe_field(f) for f in _state(request).org.fields(sobject)]
    return _json(200, {**summary, "fields": fields})


# --------------------------------------------------------------------------------------------
# Resources: sObject rows
# --------------------------------------------------------------------------------------------


async def create_record(request: web.Request) -> web.Response:
    sobject, org = _sobject(request), _state(request).org
    values = decode_fields(org, sobject, await _record_body(request))
    with org.atomic():
        record = org.create(sobject, values)
    return _json(201, {"id": record.id, "success": True, "errors": []})


async def get_record(request: web.Request) -> web.Response:
    sobject, org = _sobject(request), _state(request).org
    record = _live_record(org, sobject, request.match_info["key"])
    return _json(200, render(record, _requested_fields(org, sobject, request), _version(request)))


def _live_record(org: Org, sobject: SObjectType, key: str) -> Record:
    record_id = normalize_id(key)
    if record_id is None:
        # Not an id: Salesforce reads the segment as the name of an external id field.
        raise _not_found(f"Provided external ID field does not exist or is not accessible: {key}")
    record = org.get(record_id) if record_id[:3] == sobject.key_prefix else None
    if record is None:
        raise _not_found()
    return record


async def update_record(request: web.Request) -> web.Response:
    sobject, org = _sobject(request), _state(request).org
    record = _live_record(org, sobject, request.match_info["key"])
    values = decode_fields(org, sobject, await _record_body(request))
    with org.atomic():
        org.update(record.id, values)
    return web.Response(status=204)


async def delete_record(request: web.Request) -> web.Response:
    sobject, org = _sobject(request), _state(request).org
    key = request.match_info["key"]
    record_id = normalize_id(key)
    if record_id is None:
        raise _not_found(f"Provided external ID field does not exist or is not accessible: {key}")
    if record_id[:3] != sobject.key_prefix or org.get(record_id, include_deleted=True) is None:
        raise _not_found()
    try:
        with org.atomic():
            org.delete(record_id)
    except RecordError as error:  # already in the recycle bin
        raise SalesforceError(404, error.status_code, error.message, error.fields) from None
    return web.Response(status=204)


async def create_by_id_resource(request: web.Request) -> web.Response:
    """``POST .../sobjects/Contact/Id``: Id as the external id with a null value creates."""
    if request.match_info["key"] != "Id":
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PATCH", "DELETE", "HEAD"])
    return await create_record(request)


def _external_key(request: web.Request) -> tuple[SObjectType, Field, str]:
    sobject, org = _sobject(request), _state(request).org
    name = request.match_info["field"]
    spec = _external_id_field(org, sobject, name)
    if spec is None:
        raise _not_found(f"Provided external ID field does not exist or is not accessible: {name}")
    return sobject, spec, request.match_info["value"]


def _find_external(org: Org, sobject: SObjectType, spec: Field, value: str) -> Record | None:
    if spec.name == "Id":
        record_id = _record_id(sobject, value)
        return None if record_id is None else org.get(record_id)
    return org.find(sobject, spec.name, value)


async def get_by_external_id(request: web.Request) -> web.Response:
    sobject, spec, value = _external_key(request)
    org = _state(request).org
    record = _find_external(org, sobject, spec, value)
    if record is None:
        raise _not_found()
    return _json(200, render(record, _requested_fields(org, sobject, request), _version(request)))


async def upsert_by_external_id(request: web.Request) -> web.Response:
    sobject, spec, value = _external_key(request)
    org = _state(request).org
    body = await _record_body(request)
    named = [name for name in body if name.casefold() in ("id", spec.name.casefold())]
    if named:
        message = (
            f"The {spec.name} field is the external ID in the URL; don't specify {named[0]} in"
            " the request body"
        )
        raise SalesforceError(400, "INVALID_FIELD", message, named)
    values = decode_fields(org, sobject, body)
    if _flag(request.query.get("updateOnly")) and _find_external(org, sobject, spec, value) is None:
        raise _not_found()
    with org.atomic():
        record, created = org.upsert(sobject, spec.name, value, values)
    status = 201 if created else 200
    return _json(status, {"id": record.id, "success": True, "errors": [], "created": created})


async def delete_by_external_id(request: web.Request) -> web.Response:
    sobject, spec, value = _external_key(request)
    org = _state(request).org
    record = _find_external(org, sobject, spec, value)
    if record is None:
        raise _not_found()
    with org.atomic():
        org.delete(record.id)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------
# Resources: SOQL
# --------------------------------------------------------------------------------------------


def _batch_size(request: web.Request, config: SalesforceEmulatorConfig) -> int:
    options = request.headers.get("Sforce-Query-Options", "")
    match = re.search(r"batchSize=(\d+)", options)
    if match is None:
        return config.query_batch_size
    asked = min(MAX_QUERY_BATCH, max(MIN_QUERY_BATCH, int(match[1])))
    return min(asked, config.query_batch_size)


def _page(
    request: web.Request, endpoint: str, locator: str, rows: list[dict[str, Any]], start: int,
    batch: int,
) -> web.Response:  # fmt: skip
    end = start + batch
    body: dict[str, Any] = {"totalSize": len(rows), "done": end >= len(rows)}
    if end < len(rows):
        body["nextRecordsUrl"] = f"/services/data/{_version(request)}/{endpoint}/{locator}-{end}"
    else:
        _state(request).cursors.close(locator)
    body["records"] = rows[start:end]
    return _json(200, body)


async def _run_query(request: web.Request, *, include_deleted: bool) -> web.Response:
    state = _state(request)
    text = request.query.get("q", "")
    if not text.strip():
        raise SalesforceError(400, "MALFORMED_QUERY", "A query string has to be specified")
    query = SoqlParser(state.org, text).parse()
    records = query.run(state.org, include_deleted=include_deleted)
    if not query.fields:  # SELECT COUNT()
        return _json(200, {"totalSize": len(records), "done": True, "records": []})
    version = _version(request)
    rows = [render(record, query.fields, version) for record in records]
    batch = _batch_size(request, state.config)
    endpoint = "queryAll" if include_deleted else "query"
    if len(rows) <= batch:
        return _json(200, {"totalSize": len(rows), "done": True, "records": rows})
    return _page(request, endpoint, state.cursors.open(rows, batch), rows, 0, batch)


async def query(request: web.Request) -> web.Response:
    return await _run_query(request, include_deleted=False)


async def query_all(request: web.Request) -> web.Response:
    return await _run_query(request, include_deleted=True)


async def query_more(request: web.Request) -> web.Response:
    locator, _, start = request.match_info["locator"].partition("-")
    cursor = _state(request).cursors.rows(locator)
    if cursor is None or not start.isdigit() or int(start) >= len(cursor.rows):
        raise SalesforceError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    endpoint = request.path.split("/")[4]
    return _page(request, endpoint, locator, cursor.rows, int(start), cursor.batch)


# --------------------------------------------------------------------------------------------
# Resources: sObject Collections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CollectionItem:
    sobject: SObjectType
    body: dict[str, Any]


async def _collection(request: web.Request) -> tuple[bool, list[_CollectionItem]]:
    body = await _body(request)
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        message = "Cannot deserialize instance of SObject[] : the body needs a records list"
        raise SalesforceError(400, "JSON_PARSER_ERROR", message)
    if len(records) > MAX_COLLECTION_RECORDS:
        raise SalesforceError(400, "EXCEEDED_ID_LIMIT", TOO_MANY_RECORDS_MESSAGE)
    items = []
    for record in records:
        attributes = record.get("attributes")
        kind = attributes.get("type") if isinstance(attributes, dict) else None
        sobject = sobject_named(kind) if isinstance(kind, str) else None
        if sobject is None:
            message = (
                f"sObject type '{kind}' is not supported."
                if kind
                else ("No SObject Type defined in JSON: every record needs attributes.type")
            )
            raise SalesforceError(400, "INVALID_TYPE", message)
        items.append(_CollectionItem(sobject, record))
    return _flag(body.get("allOrNone", False)), items


def _apply_all(
    org: Org,
    all_or_none: bool,
    operations: Sequence[Callable[[], dict[str, Any]]],
    existed: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """Run each record's operation; with allOrNone one failure rolls every record back.

    A rolled-back record's result names its id only if the record ``existed`` before.
    """
    if not all_or_none:
        results = []
        for operation in operations:
            try:
                with org.atomic():
                    results.append(operation())
            except RecordError as error:
                results.append(error.result())
        return results
    outcomes: list[dict[str, Any] | RecordError] = []
    with org.atomic() as transaction:
        for operation in operations:
            try:
                outcomes.append(operation())
            except RecordError as error:
                outcomes.append(error)
        if not any(isinstance(outcome, RecordError) for outcome in outcomes):
            return outcomes  # type: ignore[return-value]
        transaction.rollback()
    rolled_back = RecordError("ALL_OR_NONE_OPERATION_ROLLED_BACK", ROLLED_BACK_MESSAGE)
    return [
        outcome.result()
        if isinstance(outcome, RecordError)
        else rolled_back.result(outcome["id"] if existed(outcome) else None)
        for outcome in outcomes
    ]


def _saved(record: Record, **more: Any) -> dict[str, Any]:
    return {"id": record.id, "success": True, "errors": [], **more}


async def create_collection(request: web.Request) -> web.Response:
    org = _state(request).org
    all_or_none, items = await _collection(request)
    decoded = [(item.sobject, decode_fields(org, item.sobject, item.body)) for item in items]

    def create(sobject: SObjectType, values: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        return lambda: _saved(org.create(sobject, values))

    operations = [create(*d) for d in decoded]
    return _json(200, _apply_all(org, all_or_none, operations, existed=lambda _: False))


def _id_in(record: Mapping[str, Any]) -> Any:
    """A record's Id in any casing, as field names are (Salesforce's own examples send "id")."""
    return next((value for name, value in record.items() if name.casefold() == "id"), None)


async def update_collection(request: web.Request) -> web.Response:
    org = _state(request).org
    all_or_none, items = await _collection(request)
    decoded = [
        (_id_in(item.body), decode_fields(org, item.sobject, item.body, skip=["Id"]))
        for item in items
    ]

    def update(raw_id: Any, values: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            if not raw_id:
                raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
            record_id = normalize_id(str(raw_id))
            if record_id is None:
                raise RecordError("MALFORMED_ID", f"malformed id {raw_id}", ["Id"])
            return _saved(org.update(record_id, values))

        return run

    operations = [update(*d) for d in decoded]
    return _json(200, _apply_all(org, all_or_none, operations, existed=lambda _: True))


async def upsert_collection(request: web.Request) -> web.Response:
    sobject, org = _sobject(request), _state(request).org
    name = request.match_info["field"]
    spec = _external_id_field(org, sobject, name)
    if spec is None:
        message = (
            f"Field name provided, {name} is not an External ID or indexed field for {sobject.name}"
        )
        raise SalesforceError(400, "INVALID_FIELD", message)
    all_or_none, items = await _collection(request)
    if any(item.sobject is not sobject for item in items):
        message = f"All records in an upsert call must be of type {sobject.name}"
        raise SalesforceError(400, "INVALID_TYPE", message)
    keys: list[str | None] = []
    decoded = []
    for item in items:
        raw = next((v for k, v in item.body.items() if k.casefold() == spec.name.casefold()), None)
        keys.append(None if raw is None else str(raw))
        decoded.append(decode_fields(org, sobject, item.body, skip=[spec.name]))
    seen = Counter(key.casefold() for key in keys if key is not None)
    repeated = {key for key, times in seen.items() if times > 1}

    def upsert(key: str | None, values: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            if key is not None and key.casefold() in repeated:
                message = f"Duplicate external id specified: {key}"
                raise RecordError("DUPLICATE_VALUE", message, [spec.name])
            record, created = org.upsert(sobject, spec.name, key, values)
            return _saved(record, created=created)

        return run

    operations = [upsert(key, values) for key, values in zip(keys, decoded, strict=True)]
    existed = lambda result: not result["created"]  # noqa: E731
    return _json(200, _apply_all(org, all_or_none, operations, existed))


async def delete_collection(request: web.Request) -> web.Response:
    org = _state(request).org
    raw_ids = [i for i in request.query.get("ids", "").split(",") if i]
    if not raw_ids:
        raise SalesforceError(400, "MISSING_ARGUMENT", "ids parameter is required")
    if len(raw_ids) > MAX_COLLECTION_RECORDS:
        raise SalesforceError(400, "EXCEEDED_ID_LIMIT", TOO_MANY_RECORDS_MESSAGE)

    def delete(raw_id: str) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            record_id = normalize_id(raw_id)
            if record_id is None:
                raise RecordError("MALFORMED_ID", f"malformed id {raw_id}")
            try:
                return _saved(org.delete(record_id))
            except RecordError as error:
                raise _WithId(error, record_id) from None

        return run

    all_or_none = _flag(request.query.get("allOrNone"))
    operations = [delete(raw_id) for raw_id in raw_ids]
    return _json(200, _apply_all(org, all_or_none, operations, existed=lambda _: True))


class _WithId(RecordError):
    """A delete refusal that, as Salesforce's does, still names the record."""

    def __init__(self, error: RecordError, record_id: str) -> None:
        super().__init__(error.status_code, error.message, error.fields)
        self.record_id = record_id

    def result(self, record_id: str | None = None) -> dict[str, Any]:
        return super().result(record_id or self.record_id)


async def retrieve_collection(request: web.Request) -> web.Response:
    sobject, org = _sobject(request), _state(request).org
    raw_ids = [i for i in request.query.get("ids", "").split(",") if i]
    if not raw_ids:
        raise SalesforceError(400, "MISSING_ARGUMENT", "ids parameter is required")
    fields = _requested_fields(org, sobject, request)
    results: list[dict[str, Any] | None] = []
    for raw_id in raw_ids:
        record_id = _record_id(sobject, raw_id)
        record = None if record_id is None else org.get(record_id)
        results.append(None if record is None else render(record, fields, _version(request)))
    return _json(200, results)


# --------------------------------------------------------------------------------------------
# OAuth 2.0
# --------------------------------------------------------------------------------------------


def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return _json(status, {"error": error, "error_description": description})


def _secret_matches(given: str | None, expected: pydantic.SecretStr | None) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    )


def _client_credentials(request: web.Request, form: Mapping[str, str]) -> tuple[str, str]:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
            return client_id, secret
    return form.get("client_id", ""), form.get("client_secret", "")


async def issue_token(request: web.Request) -> web.Response:
    """``POST /services/oauth2/token``: the username-password and client-credentials flows."""
    state = _state(request)
    config = state.config
    form = await request.post()
    values = {k: str(v) for k, v in form.items()}
    grant = values.get("grant_type")
    if grant not in ("password", "client_credentials"):
        return _oauth_error("unsupported_grant_type", "grant type not supported")
    client_id, client_secret = _client_credentials(request, values)
    if config.client_id is not None and client_id != config.client_id:
        return _oauth_error("invalid_client_id", "client identifier invalid")
    if not _secret_matches(client_secret, config.client_secret):
        return _oauth_error("invalid_client", "invalid client credentials")
    if grant == "password" and not (
        (config.username is None or values.get("username") == config.username)
        and _secret_matches(values.get("password"), config.password)
    ):
        return _oauth_error("invalid_grant", "authentication failure")
    if config.required_token is not None:
        token = config.required_token.get_secret_value()
    else:
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(72)}"
    state.revoked.discard(token)
    identity = f"https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"
    issued_at = str(int(time.time() * 1000))
    signature = hmac.new(client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256)
    return _json(
        200,
        {
            "access_token": token,
            "instance_url": f"{request.scheme}://{request.host}",
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": base64.b64encode(signature.digest()).decode(),
        },
    )


async def revoke_token(request: web.Request) -> web.Response:
    """``POST /services/oauth2/revoke``: the session stops working until a new login."""
    form = await request.post()
    token = str(form.get("token") or request.query.get("token") or "")
    if not token:
        return _oauth_error("unsupported_token_type", "this token type is not supported")
    _state(request).revoked.add(token)
    return web.Response(status=200)


# --------------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------------


def _with_and_without_slash(method: str, path: str, handler: Handler) -> list[web.RouteDef]:
    return [web.route(method, path, handler), web.route(method, f"{path}/", handler)]


def create_app(
    config: SalesforceEmulatorConfig, store: DurableStore | None = None
) -> web.Application:
    """The emulator as an aiohttp application over ``store`` (in memory when None); records
    already in the store are served."""
    app = web.Application(middlewares=[_salesforce_gateway], client_max_size=50 * 1024**2)
    state = EmulatorState(config, store if store is not None else DurableStore(None))
    app[STATE] = state
    api = "/services/data/{version:v\\d+\\.\\d+}"
    sobjects = f"{api}/sobjects"
    composite = f"{api}/composite/sobjects"
    app.add_routes(
        [
            *_with_and_without_slash("GET", "/services/data", list_versions),
            *_with_and_without_slash("GET", api, list_resources),
            *_with_and_without_slash("GET", f"{api}/limits", get_limits),
            *_with_and_without_slash("GET", sobjects, describe_global),
            *_with_and_without_slash("GET", f"{sobjects}/{{sobject}}", sobject_info),
            *_with_and_without_slash("POST", f"{sobjects}/{{sobject}}", create_record),
            *_with_and_without_slash("GET", f"{sobjects}/{{sobject}}/describe", describe_sobject),
            web.get(f"{sobjects}/{{sobject}}/{{key}}", get_record),
            web.patch(f"{sobjects}/{{sobject}}/{{key}}", update_record),
            web.delete(f"{sobjects}/{{sobject}}/{{key}}", delete_record),
            web.post(f"{sobjects}/{{sobject}}/{{key}}", create_by_id_resource),
            web.get(f"{sobjects}/{{sobject}}/{{field}}/{{value}}", get_by_external_id),
            web.patch(f"{sobjects}/{{sobject}}/{{field}}/{{value}}", upsert_by_external_id),
            web.delete(f"{sobjects}/{{sobject}}/{{field}}/{{value}}", delete_by_external_id),
            *_with_and_without_slash("GET", f"{api}/query", query),
            web.get(f"{api}/query/{{locator}}", query_more),
            *_with_and_without_slash("GET", f"{api}/queryAll", query_all),
            web.get(f"{api}/queryAll/{{locator}}", query_more),
            *_with_and_without_slash("POST", composite, create_collection),
            *_with_and_without_slash("PATCH", composite, update_collection),
            *_with_and_without_slash("DELETE", composite, delete_collection),
            *_with_and_without_slash("GET", f"{composite}/{{sobject}}", retrieve_collection),
            *_with_and_without_slash(
                "PATCH", f"{composite}/{{sobject}}/{{field}}", upsert_collection
            ),
            web.post("/services/oauth2/token", issue_token),
            web.post("/services/oauth2/revoke", revoke_token),
        ]
    )
    add_control_routes(app, state)
    return app


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def main(argv: Sequence[str] | None = None) -> None:
    parser = emulator_parser(
        "salesforce", "Serve a local Salesforce REST API (Contact and Account).", 18081,
        "session id",
    )  # fmt: skip
    parser.add_argument(
        "--require-token",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=f"accept only ${TOKEN_VARIABLE} (default: any session id)",
    )
    parser.add_argument("--daily-api-limit", type=int, help="API requests per rolling 24 hours")
    parser.add_argument("--query-batch-size", type=int, help="records per SOQL batch (max 2000)")
    parser.add_argument("--client-id", help="OAuth consumer key to require (default: any)")
    parser.add_argument("--client-secret", help="OAuth consumer secret to require")
    parser.add_argument("--username", help="OAuth username to require")
    parser.add_argument("--password", help="OAuth password to require")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    args = parser.parse_args(argv)
    token = args.token
    if token is None and args.require_token:
        token = os.environ.get(TOKEN_VARIABLE, DEFAULT_TOKEN)
    settings = {
        "required_token": token,
        "daily_api_limit": args.daily_api_limit,
        "query_batch_size": args.query_batch_size,
        "client_id": args.client_id,
        "client_secret": args.client_secret,
        "username": args.username,
        "password": args.password,
    }
    if args.unlimited:
        settings["daily_api_limit"] = UNLIMITED
    config = SalesforceEmulatorConfig(**{k: v for k, v in settings.items() if v is not None})
    tls = _tls_context(args.tls_cert, args.tls_key)
    serve(lambda store: create_app(config, store), args.host, args.port, args.data,
          args.receipts, ssl_context=tls)  # fmt: skip


if __name__ == "__main__":
    main()
