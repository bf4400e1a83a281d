"""Local emulator of HubSpot's CRM v3 objects API for contacts and companies.

crmsync's HubSpot client and its tests talk to this instead of a real portal. It serves the
object endpoints under their real paths (``/crm/v3/objects/{contacts,companies}``: single,
batch, search; ``/crm/v3/objects/contacts/gdpr-delete``) with HubSpot's bodies, errors, bearer
tokens and rate limits (a rolling window per token, a daily portal allowance and the search
endpoints' own five per second, reported in the ``X-HubSpot-RateLimit-*`` headers), and sends
HubSpot's webhook events signed with its v3 signature, so the official ``hubspot-api-client``
works against it by changing only its host. Records are written through to a ``DurableStore``:
a restarted emulator with the same ``--data`` file loses nothing.

Batch writes follow HubSpot's rules: without an ``objectWriteTraceId`` on every input a batch is
all or nothing; with them, each input succeeds or fails alone and a 207 names the failures by
their trace id. The private ``/_emulator`` routes (see emulators.common) inject faults, report
counters, subscribe webhooks and reset the portal.

Run it with ``python -m emulators.hubspot --port 18080 --data hubspot.sqlite``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import fnmatch
import hashlib
import hmac
import itertools
import os
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
import pydantic
from aiohttp import web

from emulators.common import (
    UNLIMITED,
    DurableStore,
    FaultInjector,
    FixedWindowCounter,
    SlidingWindowLimiter,
    WebhookEmitter,
    add_control_routes,
    emulator_parser,
    outage_response,
    serve,
)

__all__ = ["HubSpotEmulatorConfig", "create_app", "main", "sign_webhook"]

MAX_BATCH_INPUTS = 100
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_SEARCH_PAGE_SIZE = 200
MAX_SEARCH_RESULTS = 10_000
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
MAX_FILTERS = 18
MAX_WEBHOOK_EVENTS = 100  # HubSpot sends at most 100 events per request
MAX_STRING_LENGTH = 65_536  # a string property's value, as the properties guide says
OBJECT_ID = "hs_object_id"
#: Identify the emulated portal and private app in rate-limit groups and webhook events.
PORTAL_ID = 20000001
APP_ID = 3000001
BLOCKLIST = "gdpr_blocklist"
#: Where ``--require-token`` finds the token, as crmsync's settings do (and their default).
TOKEN_VARIABLE = "CRMSYNC_CRM_TOKEN"
DEFAULT_TOKEN = "local-dev-token"

AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can"
    " find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
NOT_NUMERIC_MESSAGE = "Object not found.  objectId are usually numeric."
TOO_MANY_INPUTS_MESSAGE = (
    f"The maximum number of inputs supported in a batch is {MAX_BATCH_INPUTS}."
    " Please reduce the number of items and try again"
)
RATE_POLICIES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "SECONDLY": "You have reached your secondly limit.",
    "DAILY": "You have reached your daily limit.",
}
RATE_GROUPS = {
    "TEN_SECONDLY_ROLLING": f"publicapi:private_app-api-calls-ten-secondly:{APP_ID}:{PORTAL_ID}",
    "SECONDLY": f"publicapi:crm-search-secondly:{PORTAL_ID}",
    "DAILY": f"publicapi:private_app-api-calls-daily:{APP_ID}:{PORTAL_ID}",
}
SERVER_ERRORS = {
    500: "internal error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")

Model = TypeVar("Model", bound=pydantic.BaseModel)
BatchModel = TypeVar("BatchModel", bound="_Batch")


class HubSpotEmulatorConfig(pydantic.BaseModel):
    """How the emulated portal behaves; the defaults are HubSpot's Free/Starter limits for a
    private app."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: None accepts any bearer token; otherwise every other token gets HubSpot's 401.
    required_token: pydantic.SecretStr | None = None
    rate_limit_max: int = pydantic.Field(default=100, gt=0)
    rate_limit_interval_ms: int = pydantic.Field(default=10_000, gt=0)
    daily_limit: int = pydantic.Field(default=250_000, gt=0)
    #: The search endpoints' own limit, per portal, instead of the ten-secondly one.
    search_limit_per_second: int = pydantic.Field(default=5, gt=0)
    #: Properties whose values identify one live contact (idProperty and upsert keys).
    unique_properties: tuple[str, ...] = ("email", "crmsync_id")
    #: The same for companies; HubSpot does not make ``domain`` unique.
    company_unique_properties: tuple[str, ...] = ("crmsync_id",)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    """HubSpot's timestamp format: UTC, always with milliseconds, ``Z`` suffix."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --------------------------------------------------------------------------------------------
# Object types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectKind:
    """What differs between HubSpot's object types, as far as the emulator goes."""

    path: str  # "contacts", in URLs and the durable store
    singular: str  # "contact", in webhook subscription types
    label: str  # "CONTACT", in error messages
    first_id: int
    always_returned: tuple[str, ...]  # on every read and write, asked for or not
    default_properties: tuple[str, ...]  # on reads that name no properties
    query_properties: tuple[str, ...]  # what a search's free-text ``query`` looks at

    @property
    def system_properties(self) -> frozenset[str]:
        """Set by HubSpot itself: requests that try to are rejected."""
        return frozenset(self.always_returned)


CONTACTS = ObjectKind(
    path="contacts",
    singular="contact",
    label="CONTACT",
    first_id=1001,
    always_returned=("createdate", "hs_object_id", "lastmodifieddate"),
    default_properties=(
        "createdate",
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "lastname",
    ),
    query_properties=("email", "firstname", "lastname", "phone", "company"),
)
COMPANIES = ObjectKind(
    path="companies",
    singular="company",
    label="COMPANY",
    first_id=5_000_001,
    always_returned=("createdate", "hs_lastmodifieddate", "hs_object_id"),
    default_properties=("createdate", "domain", "hs_lastmodifieddate", "hs_object_id", "name"),
    query_properties=("name", "domain", "website", "phone"),
)
KINDS = {kind.path: kind for kind in (CONTACTS, COMPANIES)}


def _modified_property(kind: ObjectKind) -> str:
    return "lastmodifieddate" if kind is CONTACTS else "hs_lastmodifieddate"


# --------------------------------------------------------------------------------------------
# Records: one object type's records and HubSpot's identity rules, free of HTTP
# --------------------------------------------------------------------------------------------


