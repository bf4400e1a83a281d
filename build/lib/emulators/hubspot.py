"""Local emulator of HubSpot's CRM v3 contacts API.

crmsync's HubSpot adapter and its tests talk to this instead of a real portal. It serves the
contacts endpoints under their real paths (``/crm/v3/objects/contacts``, single and batch) with
HubSpot's response and error bodies, bearer-token checks and rate limiting (a rolling window per
token plus a daily allowance, reported in the ``X-HubSpot-RateLimit-*`` headers), so the official
``hubspot-api-client`` SDK works against it by changing only its host.

A private ``/_emulator`` prefix, which is not part of HubSpot's API and needs no token, injects
faults, reports counters and resets the state::

    POST /_emulator/faults  {"error_rate": 0.5, "status": 503, "latency_ms": 0, "seed": 0}
    GET  /_emulator/stats
    POST /_emulator/reset

Run it with ``python -m emulators.hubspot --port 18080`` or serve ``create_app(config)``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hmac
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import orjson
import pydantic
from aiohttp import web

FIRST_CONTACT_ID = 1001
MAX_BATCH_INPUTS = 100
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
OBJECT_ID = "hs_object_id"
#: Returned on every read and write whether or not they were asked for.
ALWAYS_RETURNED = ("createdate", "hs_object_id", "lastmodifieddate")
#: Returned by reads that name no properties.
DEFAULT_PROPERTIES = (*ALWAYS_RETURNED, "email", "firstname", "lastname")
#: HubSpot sets these itself; requests that try to are rejected.
READ_ONLY_PROPERTIES = frozenset(ALWAYS_RETURNED)
#: Identify the emulated portal and private app in rate-limit group names.
PORTAL_ID = 20000001
APP_ID = 3000001

AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can"
    " find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
NOT_NUMERIC_MESSAGE = "Object not found.  objectId are usually numeric."
BATCH_NOT_FOUND_MESSAGE = (
    "Could not get some CONTACT objects, they may be deleted or not exist."
    " Check that ids are valid."
)
TOO_MANY_INPUTS_MESSAGE = (
    f"The maximum number of inputs supported in a batch is {MAX_BATCH_INPUTS}."
    " Please reduce the number of items and try again"
)
RATE_POLICIES = {
    "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
    "DAILY": "You have reached your daily limit.",
}
RATE_GROUPS = {
    "TEN_SECONDLY_ROLLING": f"publicapi:private_app-api-calls-ten-secondly:{APP_ID}:{PORTAL_ID}",
    "DAILY": f"publicapi:private_app-api-calls-daily:{APP_ID}:{PORTAL_ID}",
}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

Model = TypeVar("Model", bound=pydantic.BaseModel)
BatchModel = TypeVar("BatchModel", bound="_Batch")


class HubSpotEmulatorConfig(pydantic.BaseModel):
    """How the emulated portal behaves; the defaults are HubSpot's Free/Starter limits."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: None accepts any bearer token; otherwise every other token gets HubSpot's 401.
    required_token: pydantic.SecretStr | None = None
    rate_limit_max: int = pydantic.Field(default=100, gt=0)
    rate_limit_interval_ms: int = pydantic.Field(default=10_000, gt=0)
    daily_limit: int = pydantic.Field(default=250_000, gt=0)
    #: Properties whose values identify one live contact (idProperty and upsert keys).
    unique_properties: tuple[str, ...] = ("email", "crmsync_id")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    """HubSpot's timestamp format: UTC, always with milliseconds, ``Z`` suffix."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------
# Store: contacts and HubSpot's identity rules, free of HTTP
# --------------------------------------------------------------------------------------------


class StoreError(Exception):
    """A write or lookup the store refuses; the HTTP layer turns each kind into HubSpot's body."""


class ContactNotFound(StoreError):
    def __init__(self, id_value: str, id_property: str | None) -> None:
        super().__init__(f"no contact with {id_property or OBJECT_ID} {id_value!r}")
        self.id_value = id_value
        self.id_property = id_property


class UniqueValueTaken(StoreError):
    def __init__(self, name: str, value: str, existing_id: str) -> None:
        super().__init__(f"contact {existing_id} already has {name} {value!r}")
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
class Contact:
    """One stored contact. Never mutated: every write stores a replacement."""

    id: str
    properties: Mapping[str, str]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None

    @property
    def archived(self) -> bool:
        return self.archived_at is not None