class StoreError(Exception):
    """A write or lookup the store refuses; the HTTP layer turns each kind into HubSpot's body."""


class ObjectNotFound(StoreError):
    def __init__(self, id_value: str, id_property: str | None) -> None:
        super().__init__(f"no object with {id_property or OBJECT_ID} {id_value!r}")
        self.id_value = id_value
        self.id_property = id_property


class UniqueValueTaken(StoreError):
    def __init__(self, name: str, value: str, existing_id: str) -> None:
        super().__init__(f"object {existing_id} already has {name} {value!r}")
        self.name = name
        self.value = value
        self.existing_id = existing_id


class InvalidPropertyValue(StoreError):
    def __init__(self, name: str, value: str, code: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.value = value
        self.code = code
        self.message = message


class NotAUniqueProperty(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not a unique property")
        self.name = name


@dataclass(frozen=True)
class Record:
    """One stored object. Never mutated: every write stores a replacement."""

    id: str
    properties: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None

    @property
    def archived(self) -> bool:
        return self.archived_at is not None

    def to_doc(self) -> dict[str, Any]:
        archived_at = None if self.archived_at is None else self.archived_at.isoformat()
        return {
            "properties": dict(self.properties),
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "archivedAt": archived_at,
        }

    @classmethod
    def from_doc(cls, record_id: str, doc: Mapping[str, Any]) -> Record:
        archived_at = doc.get("archivedAt")
        return cls(
            record_id,
            doc["properties"],
            datetime.fromisoformat(doc["createdAt"]),
            datetime.fromisoformat(doc["updatedAt"]),
            None if archived_at is None else datetime.fromisoformat(archived_at),
        )


@dataclass(frozen=True)
class Change:
    """A write webhook subscribers hear about: ``<kind.singular>.<what>``."""

    what: Literal["creation", "propertyChange", "deletion", "privacyDeletion"]
    object_id: str
    occurred_at: int  # epoch milliseconds
    property_name: str | None = None
    property_value: str | None = None


@dataclass
class WriteCounts:
    """Writes that changed something; no-op updates and re-archives are not counted."""

    creates: int = 0
    updates: int = 0
    archives: int = 0
    purges: int = 0


@dataclass
class _Journal:
    before: dict[str, Record | None] = field(default_factory=dict)


class ObjectStore:
    """One object type's records, in memory and written through to ``durable``.

    Ids are numeric strings from a durable sequence. A unique property's value belongs to at
    most one live record (emails compare case-insensitively); archiving releases its values.
    Writes made inside ``atomic()`` are undone together (in memory and on disk) when a
    StoreError escapes it. ``changes`` collects what webhook subscribers should hear about.
    """

    def __init__(
        self,
        kind: ObjectKind,
        unique_properties: Iterable[str],
        durable: DurableStore,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.kind = kind
        self._unique = frozenset(unique_properties)
        self._durable = durable
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._ids: list[int] = []  # ascending, for paging
        self._index: dict[tuple[str, str], str] = {}  # (property, value key) -> live record id
        self._journal: _Journal | None = None
        self.counts = WriteCounts()
        self.changes: list[Change] = []
        for record_id, doc in durable.load(kind.path):
            self._remember(Record.from_doc(record_id, doc))

    @property
    def live_count(self) -> int:
        return sum(not record.archived for record in self._records.values())

    @property
    def archived_count(self) -> int:
        return len(self._records) - self.live_count

    def live(self) -> Iterator[Record]:
        """Every live record, in id order."""
        for record_id in self._ids:
            record = self._records[str(record_id)]
            if not record.archived:
                yield record

    def get(
        self, id_value: str, id_property: str | None = None, *, archived: bool = False
    ) -> Record:
        """The live (or, with ``archived``, the archived) record that ``id_value`` names."""
        if id_property in (None, OBJECT_ID):
            record = self._records.get(id_value)
        else:
            record = self._find_by_unique(id_property, id_value, archived=archived)
        if record is None or record.archived != archived:
            raise ObjectNotFound(id_value, id_property)
        return record

    def page(self, after: int, limit: int, *, archived: bool) -> tuple[list[Record], str | None]:
        """Up to ``limit`` records with ids from ``after`` on, and the next page's ``after``."""
        results: list[Record] = []
        for position in range(bisect.bisect_left(self._ids, after), len(self._ids)):
            record = self._records[str(self._ids[position])]
            if record.archived != archived:
                continue
            if len(results) == limit:
                return results, record.id
            results.append(record)
        return results, None

    def create(self, properties: Mapping[str, str]) -> Record:
        values = _merge({}, self._validated(properties))
        self._check_unique(None, values)
        now = self._clock()
        record_id = str(self._durable.next_value(f"{self.kind.path}_ids", self.kind.first_id))
        stamp = _iso(now)
        system = {
            "createdate": stamp,
            _modified_property(self.kind): stamp,
            OBJECT_ID: record_id,
        }
        record = Record(record_id, {**values, **system}, created_at=now, updated_at=now)
        self._put(record)
        self.counts.creates += 1
        occurred = _millis(now)
        self.changes.append(Change("creation", record_id, occurred))
        self.changes += [
            Change("propertyChange", record_id, occurred, name, value)
            for name, value in sorted(values.items())
        ]
        return record

    def update(
        self, id_value: str, properties: Mapping[str, str], id_property: str | None = None
    ) -> Record:
        return self._apply(self.get(id_value, id_property), self._validated(properties))

    def upsert(
        self, id_property: str, id_value: str, properties: Mapping[str, str]
    ) -> tuple[Record, bool]:
        """Update the live record whose ``id_property`` is ``id_value``, or create it.

        Returns the record and whether it was created.
        """
        self.require_unique(id_property)
        try:
            existing = self.get(id_value, id_property)
        except ObjectNotFound:
            return self.create({**properties, id_property: id_value}), True
        return self._apply(existing, self._validated(properties)), False

    def archive(self, id_value: str, id_property: str | None = None) -> None:
        """Archive a live record; archiving an archived one changes nothing."""
        try:
            current = self.get(id_value, id_property)
        except ObjectNotFound:
            self.get(id_value, id_property, archived=True)
            return
        now = self._clock()
        self._put(replace(current, updated_at=now, archived_at=now))
        self.counts.archives += 1
        self.changes.append(Change("deletion", current.id, _millis(now)))

    def purge(self, id_value: str, id_property: str | None = None) -> Record:
        """Delete a record for good, live or archived: no restore, no trace left."""
        try:
            record = self.get(id_value, id_property)
        except ObjectNotFound:
            record = self.get(id_value, id_property, archived=True)
        self._forget(record.id)
        self.counts.purges += 1
        self.changes.append(Change("privacyDeletion", record.id, _millis(self._clock())))
        return record

    def require_unique(self, name: str) -> None:
        if name not in self._unique:
            raise NotAUniqueProperty(name)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Undo every write made in the block if a StoreError leaves it, as a rejected batch."""
        journal = _Journal()
        saved = (replace(self.counts), len(self.changes))
        self._journal = journal
        try:
            yield
        except StoreError:
            for record_id, previous in reversed(journal.before.items()):
                self._restore(record_id, previous)
            self.counts, changes = saved
            del self.changes[changes:]
            raise
        finally:
            self._journal = None

    def _find_by_unique(self, name: str, value: str, *, archived: bool) -> Record | None:
        self.require_unique(name)
        key = _value_key(name, value)
        if not archived:
            record_id = self._index.get(key)
            return self._records[record_id] if record_id else None
        matches = (
            record
            for record in self._records.values()
            if record.archived and _value_key(name, record.properties.get(name, "")) == key
        )
        return next(matches, None)

    def _validated(self, properties: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in properties.items():
            if name in self.kind.system_properties:
                message = f'"{name}" is a read only property; its value cannot be set.'
                raise InvalidPropertyValue(name, value, "READ_ONLY_VALUE", message)
            if isinstance(value, str) and len(value) > MAX_STRING_LENGTH:
                # The code and wording are the emulator's: HubSpot documents the limit only.
                message = f"Property values can be at most {MAX_STRING_LENGTH:,} characters"
                raise InvalidPropertyValue(name, value[:100], "INVALID_STRING_LENGTH", message)
            if self.kind is CONTACTS and name == "email" and value and not _EMAIL.fullmatch(value):
                message = f"Email address {value} is invalid"
                raise InvalidPropertyValue(name, value, "INVALID_EMAIL", message)
        return properties

    def _apply(self, current: Record, changes: Mapping[str, str]) -> Record:
        merged = _merge(current.properties, changes)
        if merged == current.properties:
            return current
        self._check_unique(current.id, merged)
        now = self._clock()
        properties = {**merged, _modified_property(self.kind): _iso(now)}
        record = replace(current, properties=properties, updated_at=now)
        self._put(record)
        self.counts.updates += 1
        occurred = _millis(now)
        for name in sorted(set(current.properties) | set(merged)):
            if name not in self.kind.system_properties and (
                current.properties.get(name) != merged.get(name)
            ):
                value = merged.get(name, "")
                self.changes.append(Change("propertyChange", record.id, occurred, name, value))
        return record

    def _check_unique(self, record_id: str | None, properties: Mapping[str, str]) -> None:
        for name, value in self._unique_values(properties):
            holder = self._index.get(_value_key(name, value))
            if holder is not None and holder != record_id:
                raise UniqueValueTaken(name, value, holder)

    def _unique_values(self, properties: Mapping[str, str]) -> Iterator[tuple[str, str]]:
        for name in sorted(self._unique):
            value = properties.get(name)
            if value:
                yield name, value

    def _put(self, record: Record) -> None:
        previous = self._records.get(record.id)
        if self._journal is not None:
            self._journal.before.setdefault(record.id, previous)
        if previous is not None:
            self._unindex(previous)
        self._remember(record)
        self._durable.put(self.kind.path, record.id, record.to_doc())

    def _forget(self, record_id: str) -> None:
        previous = self._records.pop(record_id)
        if self._journal is not None:
            self._journal.before.setdefault(record_id, previous)
        self._unindex(previous)
        self._ids.remove(int(record_id))
        self._durable.delete(self.kind.path, record_id)

    def _remember(self, record: Record) -> None:
        if record.id not in self._records:
            bisect.insort(self._ids, int(record.id))
        self._records[record.id] = record
        if not record.archived:
            for name, value in self._unique_values(record.properties):
                self._index[_value_key(name, value)] = record.id

    def _restore(self, record_id: str, previous: Record | None) -> None:
        current = self._records.pop(record_id, None)
        if current is not None:
            self._unindex(current)
            self._ids.remove(int(record_id))
        if previous is None:
            self._durable.delete(self.kind.path, record_id)
            return
        self._remember(previous)
        self._durable.put(self.kind.path, record_id, previous.to_doc())

    def _unindex(self, record: Record) -> None:
        for name, value in self._unique_values(record.properties):
            key = _value_key(name, value)
            if self._index.get(key) == record.id:
                del self._index[key]


def _value_key(name: str, value: str) -> tuple[str, str]:
    return name, value.casefold() if name == "email" else value


def _merge(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """Apply property changes; an empty string clears a property, as on HubSpot."""
    merged = {**current, **changes}
    return {name: value for name, value in merged.items() if value != ""}


# --------------------------------------------------------------------------------------------
# Search: HubSpot's filter groups, sorts and paging over stored records, free of HTTP
# --------------------------------------------------------------------------------------------

Operator = Literal[
    "EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN",
    "HAS_PROPERTY", "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN",
]  # fmt: skip
_NEGATIONS: dict[str, str] = {"NEQ": "EQ", "NOT_IN": "IN", "NOT_CONTAINS_TOKEN": "CONTAINS_TOKEN"}
_ORDERINGS: dict[str, Callable[[int], bool]] = {
    "LT": lambda order: order < 0,
    "LTE": lambda order: order <= 0,
    "GT": lambda order: order > 0,
    "GTE": lambda order: order >= 0,
}
SortKey = tuple[int, float | str]


def _sort_key(text: str) -> SortKey:
    """How HubSpot compares values: numbers and dates (ISO 8601 or epoch milliseconds) as
    numbers, anything else as case-insensitive text after them."""
    if _NUMBER.fullmatch(text):
        return 0, float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return 1, text.casefold()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return 0, moment.timestamp() * 1000


def _compare(actual: str, wanted: str) -> int:
    left, right = _sort_key(actual), _sort_key(wanted)
    return (left > right) - (left < right)


def _contains_token(actual: str, token: str) -> bool:
    """A word of the value matches ``token``, where ``*`` is a wildcard (``*@example.com``)."""
    pattern = token.casefold()
    words = [actual.casefold(), *re.split(r"\s+", actual.casefold())]
    return any(fnmatch.fnmatchcase(word, pattern) for word in words)


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------

SUBSCRIPTION_IDS = {
    f"{kind}.{what}": 4_000_000 + n
    for n, (kind, what) in enumerate(
        itertools.product(
            ("contact", "company"), ("creation", "propertyChange", "deletion", "privacyDeletion")
        )
    )
}


def sign_webhook(body: bytes, url: str, secret: str) -> dict[str, str]:
    """HubSpot's signature headers: v3 (HMAC-SHA256 over method, URI, body and a millisecond
    timestamp, base64) next to the legacy v1 (SHA-256 of secret and body, hex)."""
    timestamp = str(int(time.time() * 1000))
    message = b"POST" + url.encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return {
        "X-HubSpot-Signature": hashlib.sha256(secret.encode() + body).hexdigest(),
        "X-HubSpot-Signature-Version": "v1",
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": timestamp,
    }


def _event(kind: ObjectKind, change: Change, event_id: int) -> dict[str, Any]:
    subscription_type = f"{kind.singular}.{change.what}"
    event: dict[str, Any] = {
        "eventId": event_id,
        "subscriptionId": SUBSCRIPTION_IDS[subscription_type],
        "portalId": PORTAL_ID,
        "appId": APP_ID,
        "occurredAt": change.occurred_at,
        "subscriptionType": subscription_type,
        "attemptNumber": 0,
        "objectId": int(change.object_id),
    }
    if change.property_name is not None:
        event["propertyName"] = change.property_name
        event["propertyValue"] = change.property_value
    if change.what == "creation":
        event["changeFlag"] = "CREATED"
    elif change.what == "deletion":
        event["changeFlag"] = "DELETED"
    event["changeSource"] = "INTEGRATION"  # every write here comes through the API
    event["sourceId"] = str(APP_ID)
    return event


# --------------------------------------------------------------------------------------------
# Emulator state and rate limits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The limits' answer to one request; ``policy`` names the limit that refused it."""

    policy: str | None
    headers: dict[str, str]


class EmulatorState:
    """Everything one emulated portal holds: records, limits, faults, webhooks and counters."""

    objects: dict[str, ObjectStore]
    blocklist: set[str]
    window: SlidingWindowLimiter
    search_window: SlidingWindowLimiter
    daily: FixedWindowCounter
    requests: int
    rate_limited: int
    searches: int

    def __init__(self, config: HubSpotEmulatorConfig, durable: DurableStore) -> None:
        self.config = config
        self.durable = durable
        self.faults = FaultInjector()
        self.webhooks = WebhookEmitter(durable, sign_webhook)
        self._event_ids = itertools.count(random.randrange(10**9, 2 * 10**9))
        self._load()

    def _load(self) -> None:
        config = self.config
        self.objects = {
            "contacts": ObjectStore(CONTACTS, config.unique_properties, self.durable),
            "companies": ObjectStore(COMPANIES, config.company_unique_properties, self.durable),
        }
        self.blocklist = {email for email, _ in self.durable.load(BLOCKLIST)}
        self.window = SlidingWindowLimiter(
            config.rate_limit_max, config.rate_limit_interval_ms / 1000
        )
        self.search_window = SlidingWindowLimiter(config.search_limit_per_second, 1.0)
        self.daily = FixedWindowCounter(config.daily_limit, 86_400)
        self.requests = self.rate_limited = self.searches = 0

    def reset(self) -> None:
        self.durable.clear()
        self.faults.injected = 0
        self.webhooks.delivered = self.webhooks.failed = 0
        self._load()

    def accepts(self, token: str) -> bool:
        required = self.config.required_token
        if required is None:
            return True
        return hmac.compare_digest(token.encode(), required.get_secret_value().encode())

    def admit(self, token: str, *, search: bool) -> Verdict:
        """Search counts against its own per-second limit and says nothing in its headers;
        everything else against the token's rolling window. Both use the daily allowance.

        A request the rolling window refuses costs no daily allowance; one the daily allowance
        refuses still took its place in the window, which only matters once the day is spent
        (then every request is refused anyway).
        """
        if search:
            if not self.search_window.admit().allowed:
                return Verdict("SECONDLY", {})
            return Verdict(None if self.daily.admit().allowed else "DAILY", {})
        window = self.window.admit(token)
        if not window.allowed:
            daily_remaining = max(self.daily.limit - self.daily.used, 0)
            return Verdict("TEN_SECONDLY_ROLLING", self._headers(0, daily_remaining))
        daily = self.daily.admit()
        return Verdict(
            None if daily.allowed else "DAILY", self._headers(window.remaining, daily.remaining)
        )

    def throttled_headers(self) -> dict[str, str]:
        return self._headers(0, max(self.daily.limit - self.daily.used, 0))

    def _headers(self, remaining: int, daily_remaining: int) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Daily": str(self.config.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(daily_remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.config.rate_limit_interval_ms),
            "X-HubSpot-RateLimit-Max": str(self.config.rate_limit_max),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
        }

    def block(self, email: str) -> None:
        """Put an email on the GDPR blocklist. HubSpot's UI and imports refuse it from then
        on; the API does not (a contact created through the API is let back in)."""
        key = email.casefold()
        self.blocklist.add(key)
        self.durable.put(BLOCKLIST, key, {"at": _iso(_utc_now())})

    def publish(self) -> None:
        """Send webhook subscribers the events for every write since the last call."""
        events = []
        for store in self.objects.values():
            events += [
                _event(store.kind, change, next(self._event_ids)) for change in store.changes
            ]
            store.changes.clear()
        for start in range(0, len(events), MAX_WEBHOOK_EVENTS):
            self.webhooks.emit(events[start : start + MAX_WEBHOOK_EVENTS])

    def stats(self) -> dict[str, int]:
        contacts, companies = self.objects["contacts"], self.objects["companies"]
        counts = [store.counts for store in self.objects.values()]
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "searches": self.searches,
            "contacts": contacts.live_count,
            "archived": contacts.archived_count,
            "companies": companies.live_count,
            "companies_archived": companies.archived_count,
            "creates": sum(c.creates for c in counts),
            "updates": sum(c.updates for c in counts),
            "archives": sum(c.archives for c in counts),
            "gdpr_deletes": sum(c.purges for c in counts),
            "gdpr_blocklisted": len(self.blocklist),
            "daily_used": self.daily.used,
        }


STATE = web.AppKey("hubspot_emulator_state", EmulatorState)


# --------------------------------------------------------------------------------------------
# HTTP: request bodies, responses and errors in HubSpot's shapes
# --------------------------------------------------------------------------------------------

PropertyValue = str | int | float | bool | None


class _Body(pydantic.BaseModel):
    # HubSpot's inputs carry more than the emulator uses (associations...).
    model_config = pydantic.ConfigDict(extra="ignore", populate_by_name=True)


class ObjectInput(_Body):
    properties: dict[str, PropertyValue]
    trace_id: str | None = pydantic.Field(default=None, alias="objectWriteTraceId")

    def text_properties(self) -> dict[str, str]:
        return {name: _as_text(value) for name, value in self.properties.items()}


class UpdateInput(ObjectInput):
    id: str
    id_property: str | None = pydantic.Field(default=None, alias="idProperty")


class UpsertInput(ObjectInput):
    id: str
    id_property: str = pydantic.Field(alias="idProperty")


class IdInput(_Body):
    id: str


class _Batch(_Body):
    inputs: Sequence[_Body]


class BatchCreate(_Batch):
    inputs: list[ObjectInput]


class BatchUpdate(_Batch):
    inputs: list[UpdateInput]


class BatchUpsert(_Batch):
    inputs: list[UpsertInput]