@dataclass
class WriteCounts:
    """Writes that changed something; no-op updates and re-archives are not counted."""

    creates: int = 0
    updates: int = 0
    archives: int = 0


class ContactStore:
    """In-memory contacts with HubSpot's identity rules.

    Ids are numeric strings counting up from 1001. A unique property's value belongs to at most
    one live contact (emails compare case-insensitively); archiving a contact releases its values.
    Writes made inside ``atomic()`` are undone together when a StoreError escapes it.
    """

    def __init__(
        self, unique_properties: Iterable[str], clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self._unique = frozenset(unique_properties)
        self._clock = clock
        self._contacts: dict[str, Contact] = {}
        self._ids: list[int] = []  # ascending, for paging
        self._index: dict[tuple[str, str], str] = {}  # (property, value key) -> live contact id
        self._next_id = FIRST_CONTACT_ID
        self._journal: dict[str, Contact | None] | None = None
        self.counts = WriteCounts()

    @property
    def live_count(self) -> int:
        return sum(not contact.archived for contact in self._contacts.values())

    @property
    def archived_count(self) -> int:
        return len(self._contacts) - self.live_count

    def get(
        self, id_value: str, id_property: str | None = None, *, archived: bool = False
    ) -> Contact:
        """The live (or, with ``archived``, the archived) contact that ``id_value`` names."""
        if id_property in (None, OBJECT_ID):
            contact = self._contacts.get(id_value)
        else:
            contact = self._find_by_unique(id_property, id_value, archived=archived)
        if contact is None or contact.archived != archived:
            raise ContactNotFound(id_value, id_property)
        return contact

    def page(self, after: int, limit: int, *, archived: bool) -> tuple[list[Contact], str | None]:
        """Up to ``limit`` contacts with ids from ``after`` on, and the next page's ``after``."""
        results: list[Contact] = []
        for position in range(bisect.bisect_left(self._ids, after), len(self._ids)):
            contact = self._contacts[str(self._ids[position])]
            if contact.archived != archived:
                continue
            if len(results) == limit:
                return results, contact.id
            results.append(contact)
        return results, None

    def create(self, properties: Mapping[str, str]) -> Contact:
        now = self._clock()
        contact_id = str(self._next_id)
        stamp = _iso(now)
        system = {"createdate": stamp, "lastmodifieddate": stamp, OBJECT_ID: contact_id}
        values = _merge({}, self._validated(properties))
        contact = Contact(contact_id, {**values, **system}, created_at=now, updated_at=now)
        self._check_unique(contact)
        self._next_id += 1
        self._put(contact)
        self.counts.creates += 1
        return contact

    def update(
        self, id_value: str, properties: Mapping[str, str], id_property: str | None = None
    ) -> Contact:
        return self._apply(self.get(id_value, id_property), self._validated(properties))

    def upsert(
        self, id_property: str, id_value: str, properties: Mapping[str, str]
    ) -> tuple[Contact, bool]:
        """Update the live contact whose ``id_property`` is ``id_value``, or create it.

        Returns the contact and whether it was created.
        """
        self._require_unique(id_property)
        try:
            existing = self.get(id_value, id_property)
        except ContactNotFound:
            return self.create({**properties, id_property: id_value}), True
        return self._apply(existing, self._validated(properties)), False

    def archive(self, id_value: str, id_property: str | None = None) -> None:
        """Archive a live contact; archiving an archived one changes nothing."""
        try:
            current = self.get(id_value, id_property)
        except ContactNotFound:
            self.get(id_value, id_property, archived=True)
            return
        now = self._clock()
        self._put(replace(current, updated_at=now, archived_at=now))
        self.counts.archives += 1

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Undo every write made in the block if a StoreError leaves it, as a rejected batch."""
        journal: dict[str, Contact | None] = {}
        saved = (self._next_id, replace(self.counts))
        self._journal = journal
        try:
            yield
        except StoreError:
            for contact_id, previous in reversed(journal.items()):
                self._restore(contact_id, previous)
            self._next_id, self.counts = saved
            raise
        finally:
            self._journal = None

    def _find_by_unique(self, name: str, value: str, *, archived: bool) -> Contact | None:
        self._require_unique(name)
        key = _value_key(name, value)
        if not archived:
            contact_id = self._index.get(key)
            return self._contacts[contact_id] if contact_id else None
        matches = (
            contact
            for contact in self._contacts.values()
            if contact.archived and _value_key(name, contact.properties.get(name, "")) == key
        )
        return next(matches, None)

    def _require_unique(self, name: str) -> None:
        if name not in self._unique:
            raise NotAUniqueProperty(name)

    def _validated(self, properties: Mapping[str, str]) -> Mapping[str, str]:
        for name, value in properties.items():
            if name in READ_ONLY_PROPERTIES:
                message = f'"{name}" is a read only property; its value cannot be set.'
                raise InvalidPropertyValue(name, value, "READ_ONLY_VALUE", message)
            if name == "email" and value and not _EMAIL.fullmatch(value):
                message = f"Email address {value} is invalid"
                raise InvalidPropertyValue(name, value, "INVALID_EMAIL", message)
        return properties

    def _apply(self, current: Contact, changes: Mapping[str, str]) -> Contact:
        merged = _merge(current.properties, changes)
        if merged == current.properties:
            return current
        now = self._clock()
        properties = {**merged, "lastmodifieddate": _iso(now)}
        contact = replace(current, properties=properties, updated_at=now)
        self._check_unique(contact)
        self._put(contact)
        self.counts.updates += 1
        return contact

    def _check_unique(self, contact: Contact) -> None:
        for name, value in self._unique_values(contact):
            holder = self._index.get(_value_key(name, value))
            if holder is not None and holder != contact.id:
                raise UniqueValueTaken(name, value, holder)

    def _unique_values(self, contact: Contact) -> Iterator[tuple[str, str]]:
        for name in sorted(self._unique):
            value = contact.properties.get(name)
            if value:
                yield name, value

    def _put(self, contact: Contact) -> None:
        previous = self._contacts.get(contact.id)
        if self._journal is not None:
            self._journal.setdefault(contact.id, previous)
        if previous is None:
            bisect.insort(self._ids, int(contact.id))
        else:
            self._unindex(previous)
        self._contacts[contact.id] = contact
        self._index_values(contact)

    def _restore(self, contact_id: str, previous: Contact | None) -> None:
        self._unindex(self._contacts.pop(contact_id))
        if previous is None:
            self._ids.remove(int(contact_id))
            return
        self._contacts[contact_id] = previous
        self._index_values(previous)

    def _index_values(self, contact: Contact) -> None:
        if not contact.archived:
            for name, value in self._unique_values(contact):
                self._index[_value_key(name, value)] = contact.id

    def _unindex(self, contact: Contact) -> None:
        for name, value in self._unique_values(contact):
            key = _value_key(name, value)
            if self._index.get(key) == contact.id:
                del self._index[key]


def _value_key(name: str, value: str) -> tuple[str, str]:
    return name, value.casefold() if name == "email" else value


def _merge(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """Apply property changes; an empty string clears a property, as on HubSpot."""
    merged = {**current, **changes}
    return {name: value for name, value in merged.items() if value != ""}


# --------------------------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """The limiter's verdict on one request; ``policy`` names the limit that refused it."""

    policy: str | None
    remaining: int
    daily_remaining: int


class RateLimiter:
    """HubSpot's limits: a rolling window of requests per token and a daily portal allowance.

    Refused requests count against neither; the daily allowance renews at UTC midnight.
    """

    def __init__(
        self, config: HubSpotEmulatorConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._day = _utc_now().date()
        self._daily_used = 0

    def admit(self, token: str) -> Admission:
        window = self._window(token)
        self._roll_day()
        if self._daily_used >= self._config.daily_limit:
            policy: str | None = "DAILY"
        elif len(window) >= self._config.rate_limit_max:
            policy = "TEN_SECONDLY_ROLLING"
        else:
            policy = None
            window.append(self._clock())
            self._daily_used += 1
        return Admission(
            policy,
            remaining=self._config.rate_limit_max - len(window),
            daily_remaining=self._config.daily_limit - self._daily_used,
        )

    def headers(self, admission: Admission) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Daily": str(self._config.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(admission.daily_remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(self._config.rate_limit_interval_ms),
            "X-HubSpot-RateLimit-Max": str(self._config.rate_limit_max),
            "X-HubSpot-RateLimit-Remaining": str(admission.remaining),
        }

    def _window(self, token: str) -> deque[float]:
        window = self._windows.setdefault(token, deque())
        horizon = self._clock() - self._config.rate_limit_interval_ms / 1000
        while window and window[0] <= horizon:
            window.popleft()
        return window

    def _roll_day(self) -> None:
        today = _utc_now().date()
        if today != self._day:
            self._day, self._daily_used = today, 0


# --------------------------------------------------------------------------------------------
# Emulator state and fault injection
# --------------------------------------------------------------------------------------------


class Faults(pydantic.BaseModel):
    """Failures injected into /crm requests; ``seed`` makes the error draws repeatable."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    error_rate: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    status: Literal[500, 502, 503] = 503
    latency_ms: int = pydantic.Field(default=0, ge=0)
    seed: int = 0


class EmulatorState:
    """Everything one emulator holds: contacts, rate limits, faults and request counters."""

    store: ContactStore
    limiter: RateLimiter
    faults: Faults
    random: random.Random
    requests: int
    rate_limited: int
    faults_injected: int

    def __init__(self, config: HubSpotEmulatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.store = ContactStore(self.config.unique_properties)
        self.limiter = RateLimiter(self.config)
        self.set_faults(Faults())
        self.requests = self.rate_limited = self.faults_injected = 0

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.random = random.Random(faults.seed)

    def draws_fault(self) -> bool:
        return self.faults.error_rate > 0 and self.random.random() < self.faults.error_rate

    def accepts(self, token: str) -> bool:
        required = self.config.required_token
        if required is None:
            return True
        return hmac.compare_digest(token.encode(), required.get_secret_value().encode())

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "faults_injected": self.faults_injected,
            "contacts": self.store.live_count,
            "archived": self.store.archived_count,
            "creates": self.store.counts.creates,
            "updates": self.store.counts.updates,
            "archives": self.store.counts.archives,
        }


STATE = web.AppKey("hubspot_emulator_state", EmulatorState)


# --------------------------------------------------------------------------------------------
# HTTP: request bodies, responses and errors in HubSpot's shapes
# --------------------------------------------------------------------------------------------

PropertyValue = str | int | float | bool | None


class _Body(pydantic.BaseModel):
    # HubSpot's inputs carry more than the emulator uses (associations, objectWriteTraceId...).
    model_config = pydantic.ConfigDict(extra="ignore", populate_by_name=True)


class ObjectInput(_Body):
    properties: dict[str, PropertyValue]

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


def _as_hubspot_error(error: StoreError) -> HubSpotError:
    if isinstance(error, ContactNotFound):
        by_number = error.id_property not in (None, OBJECT_ID) or error.id_value.isdigit()
        message = "resource not found" if by_number else NOT_NUMERIC_MESSAGE
        return HubSpotError(404, message, "OBJECT_NOT_FOUND", {"id": [error.id_value]})
    if isinstance(error, UniqueValueTaken) and error.name == "email":
        message = f"Contact already exists. Existing ID: {error.existing_id}"
        return HubSpotError(409, message, "CONFLICT")
    if isinstance(error, UniqueValueTaken):
        message = (
            f"Another contact already has {error.name} {error.value}."
            f" Existing ID: {error.existing_id}"
        )
        return _invalid_property(error.name, error.value, "DUPLICATE_UNIQUE_VALUE", message)
    if isinstance(error, InvalidPropertyValue):
        return _invalid_property(error.name, error.value, error.code, error.message)
    if isinstance(error, NotAUniqueProperty):
        message = f"Property {error.name} is not a unique identifier for CONTACT objects"
        return HubSpotError(400, message, context={"idProperty": [error.name]})
    raise TypeError(f"unmapped store error {error!r}")


def _invalid_property(name: str, value: str, code: str, message: str) -> HubSpotError:
    detail = {"isValid": False, "message": message, "error": code, "name": name}
    embedded = orjson.dumps([detail | {"propertyValue": value}]).decode()
    return HubSpotError(400, f"Property values were not valid: {embedded}")


def _json(status: int, body: object) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", charset="utf-8"
    )


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _rate_limited_body(policy: str, correlation_id: str) -> dict[str, str]:
    return {
        "status": "error",
        "message": RATE_POLICIES[policy],
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id,
        "policyName": policy,
        "groupName": RATE_GROUPS[policy],
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _hubspot_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What HubSpot does around every API call: auth, rate limits, headers, error bodies."""
    state = request.config_dict[STATE]
    state.requests += 1
    correlation_id = str(uuid.uuid4())
    token = _bearer_token(request)
    if token is None or not state.accepts(token):
        return HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION").response(correlation_id)
    admission = state.limiter.admit(token)
    if admission.policy is None:
        response = await _serve(request, handler, state, correlation_id)
    else:
        state.rate_limited += 1
        response = _json(429, _rate_limited_body(admission.policy, correlation_id))
    response.headers.update(state.limiter.headers(admission))
    response.headers["X-HubSpot-Correlation-Id"] = correlation_id
    return response


async def _serve(
    request: web.Request, handler: Handler, state: EmulatorState, correlation_id: str
) -> web.StreamResponse:
    if state.faults.latency_ms:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    if state.draws_fault():
        state.faults_injected += 1
        message = f"Injected fault: HTTP {state.faults.status}"
        return HubSpotError(state.faults.status, message, None).response(correlation_id)
    try:
        return await handler(request)
    except StoreError as error:
        return _as_hubspot_error(error).response(correlation_id)
    except HubSpotError as error:
        return error.response(correlation_id)


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


def _store(request: web.Request) -> ContactStore:
    return request.config_dict[STATE].store


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


def _view(contact: Contact, names: Iterable[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": contact.id,
        "properties": {name: contact.properties.get(name) for name in sorted(set(names))},
        "createdAt": _iso(contact.created_at),
        "updatedAt": _iso(contact.updated_at),
        "archived": contact.archived,
    }
    if contact.archived_at is not None:
        body["archivedAt"] = _iso(contact.archived_at)
    return body


def _read_view(contact: Contact, requested: Sequence[str]) -> dict[str, Any]:
    """Named properties (null when unset) plus the always-returned ones, or the default set."""
    return _view(contact, [*requested, *ALWAYS_RETURNED] if requested else DEFAULT_PROPERTIES)


def _written_view(contact: Contact, written: Iterable[str]) -> dict[str, Any]:
    """The properties a write set, plus those of the default set the contact has values for."""
    present = (name for name in DEFAULT_PROPERTIES if name in contact.properties)
    return _view(contact, [*written, *present])


def _batch_response(
    started: datetime, results: list[dict[str, Any]], missing: Sequence[str] = (), status: int = 200
) -> web.Response:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if missing:
        status = 207
        body["numErrors"] = 1
        body["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": BATCH_NOT_FOUND_MESSAGE,
                "context": {"ids": list(missing)},
            }
        ]
    body["startedAt"] = _iso(started)
    body["completedAt"] = _iso(_utc_now())
    return _json(status, body)


# --------------------------------------------------------------------------------------------
# HubSpot endpoints
# --------------------------------------------------------------------------------------------


async def create_contact(request: web.Request) -> web.Response:
    body = await _parse(request, ObjectInput)
    contact = _store(request).create(body.text_properties())
    return _json(201, _written_view(contact, body.properties))


async def get_contact(request: web.Request) -> web.Response:
    contact = _store(request).get(
        request.match_info["contact_id"],
        request.query.get("idProperty"),
        archived=_flag(request, "archived"),
    )
    return _json(200, _read_view(contact, _requested(request)))


async def update_contact(request: web.Request) -> web.Response:
    body = await _parse(request, ObjectInput)
    contact = _store(request).update(
        request.match_info["contact_id"], body.text_properties(), request.query.get("idProperty")
    )
    return _json(200, _written_view(contact, body.properties))


async def archive_contact(request: web.Request) -> web.Response:
    # HubSpot answers 204 whether or not the contact exists.
    with contextlib.suppress(ContactNotFound):
        _store(request).archive(request.match_info["contact_id"], request.query.get("idProperty"))
    return web.Response(status=204)


async def list_contacts(request: web.Request) -> web.Response:
    limit = min(max(_int_query(request, "limit", DEFAULT_PAGE_SIZE), 1), MAX_PAGE_SIZE)
    after = _int_query(request, "after", 0)
    contacts, next_after = _store(request).page(after, limit, archived=_flag(request, "archived"))
    requested = _requested(request)
    body: dict[str, Any] = {"results": [_read_view(contact, requested) for contact in contacts]}
    if next_after is not None:
        link = str(request.url.update_query(after=next_after))
        body["paging"] = {"next": {"after": next_after, "link": link}}
    return _json(200, body)


async def batch_create(request: web.Request) -> web.Response:
    started = _utc_now()
    batch = await _parse_batch(request, BatchCreate)
    store = _store(request)
    with store.atomic():
        results = [
            _written_view(store.create(item.text_properties()), item.properties)
            for item in batch.inputs
        ]
    return _batch_response(started, results, status=201)


async def batch_read(request: web.Request) -> web.Response:
    started = _utc_now()
    batch = await _parse_batch(request, BatchRead)
    archived = _flag(request, "archived")
    store = _store(request)
    results, missing = [], []
    for item in batch.inputs:
        try:
            contact = store.get(item.id, batch.id_property, archived=archived)
        except ContactNotFound:
            missing.append(item.id)
        else:
            results.append(_read_view(contact, batch.properties))
    return _batch_response(started, results, missing)


async def batch_update(request: web.Request) -> web.Response:
    started = _utc_now()
    batch = await _parse_batch(request, BatchUpdate)
    _reject_duplicate_ids([item.id for item in batch.inputs])
    store = _store(request)
    results, missing = [], []
    with store.atomic():
        for item in batch.inputs:
            try:
                contact = store.update(item.id, item.text_properties(), item.id_property)
            except ContactNotFound:
                missing.append(item.id)
            else:
                results.append(_written_view(contact, item.properties))
    return _batch_response(started, results, missing)


async def batch_upsert(request: web.Request) -> web.Response:
    started = _utc_now()
    batch = await _parse_batch(request, BatchUpsert)
    _reject_duplicate_ids([item.id for item in batch.inputs])
    store = _store(request)
    results = []
    with store.atomic():
        for item in batch.inputs:
            contact, created = store.upsert(item.id_property, item.id, item.text_properties())
            view = _written_view(contact, [*item.properties, item.id_property])
            results.append({**view, "new": created})
    return _batch_response(started, results)


async def batch_archive(request: web.Request) -> web.Response:
    batch = await _parse_batch(request, BatchArchive)
    store = _store(request)
    for item in batch.inputs:
        with contextlib.suppress(ContactNotFound):
            store.archive(item.id)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------
# Emulator controls (not part of HubSpot's API)
# --------------------------------------------------------------------------------------------


async def post_faults(request: web.Request) -> web.Response:
    try:
        faults = Faults.model_validate_json(await request.read())
    except pydantic.ValidationError as error:
        return _json(400, {"error": error.errors(include_url=False, include_context=False)})
    request.app[STATE].set_faults(faults)
    return _json(200, faults.model_dump())


async def get_stats(request: web.Request) -> web.Response:
    return _json(200, request.app[STATE].stats())


async def post_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.Response(status=204)


def create_app(config: HubSpotEmulatorConfig) -> web.Application:
    """The emulator as an aiohttp application, with an empty portal."""
    contacts = "/v3/objects/contacts"
    api = web.Application(middlewares=[_hubspot_gateway])
    api.add_routes(
        [
            web.get(contacts, list_contacts),
            web.post(contacts, create_contact),
            web.post(f"{contacts}/batch/create", batch_create),
            web.post(f"{contacts}/batch/read", batch_read),
            web.post(f"{contacts}/batch/update", batch_update),
            web.post(f"{contacts}/batch/upsert", batch_upsert),
            web.post(f"{contacts}/batch/archive", batch_archive),
            web.get(f"{contacts}/{{contact_id}}", get_contact),
            web.patch(f"{contacts}/{{contact_id}}", update_contact),
            web.delete(f"{contacts}/{{contact_id}}", archive_contact),
        ]
    )
    app = web.Application()
    app[STATE] = EmulatorState(config)
    app.add_subapp("/crm", api)
    app.add_routes(
        [
            web.post("/_emulator/faults", post_faults),
            web.get("/_emulator/stats", get_stats),
            web.post("/_emulator/reset", post_reset),
        ]
    )
    return app


def run(config: HubSpotEmulatorConfig, host: str = "127.0.0.1", port: int = 18080) -> None:
    """Serve the emulator until interrupted."""
    web.run_app(create_app(config), host=host, port=port, access_log=None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.hubspot", description="Serve a local HubSpot contacts API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--token", help="the only bearer token to accept (default: any)")
    parser.add_argument("--rate-max", type=int, help="requests allowed per rate-limit window")
    parser.add_argument("--rate-interval-ms", type=int, help="rate-limit window length")
    args = parser.parse_args(argv)
    settings = {
        "required_token": args.token,
        "rate_limit_max": args.rate_max,
        "rate_limit_interval_ms": args.rate_interval_ms,
    }
    config = HubSpotEmulatorConfig(**{k: v for k, v in settings.items() if v is not None})
    run(config, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