class BatchArchive(_Batch):
    inputs: list[IdInput]


class BatchRead(_Batch):
    inputs: list[IdInput]
    properties: list[str] = []
    id_property: str | None = pydantic.Field(default=None, alias="idProperty")


class GdprDeleteInput(_Body):
    object_id: str = pydantic.Field(alias="objectId")
    id_property: str | None = pydantic.Field(default=None, alias="idProperty")


class SearchFilter(_Body):
    property_name: str = pydantic.Field(alias="propertyName")
    operator: Operator
    value: PropertyValue = None
    high_value: PropertyValue = pydantic.Field(default=None, alias="highValue")
    values: list[PropertyValue] = []

    def matches(self, properties: Mapping[str, str]) -> bool:
        actual = properties.get(self.property_name)
        if self.operator in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
            return (actual is not None) == (self.operator == "HAS_PROPERTY")
        if self.operator in _NEGATIONS:
            # As on HubSpot, a record without the property is "not equal" to anything.
            positive = self.model_copy(update={"operator": _NEGATIONS[self.operator]})
            return not positive.matches(properties)
        if actual is None:
            return False
        value = _as_text(self.value)
        if self.operator == "EQ":
            return _compare(actual, value) == 0
        if self.operator == "IN":
            return any(_compare(actual, _as_text(v)) == 0 for v in self.values)
        if self.operator == "CONTAINS_TOKEN":
            return _contains_token(actual, value)
        if self.operator == "BETWEEN":
            high = _as_text(self.high_value)
            return _compare(actual, value) >= 0 and _compare(actual, high) <= 0
        return _ORDERINGS[self.operator](_compare(actual, value))

    def problem(self) -> str | None:
        """Why HubSpot would refuse this filter, if it would."""
        needs_value = self.operator not in ("HAS_PROPERTY", "NOT_HAS_PROPERTY", "IN", "NOT_IN")
        if needs_value and self.value is None:
            return f"A value is required for the {self.operator} operator"
        if self.operator == "BETWEEN" and self.high_value is None:
            return "A highValue is required for the BETWEEN operator"
        if self.operator in ("IN", "NOT_IN") and not self.values:
            return f"values are required for the {self.operator} operator"
        return None


class FilterGroup(_Body):
    filters: list[SearchFilter]


class SearchSort(_Body):
    property_name: str = pydantic.Field(alias="propertyName")
    direction: Literal["ASCENDING", "DESCENDING"] = "ASCENDING"

    @classmethod
    def parse(cls, sort: SearchSort | str) -> SearchSort:
        """HubSpot also takes a bare property name, ``-`` in front for descending."""
        if isinstance(sort, SearchSort):
            return sort
        descending = sort.startswith("-")
        return cls(
            propertyName=sort.lstrip("-"), direction="DESCENDING" if descending else "ASCENDING"
        )


class SearchRequest(_Body):
    filter_groups: list[FilterGroup] = pydantic.Field(default=[], alias="filterGroups")
    sorts: list[SearchSort | str] = []
    properties: list[str] = []
    limit: int = DEFAULT_PAGE_SIZE
    after: str | int | None = None
    query: str | None = None


def _as_text(value: PropertyValue) -> str:
    """HubSpot stores property values as text; null clears like an empty string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class HubSpotError(Exception):
    """An error response in HubSpot's envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str | None = "VALIDATION_ERROR",
        context: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category
        self.context = context

    def response(self, correlation_id: str) -> web.Response:
        body: dict[str, Any] = {
            "status": "error",
            "message": self.message,
            "correlationId": correlation_id,
        }
        if self.context is not None:
            body["context"] = self.context
        if self.category is not None:
            body["category"] = self.category
        return _json(self.status, body)

    def batch_entry(self, trace_id: str | None = None) -> dict[str, Any]:
        """This error as one of a 207's ``errors``, naming the input by its trace id."""
        context = dict(self.context or {})
        if trace_id is not None:
            context["objectWriteTraceId"] = [trace_id]
        entry: dict[str, Any] = {
            "status": "error",
            "category": self.category or "VALIDATION_ERROR",
            "message": self.message,
        }
        if context:
            entry["context"] = context
        return entry


def _as_hubspot_error(kind: ObjectKind, error: StoreError) -> HubSpotError:
    if isinstance(error, ObjectNotFound):
        by_number = error.id_property not in (None, OBJECT_ID) or error.id_value.isdigit()
        message = "resource not found" if by_number else NOT_NUMERIC_MESSAGE
        return HubSpotError(404, message, "OBJECT_NOT_FOUND", {"id": [error.id_value]})
    if isinstance(error, UniqueValueTaken) and kind is CONTACTS and error.name == "email":
        message = f"Contact already exists. Existing ID: {error.existing_id}"
        return HubSpotError(409, message, "CONFLICT")
    if isinstance(error, UniqueValueTaken):
        message = (
            f"Another {kind.singular} already has {error.name} {error.value}."
            f" Existing ID: {error.existing_id}"
        )
        return _invalid_property(error.name, error.value, "DUPLICATE_UNIQUE_VALUE", message)
    if isinstance(error, InvalidPropertyValue):
        return _invalid_property(error.name, error.value, error.code, error.message)
    if isinstance(error, NotAUniqueProperty):
        message = f"Property {error.name} is not a unique identifier for {kind.label} objects"
        return HubSpotError(400, message, context={"idProperty": [error.name]})
    raise TypeError(f"unmapped store error {error!r}")


def _invalid_property(name: str, value: str, code: str, message: str) -> HubSpotError:
    detail = {"isValid": False, "message": message, "error": code, "name": name}
    embedded = orjson.dumps([detail | {"propertyValue": value}]).decode()
    return HubSpotError(400, f"Property values were not valid: {embedded}")


def _not_found_entry(kind: ObjectKind, missing: Sequence[str]) -> dict[str, Any]:
    message = (
        f"Could not get some {kind.label} objects, they may be deleted or not exist."
        " Check that ids are valid."
    )
    return {
        "status": "error",
        "category": "OBJECT_NOT_FOUND",
        "message": message,
        "context": {"ids": list(missing)},
    }


def _json(status: int, body: object) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", charset="utf-8"
    )


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _rate_limited(policy: str, correlation_id: str) -> web.Response:
    return _json(
        429,
        {
            "status": "error",
            "message": RATE_POLICIES[policy],
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id,
            "policyName": policy,
            "groupName": RATE_GROUPS[policy],
        },
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _hubspot_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What HubSpot does around every API call: faults, auth, rate limits, headers, errors."""
    state = request.config_dict[STATE]
    state.requests += 1
    # HubSpot has the whole request before it is slow: a client that gives up waiting may
    # still find its write applied (injected latency must not turn into a lost request).
    await request.read()
    fault = await state.faults.draw()
    if fault == "outage":  # the load balancer answers; HubSpot never sees the request
        return outage_response()
    correlation_id = str(uuid.uuid4())
    response = await _admitted(request, handler, state, correlation_id, fault)
    response.headers["X-HubSpot-Correlation-Id"] = correlation_id
    return response


async def _admitted(
    request: web.Request,
    handler: Handler,
    state: EmulatorState,
    correlation_id: str,
    fault: str | None,
) -> web.StreamResponse:
    token = _bearer_token(request)
    if token is None or not state.accepts(token):
        return HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION").response(correlation_id)
    if fault == "throttle":
        response = _rate_limited("TEN_SECONDLY_ROLLING", correlation_id)
        response.headers.update(state.throttled_headers())
        return response
    verdict = state.admit(token, search=request.path.endswith("/search"))
    if verdict.policy is not None:
        state.rate_limited += 1
        response = _rate_limited(verdict.policy, correlation_id)
    elif fault == "error":
        status = state.faults.faults.error_status
        response = HubSpotError(status, SERVER_ERRORS[status], None).response(correlation_id)
    else:
        response = await _serve(request, handler, state, correlation_id)
    response.headers.update(verdict.headers)
    return response


async def _serve(
    request: web.Request, handler: Handler, state: EmulatorState, correlation_id: str
) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as error:
        return _as_hubspot_error(_target(request)[0], error).response(correlation_id)
    except HubSpotError as error:
        return error.response(correlation_id)
    finally:
        state.publish()


async def _parse(request: web.Request, model: type[Model]) -> Model:
    try:
        return model.model_validate_json(await request.read())
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or 'body'}: {problem['msg']}"
            for problem in error.errors()[:3]
        )
        raise HubSpotError(400, f"Invalid input JSON: {problems}") from error


async def _parse_batch(request: web.Request, model: type[BatchModel]) -> BatchModel:
    batch = await _parse(request, model)
    if len(batch.inputs) > MAX_BATCH_INPUTS:
        raise HubSpotError(400, TOO_MANY_INPUTS_MESSAGE)
    return batch


def _reject_duplicate_ids(ids: Sequence[str]) -> None:
    duplicates = sorted({value for value in ids if ids.count(value) > 1})
    if duplicates:
        listed = ", ".join(duplicates)
        message = f"Duplicate IDs found in batch input: [{listed}]. IDs must be unique"
        raise HubSpotError(400, message, context={"ids": duplicates})


def _target(request: web.Request) -> tuple[ObjectKind, ObjectStore]:
    kind = KINDS[request.match_info.get("object_type", "contacts")]
    return kind, request.config_dict[STATE].objects[kind.path]


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


def _requested(request: web.Request) -> list[str]:
    """The ``properties`` query parameter, repeated and/or comma-separated."""
    values = request.query.getall("properties", [])
    return [name for value in values for name in value.split(",") if name]


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise HubSpotError(400, f"Unable to parse {name} value {raw!r} as a number") from None


def _view(record: Record, names: Iterable[str], trace_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": record.id,
        "properties": {name: record.properties.get(name) for name in sorted(set(names))},
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "archived": record.archived,
    }
    if record.archived_at is not None:
        body["archivedAt"] = _iso(record.archived_at)
    if trace_id is not None:
        body["objectWriteTraceId"] = trace_id
    return body


def _read_view(kind: ObjectKind, record: Record, requested: Sequence[str]) -> dict[str, Any]:
    """Named properties (null when unset) plus the always-returned ones, or the default set."""
    names = [*requested, *kind.always_returned] if requested else kind.default_properties
    return _view(record, names)


def _written_view(
    kind: ObjectKind, record: Record, written: Iterable[str], trace_id: str | None = None
) -> dict[str, Any]:
    """The properties a write set, plus those of the default set the record has values for."""
    present = (name for name in kind.default_properties if name in record.properties)
    return _view(record, [*written, *present], trace_id)


def _batch_response(
    started: datetime,
    results: list[dict[str, Any]],
    errors: Sequence[dict[str, Any]] = (),
    status: int = 200,
) -> web.Response:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if errors:
        status = 207
        body["numErrors"] = len(errors)
        body["errors"] = list(errors)
    body["startedAt"] = _iso(started)
    body["completedAt"] = _iso(_utc_now())
    return _json(status, body)


def _traced(inputs: Sequence[ObjectInput]) -> bool:
    """Whether the caller opted into per-input results (multi-status) for a batch write."""
    return bool(inputs) and all(item.trace_id is not None for item in inputs)


Item = TypeVar("Item", bound=ObjectInput)


def _each_alone(
    kind: ObjectKind, store: ObjectStore, inputs: Sequence[Item], write: Callable[[Item], Any]
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Write every input on its own; a refused one is an error entry, the others stand."""
    results, errors = [], []
    for item in inputs:
        try:
            with store.atomic():
                results.append(write(item))
        except StoreError as error:
            errors.append(_as_hubspot_error(kind, error).batch_entry(item.trace_id))
    return results, errors


# --------------------------------------------------------------------------------------------
# HubSpot endpoints
# --------------------------------------------------------------------------------------------


async def create_object(request: web.Request) -> web.Response:
    kind, store = _target(request)
    body = await _parse(request, ObjectInput)
    record = store.create(body.text_properties())
    return _json(201, _written_view(kind, record, body.properties))


async def get_object(request: web.Request) -> web.Response:
    kind, store = _target(request)
    record = store.get(
        request.match_info["object_id"],
        request.query.get("idProperty"),
        archived=_flag(request, "archived"),
    )
    return _json(200, _read_view(kind, record, _requested(request)))


async def update_object(request: web.Request) -> web.Response:
    kind, store = _target(request)
    body = await _parse(request, ObjectInput)
    record = store.update(
        request.match_info["object_id"], body.text_properties(), request.query.get("idProperty")
    )
    return _json(200, _written_view(kind, record, body.properties))


async def archive_object(request: web.Request) -> web.Response:
    _, store = _target(request)
    # HubSpot answers 204 whether or not the object exists.
    with contextlib.suppress(ObjectNotFound):
        store.archive(request.match_info["object_id"], request.query.get("idProperty"))
    return web.Response(status=204)


async def list_objects(request: web.Request) -> web.Response:
    kind, store = _target(request)
    limit = min(max(_int_query(request, "limit", DEFAULT_PAGE_SIZE), 1), MAX_PAGE_SIZE)
    after = _int_query(request, "after", 0)
    records, next_after = store.page(after, limit, archived=_flag(request, "archived"))
    requested = _requested(request)
    body: dict[str, Any] = {"results": [_read_view(kind, r, requested) for r in records]}
    if next_after is not None:
        link = str(request.url.update_query(after=next_after))
        body["paging"] = {"next": {"after": next_after, "link": link}}
    return _json(200, body)


async def batch_create(request: web.Request) -> web.Response:
    started = _utc_now()
    kind, store = _target(request)
    batch = await _parse_batch(request, BatchCreate)

    def create(item: ObjectInput) -> dict[str, Any]:
        record = store.create(item.text_properties())
        return _written_view(kind, record, item.properties, item.trace_id)

    if _traced(batch.inputs):
        results, errors = _each_alone(kind, store, batch.inputs, create)
        return _batch_response(started, results, errors, status=201)
    with store.atomic():
        results = [create(item) for item in batch.inputs]
    return _batch_response(started, results, status=201)


async def batch_read(request: web.Request) -> web.Response:
    started = _utc_now()
    kind, store = _target(request)
    batch = await _parse_batch(request, BatchRead)
    archived = _flag(request, "archived")
    results, missing = [], []
    for item in batch.inputs:
        try:
            record = store.get(item.id, batch.id_property, archived=archived)
        except ObjectNotFound:
            missing.append(item.id)
        else:
            results.append(_read_view(kind, record, batch.properties))
    errors = [_not_found_entry(kind, missing)] if missing else []
    return _batch_response(started, results, errors)


async def batch_update(request: web.Request) -> web.Response:
    started = _utc_now()
    kind, store = _target(request)
    batch = await _parse_batch(request, BatchUpdate)
    _reject_duplicate_ids([item.id for item in batch.inputs])
    missing: list[str] = []

    def update(item: UpdateInput) -> dict[str, Any] | None:
        try:
            record = store.update(item.id, item.text_properties(), item.id_property)
        except ObjectNotFound:
            missing.append(item.id)
            return None
        return _written_view(kind, record, item.properties, item.trace_id)

    if _traced(batch.inputs):
        written, errors = _each_alone(kind, store, batch.inputs, update)
    else:
        with store.atomic():
            written, errors = [update(item) for item in batch.inputs], []
    if missing:
        errors.insert(0, _not_found_entry(kind, missing))
    return _batch_response(started, [view for view in written if view is not None], errors)


async def batch_upsert(request: web.Request) -> web.Response:
    started = _utc_now()
    kind, store = _target(request)
    batch = await _parse_batch(request, BatchUpsert)
    _reject_duplicate_ids([item.id for item in batch.inputs])
    for id_property in {item.id_property for item in batch.inputs}:
        store.require_unique(id_property)

    def upsert(item: UpsertInput) -> dict[str, Any]:
        record, created = store.upsert(item.id_property, item.id, item.text_properties())
        view = _written_view(kind, record, [*item.properties, item.id_property], item.trace_id)
        return {**view, "new": created}

    if _traced(batch.inputs):
        results, errors = _each_alone(kind, store, batch.inputs, upsert)
        return _batch_response(started, results, errors)
    try:
        with store.atomic():
            results = [upsert(item) for item in batch.inputs]
    except StoreError as error:
        # Untraced, the batch stands or falls whole, and says so in a 207 with no results.
        return _batch_response(started, [], [_as_hubspot_error(kind, error).batch_entry()])
    return _batch_response(started, results)


async def batch_archive(request: web.Request) -> web.Response:
    _, store = _target(request)
    batch = await _parse_batch(request, BatchArchive)
    for item in batch.inputs:
        with contextlib.suppress(ObjectNotFound):
            store.archive(item.id)
    return web.Response(status=204)


async def search_objects(request: web.Request) -> web.Response:
    kind, store = _target(request)
    request.config_dict[STATE].searches += 1
    search = await _parse(request, SearchRequest)
    _check_search(search)
    after = _search_after(search.after)
    matches = [record for record in store.live() if _selected(search, kind, record)]
    if search.sorts:
        _sort(matches, SearchSort.parse(search.sorts[0]))  # HubSpot applies only one sort
    page = matches[after : after + search.limit]
    body: dict[str, Any] = {
        "total": len(matches),
        "results": [_read_view(kind, record, search.properties) for record in page],
    }
    if after + search.limit < len(matches):
        body["paging"] = {"next": {"after": str(after + search.limit)}}
    return _json(200, body)


def _check_search(search: SearchRequest) -> None:
    groups = search.filter_groups
    filters = [f for group in groups for f in group.filters]
    if len(groups) > MAX_FILTER_GROUPS:
        raise HubSpotError(400, f"Too many filter groups: {len(groups)} > {MAX_FILTER_GROUPS}")
    if any(len(group.filters) > MAX_FILTERS_PER_GROUP for group in groups):
        message = f"Too many filters in a filter group, the maximum is {MAX_FILTERS_PER_GROUP}"
        raise HubSpotError(400, message)
    if len(filters) > MAX_FILTERS:
        raise HubSpotError(400, f"Too many filters: {len(filters)} > {MAX_FILTERS}")
    if not 0 < search.limit <= MAX_SEARCH_PAGE_SIZE:
        message = f"limit must be between 1 and {MAX_SEARCH_PAGE_SIZE}, got {search.limit}"
        raise HubSpotError(400, message)
    problem = next((p for p in map(SearchFilter.problem, filters) if p is not None), None)
    if problem is not None:
        raise HubSpotError(400, problem)


def _search_after(after: str | int | None) -> int:
    try:
        offset = int(after or 0)
    except ValueError:
        raise HubSpotError(400, f"after must be an integer, got {after!r}") from None
    if not 0 <= offset < MAX_SEARCH_RESULTS:
        message = f"The search endpoints are limited to {MAX_SEARCH_RESULTS} total results"
        raise HubSpotError(400, message)
    return offset


def _selected(search: SearchRequest, kind: ObjectKind, record: Record) -> bool:
    """In any filter group (all its filters hold) and matching the free-text query."""
    properties = record.properties
    if search.filter_groups and not any(
        all(f.matches(properties) for f in group.filters) for group in search.filter_groups
    ):
        return False
    if not search.query:
        return True
    words = [
        word
        for name in kind.query_properties
        for word in re.split(r"[\s@.,]+", properties.get(name, "").casefold())
    ]
    return all(
        any(word.startswith(token) for word in words) for token in search.query.casefold().split()
    )


def _sort(records: list[Record], sort: SearchSort) -> None:
    """Sort in place by one property; records without it come last either way."""
    records.sort(key=lambda record: int(record.id))
    present = [r for r in records if r.properties.get(sort.property_name) is not None]
    absent = [r for r in records if r.properties.get(sort.property_name) is None]
    present.sort(
        key=lambda record: _sort_key(record.properties[sort.property_name]),
        reverse=sort.direction == "DESCENDING",
    )
    records[:] = present + absent


async def gdpr_delete(request: web.Request) -> web.Response:
    """Permanently delete a contact; an unknown email (``idProperty=email``) is blocklisted."""
    state = request.config_dict[STATE]
    store = state.objects["contacts"]
    body = await _parse(request, GdprDeleteInput)
    if body.id_property not in (None, OBJECT_ID):
        store.require_unique(body.id_property)
    try:
        record = store.purge(body.object_id, body.id_property)
    except ObjectNotFound:
        if body.id_property != "email":
            raise
        state.block(body.object_id)
    else:
        if record.properties.get("email"):
            state.block(record.properties["email"])
    return web.Response(status=204)


def create_app(config: HubSpotEmulatorConfig, store: DurableStore | None = None) -> web.Application:
    """The emulator as an aiohttp application over ``store`` (in memory when None)."""
    objects = "/v3/objects/{object_type:contacts|companies}"
    api = web.Application(middlewares=[_hubspot_gateway])
    api.add_routes(
        [
            web.get(objects, list_objects),
            web.post(objects, create_object),
            web.post("/v3/objects/contacts/gdpr-delete", gdpr_delete),
            web.post(f"{objects}/search", search_objects),
            web.post(f"{objects}/batch/create", batch_create),
            web.post(f"{objects}/batch/read", batch_read),
            web.post(f"{objects}/batch/update", batch_update),
            web.post(f"{objects}/batch/upsert", batch_upsert),
            web.post(f"{objects}/batch/archive", batch_archive),
            web.get(f"{objects}/{{object_id}}", get_object),
            web.patch(f"{objects}/{{object_id}}", update_object),
            web.delete(f"{objects}/{{object_id}}", archive_object),
        ]
    )
    app = web.Application()
    state = EmulatorState(config, store if store is not None else DurableStore(None))
    app[STATE] = state
    app.add_subapp("/crm", api)
    add_control_routes(app, state)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = emulator_parser(
        "hubspot", "Serve a local HubSpot CRM v3 API (contacts and companies).", 18080,
        "bearer token",
    )  # fmt: skip
    parser.add_argument(
        "--require-token",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=f"accept only ${TOKEN_VARIABLE} (default: any bearer token)",
    )
    parser.add_argument("--rate-max", type=int, help="requests allowed per rate-limit window")
    parser.add_argument("--rate-interval-ms", type=int, help="rate-limit window length")
    parser.add_argument("--daily-limit", type=int, help="requests allowed per day")
    parser.add_argument("--search-rate-max", type=int, help="search requests allowed per second")
    args = parser.parse_args(argv)
    token = args.token
    if token is None and args.require_token:
        token = os.environ.get(TOKEN_VARIABLE, DEFAULT_TOKEN)
    settings = {
        "required_token": token,
        "rate_limit_max": args.rate_max,
        "rate_limit_interval_ms": args.rate_interval_ms,
        "daily_limit": args.daily_limit,
        "search_limit_per_second": args.search_rate_max,
    }
    if args.unlimited:
        settings |= {"rate_limit_max": UNLIMITED, "daily_limit": UNLIMITED,
                     "search_limit_per_second": UNLIMITED}  # fmt: skip
    config = HubSpotEmulatorConfig(**{k: v for k, v in settings.items() if v is not None})
    serve(lambda store: create_app(config, store), args.host, args.port, args.data, args.receipts)


if __name__ == "__main__":
    main()
