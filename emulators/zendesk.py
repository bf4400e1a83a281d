"""Local emulator of Zendesk Support's API v2: users, organizations, job statuses and the
incremental user export.

crmsync's Zendesk adapter and its tests talk to this instead of a real Zendesk account. Every
endpoint answers under its real path with or without the ``.json`` suffix (Zendesk accepts
both), with Zendesk's bodies and errors, HTTP basic ``{email}/token:{api_token}`` or bearer
authentication, the plan's per-minute request limit (``X-Rate-Limit``, ``ratelimit-*`` headers;
429 with ``Retry-After``) and the documented endpoint limits (5 updates per minute per user,
10 incremental exports per minute), so the ``zenpy`` SDK works against it unchanged but for
its host.

Bulk writes (``users/create_or_update_many``, ``users/update_many``, ``users/destroy_many``)
answer a queued ``job_status`` at once and run a moment later, as Zendesk's background jobs do:
poll ``job_statuses/{id}`` until ``completed``; ``results`` then hold one entry per user, in
request order. Every user and organization change is sent to webhook subscribers as Zendesk's
event-subscribed webhooks (``zen:event-type:user.created``, ``user.name_changed``,
``user.active_changed`` for a soft delete, ...), signed ``X-Zendesk-Webhook-Signature`` =
base64(HMAC-SHA256(secret, timestamp + body)) with the timestamp in
``X-Zendesk-Webhook-Signature-Timestamp``.

Records are written through to a DurableStore (``--data``): a restarted emulator keeps its users,
organizations and job statuses, and runs the jobs it had queued. The private ``/_emulator``
routes (emulators.common) inject faults, report counters, subscribe webhooks and reset.

Run it with ``python -m emulators.zendesk --port 18082 --data zendesk.sqlite``.

Known simplifications: search sees a write at once (Zendesk's index lags by seconds); a user's
identities are only the email addresses it holds (Zendesk: "email" is writeable on create only;
an update adds a secondary email identity, the primary stays); phone numbers are not unique;
``locale_id`` is known only for en-US; the job limit (30 queued jobs) is not enforced.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import available_timezones

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

__all__ = ["ZendeskEmulatorConfig", "create_app", "main", "sign_webhook"]

log = logging.getLogger("crmsync.emulator.zendesk")

API = "/api/v2"
Plan = Literal["team", "growth", "professional", "enterprise", "enterprise_plus"]
#: Support and Help Center API requests per minute, by Zendesk Suite plan.
PLAN_LIMITS: dict[str, int] = {
    "team": 200,
    "growth": 400,
    "professional": 400,
    "enterprise": 700,
    "enterprise_plus": 2500,
}
MAX_BULK = 100  # users per create_or_update_many / update_many / destroy_many / show_many
MAX_PAGE_SIZE = 100
MAX_EXPORT_PAGE = 1000
NAME_MAX_LENGTH = 255  # not in the reference; Zendesk refuses longer user names
FIRST_USER_ID = 1_500_000_000_001
FIRST_ORGANIZATION_ID = 1_600_000_000_001
EVENT_VERSION = "2022-11-06"

AUTH_FAILED = {"error": "Couldn't authenticate you"}
NOT_FOUND = {"error": "RecordNotFound", "description": "Not found"}
ACCOUNT_LIMIT_TEXT = "Number of allowed API requests per minute exceeded"
EXPORT_LIMITED = {
    "error": "APIRateLimitExceeded",
    "description": "Number of allowed incremental export API requests per minute exceeded",
}
SERVER_ERRORS = {
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_QUERY_TERM = re.compile(r'(?:(\w+):)?(?:"([^"]*)"|(\S+))')
ROLES = ("end-user", "agent", "admin")
LOCALE_IDS = {"en-US": 1}
IANA_ZONES = frozenset(available_timezones())
#: Zendesk's own (Rails) names for common zones; IANA names are accepted as they are.
RAILS_ZONES = {
    "UTC": "Etc/UTC",
    "Eastern Time (US & Canada)": "America/New_York",
    "Central Time (US & Canada)": "America/Chicago",
    "Mountain Time (US & Canada)": "America/Denver",
    "Pacific Time (US & Canada)": "America/Los_Angeles",
    "London": "Europe/London",
    "Dublin": "Europe/Dublin",
    "Amsterdam": "Europe/Amsterdam",
    "Berlin": "Europe/Berlin",
    "Paris": "Europe/Paris",
    "Madrid": "Europe/Madrid",
    "Rome": "Europe/Rome",
    "Copenhagen": "Europe/Copenhagen",
    "Stockholm": "Europe/Stockholm",
    "Tokyo": "Asia/Tokyo",
    "Sydney": "Australia/Sydney",
}


class ZendeskEmulatorConfig(pydantic.BaseModel):
    """How the emulated account behaves; the defaults are a Zendesk Suite Team account's."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: None accepts any credentials; otherwise only this API token (basic or bearer).
    required_token: pydantic.SecretStr | None = None
    plan: Plan = "team"
    #: Overrides the plan's requests per window.
    rate_limit: int | None = pydantic.Field(default=None, gt=0)
    rate_window_seconds: float = pydantic.Field(default=60.0, gt=0)
    #: Update User: requests per window for one user.
    user_update_limit: int = pydantic.Field(default=5, gt=0)
    #: Incremental exports: requests per window for the account.
    export_limit: int = pydantic.Field(default=10, gt=0)
    #: How long a queued job waits before it runs.
    job_delay_seconds: float = pydantic.Field(default=0.05, ge=0)
    account_id: int = 10_000_001
    default_time_zone: str = "UTC"
    default_locale: str = "en-US"
    #: The account's user fields; None accepts any key (Zendesk drops keys it does not define).
    user_fields: tuple[str, ...] | None = None

    @property
    def requests_per_window(self) -> int:
        return self.rate_limit or PLAN_LIMITS[self.plan]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    """Zendesk's timestamp format: UTC to the second, ``Z`` suffix."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# Errors, in Zendesk's bodies
# --------------------------------------------------------------------------------------------


class ZendeskError(Exception):
    """An error response as Zendesk sends it: a JSON body (or Zendesk's plain text)."""

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any] | str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(body if isinstance(body, str) else orjson.dumps(body).decode())
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, headers=self.headers)
        return _json(self.status, self.body, self.headers)


class RecordNotFound(ZendeskError):
    def __init__(self) -> None:
        super().__init__(404, NOT_FOUND)


class RecordInvalid(ZendeskError):
    def __init__(self, details: dict[str, list[dict[str, str]]]) -> None:
        body = {"error": "RecordInvalid", "description": "Record validation errors"}
        super().__init__(422, {**body, "details": details})
        self.details = details

    def summary(self) -> str:
        return " ".join(item["description"] for items in self.details.values() for item in items)


def _bad_request(error: str, description: str) -> ZendeskError:
    return ZendeskError(400, {"error": error, "description": description})


class Problems:
    """The validation errors of one write, collected per attribute as Zendesk reports them."""

    def __init__(self) -> None:
        self.details: dict[str, list[dict[str, str]]] = {}

    def add(self, attribute: str, description: str, error: str = "InvalidValue") -> None:
        self.details.setdefault(attribute, []).append({"description": description, "error": error})

    def check(self) -> None:
        if self.details:
            raise RecordInvalid(self.details)


# --------------------------------------------------------------------------------------------
# Attribute setters: Zendesk's rules for each writable attribute
# --------------------------------------------------------------------------------------------

Setter = Callable[["Directory", dict[str, Any], Any, Problems], None]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _set_user_name(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    name = _text(value).strip()
    if not name:
        p.add("name", "Name: is too short (minimum is 1 characters)")
        return
    if len(name) > NAME_MAX_LENGTH:
        p.add("name", f"Name: is too long (maximum is {NAME_MAX_LENGTH} characters)")
        return
    user["name"] = name


def _set_email(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    """The primary email on create; on update a secondary email identity (never a removal)."""
    email = _text(value).strip()
    if not email:
        return
    if not _EMAIL.fullmatch(email):
        p.add("email", f"Email: {email} is not properly formatted")
        return
    key = email.casefold()
    if any(held.casefold() == key for held in user["_emails"]):
        return
    holder = directory.user_id_by_email(key)
    if holder is not None and holder != user["id"]:
        p.add("email", f"Email: {email} is already being used by another user", "DuplicateValue")
        return
    user["_emails"].append(email)
    if user["email"] is None:
        user["email"] = email


def _set_user_external_id(
    directory: Directory, user: dict[str, Any], value: Any, p: Problems
) -> None:
    external_id = None if _blank(value) else str(value)
    if external_id is not None:
        holder = directory.user_id_by_external_id(external_id)
        if holder is not None and holder != user["id"]:
            p.add("external_id", "External: has already been taken", "DuplicateValue")
            return
    user["external_id"] = external_id


def _set_time_zone(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    zone = directory.config.default_time_zone if _blank(value) else str(value)
    iana = RAILS_ZONES.get(zone) or (zone if zone in IANA_ZONES else None)
    if iana is None:
        p.add("time_zone", "Time zone: is not included in the list")
        return
    user["time_zone"], user["iana_time_zone"] = zone, iana


def _set_locale(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    locale = directory.config.default_locale if _blank(value) else str(value)
    if not _LOCALE.fullmatch(locale):
        p.add("locale", "Locale: is invalid")
        return
    user["locale"], user["locale_id"] = locale, LOCALE_IDS.get(locale)


def _set_organization(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    if _blank(value):
        user["organization_id"] = None
        return
    try:
        organization_id = int(value)
    except (TypeError, ValueError):
        organization_id = 0
    if not directory.has_organization(organization_id):
        p.add("organization_id", "Organization: is invalid")
        return
    user["organization_id"] = organization_id


def _set_role(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    if value not in ROLES:
        p.add("role", "Role: is not included in the list")
        return
    user["role"] = value


def _set_tags(directory: Directory, record: dict[str, Any], value: Any, p: Problems) -> None:
    if value is None:
        value = []
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        p.add("tags", "Tags: is invalid")
        return
    tags = [part for tag in value for part in _text(tag).split()]
    record["tags"] = list(dict.fromkeys(tags))


def _set_user_fields(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        p.add("user_fields", "User fields: is invalid")
        return
    defined = directory.config.user_fields
    fields = dict(user["user_fields"])
    for key, field_value in value.items():
        if defined is None or key in defined:
            fields[key] = field_value
    user["user_fields"] = fields


def _set_phone(directory: Directory, user: dict[str, Any], value: Any, p: Problems) -> None:
    user["phone"] = None if _blank(value) else str(value)


def _text_setter(attribute: str) -> Setter:
    def set_text(directory: Directory, record: dict[str, Any], value: Any, p: Problems) -> None:
        record[attribute] = _text(value)

    return set_text


def _flag_setter(attribute: str) -> Setter:
    def set_flag(directory: Directory, record: dict[str, Any], value: Any, p: Problems) -> None:
        record[attribute] = bool(value)

    return set_flag


def _value_setter(attribute: str) -> Setter:
    def set_value(directory: Directory, record: dict[str, Any], value: Any, p: Problems) -> None:
        record[attribute] = value

    return set_value


#: Writable user attributes; anything else in a request body (id, url, created_at, active,
#: identities, skip_verify_email, ...) is ignored, as Zendesk ignores it.
USER_SETTERS: dict[str, Setter] = {
    "name": _set_user_name,
    "email": _set_email,
    "external_id": _set_user_external_id,
    "phone": _set_phone,
    "time_zone": _set_time_zone,
    "locale": _set_locale,
    "organization_id": _set_organization,
    "role": _set_role,
    "tags": _set_tags,
    "user_fields": _set_user_fields,
    "alias": _text_setter("alias"),
    "details": _text_setter("details"),
    "notes": _text_setter("notes"),
    "signature": _text_setter("signature"),
    "verified": _flag_setter("verified"),
    "suspended": _flag_setter("suspended"),
    "moderator": _flag_setter("moderator"),
    "only_private_comments": _flag_setter("only_private_comments"),
    "shared_phone_number": _value_setter("shared_phone_number"),
    "ticket_restriction": _value_setter("ticket_restriction"),
    "default_group_id": _value_setter("default_group_id"),
    "custom_role_id": _value_setter("custom_role_id"),
}

#: User attributes whose change Zendesk announces as `user.<event>` with current/previous.
USER_CHANGE_EVENTS = (
    ("name", "user.name_changed"),
    ("external_id", "user.external_id_changed"),
    ("time_zone", "user.time_zone_changed"),
    ("alias", "user.alias_changed"),
    ("notes", "user.notes_changed"),
    ("details", "user.details_changed"),
    ("role", "user.role_changed"),
    ("suspended", "user.suspended_changed"),
    ("tags", "user.tags_changed"),
)


def _set_organization_name(
    directory: Directory, organization: dict[str, Any], value: Any, p: Problems
) -> None:
    name = _text(value).strip()
    if not name:
        p.add("name", "Name: cannot be blank", "BlankValue")
        return
    holder = directory.organization_id_by_name(name)
    if holder is not None and holder != organization["id"]:
        p.add("name", "Name: has already been taken", "DuplicateValue")
        return
    organization["name"] = name


def _set_organization_external_id(
    directory: Directory, organization: dict[str, Any], value: Any, p: Problems
) -> None:
    external_id = None if _blank(value) else str(value)
    if external_id is not None:
        holder = directory.organization_id_by_external_id(external_id)
        if holder is not None and holder != organization["id"]:
            p.add("external_id", "External: has already been taken", "DuplicateValue")
            return
    organization["external_id"] = external_id


def _set_organization_fields(
    directory: Directory, organization: dict[str, Any], value: Any, p: Problems
) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        p.add("organization_fields", "Organization fields: is invalid")
        return
    organization["organization_fields"] = {**organization["organization_fields"], **value}


def _set_domain_names(
    directory: Directory, organization: dict[str, Any], value: Any, p: Problems
) -> None:
    if value is None:
        value = []
    if not isinstance(value, list):
        p.add("domain_names", "Domain names: is invalid")
        return
    organization["domain_names"] = [_text(domain) for domain in value]


ORGANIZATION_SETTERS: dict[str, Setter] = {
    "name": _set_organization_name,
    "external_id": _set_organization_external_id,
    "organization_fields": _set_organization_fields,
    "domain_names": _set_domain_names,
    "tags": _set_tags,
    "details": _text_setter("details"),
    "notes": _text_setter("notes"),
    "group_id": _value_setter("group_id"),
    "shared_tickets": _flag_setter("shared_tickets"),
    "shared_comments": _flag_setter("shared_comments"),
}

ORGANIZATION_CHANGE_EVENTS = (
    ("name", "organization.name_changed"),
    ("external_id", "organization.external_id_changed"),
    ("tags", "organization.tags_changed"),
)


def _copy(value: Any) -> Any:
    """A copy of one attribute deep enough that editing the copy leaves the original alone."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _edited(
    directory: Directory, current: dict[str, Any], changes: Any, setters: Mapping[str, Setter]
) -> dict[str, Any]:
    """`current` with `changes` applied, or RecordInvalid naming every attribute at fault."""
    if not isinstance(changes, Mapping):
        raise RecordInvalid({"base": [{"description": "is invalid", "error": "InvalidValue"}]})
    record = {key: _copy(value) for key, value in current.items()}
    problems = Problems()
    if current["id"] is None and "name" not in changes:
        setters["name"](directory, record, None, problems)
    for attribute, value in changes.items():
        setter = setters.get(attribute)
        if setter is not None:
            setter(directory, record, value, problems)
    problems.check()
    return record


# --------------------------------------------------------------------------------------------
# Directory: users and organizations with Zendesk's identity rules, free of HTTP
# --------------------------------------------------------------------------------------------


class Directory:
    """The account's users and organizations, in memory and written through to the store.

    A live user's email addresses and external id each belong to it alone (compared without
    case); a deleted user (``active: false``, still readable) releases them. Every write takes
    the next value of one durable change sequence, which orders the incremental export.
    """

    USERS = "users"
    ORGANIZATIONS = "organizations"

    def __init__(
        self,
        store: DurableStore,
        config: ZendeskEmulatorConfig,
        publish: Callable[[dict[str, Any]], None],
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.config = config
        self._store = store
        self._publish = publish
        self._clock = clock
        self._users: dict[int, dict[str, Any]] = {}
        self._emails: dict[str, int] = {}  # casefolded email -> live user id
        self._user_externals: dict[str, int] = {}  # casefolded external id -> live user id
        self._organizations: dict[int, dict[str, Any]] = {}
        self.creates = self.updates = self.deletes = 0
        for _, user in store.load(self.USERS):
            self._put_user(user, persist=False)
        for _, organization in store.load(self.ORGANIZATIONS):
            self._organizations[organization["id"]] = organization

    # ---- lookups -------------------------------------------------------------------------

    def user_id_by_email(self, email: str) -> int | None:
        return self._emails.get(email.casefold())

    def user_id_by_external_id(self, external_id: str) -> int | None:
        return self._user_externals.get(external_id.casefold())

    def has_organization(self, organization_id: int) -> bool:
        return organization_id in self._organizations

    def organization_id_by_name(self, name: str) -> int | None:
        key = name.casefold()
        matches = (o["id"] for o in self._organizations.values() if o["name"].casefold() == key)
        return next(matches, None)

    def organization_id_by_external_id(self, external_id: str) -> int | None:
        key = external_id.casefold()
        matches = (
            o["id"]
            for o in self._organizations.values()
            if (o["external_id"] or "").casefold() == key
        )
        return next(matches, None)

    def user(self, user_id: int) -> dict[str, Any]:
        """The user, deleted or not."""
        user = self._users.get(user_id)
        if user is None:
            raise RecordNotFound()
        return user

    def find_user(self, user_id: int) -> dict[str, Any] | None:
        return self._users.get(user_id)

    def live_user(self, user_id: int) -> dict[str, Any]:
        user = self.user(user_id)
        if not user["active"]:
            raise RecordNotFound()
        return user

    def live_users(self) -> list[dict[str, Any]]:
        return [user for _, user in sorted(self._users.items()) if user["active"]]

    def users_by_external_id(self, external_id: str) -> list[dict[str, Any]]:
        user_id = self.user_id_by_external_id(external_id)
        return [] if user_id is None else [self._users[user_id]]

    def match_user(self, attributes: Any) -> dict[str, Any] | None:
        """The live user a create-or-update names: by external id, else by email."""
        if not isinstance(attributes, Mapping):
            return None
        user_id = None
        if not _blank(attributes.get("external_id")):
            user_id = self.user_id_by_external_id(str(attributes["external_id"]))
        if user_id is None and not _blank(attributes.get("email")):
            user_id = self.user_id_by_email(str(attributes["email"]).strip())
        return None if user_id is None else self._users[user_id]

    def search_users(self, query: str) -> list[dict[str, Any]]:
        terms = [
            (key.casefold() if key else None, (quoted or bare).casefold())
            for key, quoted, bare in _QUERY_TERM.findall(query)
        ]
        return [user for user in self.live_users() if all(_matches(user, t) for t in terms)]

    def export_users(
        self, after: int | None, start_time: int, limit: int
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """Users changed after sequence `after` (or since `start_time`), oldest change first,
        deleted ones included; returns the page, the sequence to resume after, and whether
        nothing more is waiting."""
        changed = sorted(
            (
                user
                for user in self._users.values()
                if (user["_seq"] > after if after is not None else user["_updated"] >= start_time)
            ),
            key=lambda user: user["_seq"],
        )
        page = changed[:limit]
        if page:
            resume = page[-1]["_seq"]
        elif after is not None:
            resume = after
        else:
            resume = max((user["_seq"] for user in self._users.values()), default=0)
        return page, resume, len(changed) <= limit

    def organization(self, organization_id: int) -> dict[str, Any]:
        organization = self._organizations.get(organization_id)
        if organization is None:
            raise RecordNotFound()
        return organization

    def organizations(self) -> list[dict[str, Any]]:
        return [organization for _, organization in sorted(self._organizations.items())]

    @property
    def counts(self) -> dict[str, int]:
        live = sum(user["active"] for user in self._users.values())
        return {
            "users": live,
            "deleted_users": len(self._users) - live,
            "organizations": len(self._organizations),
        }

    # ---- user writes ---------------------------------------------------------------------

    def create_user(self, attributes: Any) -> dict[str, Any]:
        now = self._clock()
        user = _edited(self, self._new_user(now), attributes, USER_SETTERS)
        user["id"] = self._store.next_value("user_id", FIRST_USER_ID)
        self._write_user(user, now)
        self.creates += 1
        self._announce_user("user.created", user, {})
        return user

    def update_user(self, user_id: int, attributes: Any) -> dict[str, Any]:
        current = self.live_user(user_id)
        user = _edited(self, current, attributes, USER_SETTERS)
        if user == current:
            return current
        self._write_user(user, self._clock())
        self.updates += 1
        for kind, event in _user_changes(current, user):
            self._announce_user(kind, user, event)
        return user

    def create_or_update_user(self, attributes: Any) -> tuple[dict[str, Any], bool]:
        """Update the live user the attributes name (external id, else email), or create one;
        returns the user and whether it was created."""
        match = self.match_user(attributes)
        if match is None:
            return self.create_user(attributes), True
        return self.update_user(match["id"], attributes), False

    def delete_user(self, user_id: int) -> dict[str, Any]:
        """Soft delete: the user stays readable with ``active: false``."""
        user = {**self.live_user(user_id), "active": False}
        self._write_user(user, self._clock())
        self.deletes += 1
        self._announce_user("user.active_changed", user, {"current": False, "previous": True})
        return user

    def _new_user(self, now: datetime) -> dict[str, Any]:
        stamp = _stamp(now)
        user: dict[str, Any] = {
            "id": None,
            "name": "",
            "email": None,
            "created_at": stamp,
            "updated_at": stamp,
            "time_zone": None,
            "iana_time_zone": None,
            "phone": None,
            "shared_phone_number": None,
            "photo": None,
            "locale_id": None,
            "locale": None,
            "organization_id": None,
            "role": "end-user",
            "verified": False,
            "external_id": None,
            "tags": [],
            "alias": "",
            "active": True,
            "shared": False,
            "shared_agent": False,
            "last_login_at": None,
            "two_factor_auth_enabled": False,
            "signature": "",
            "details": "",
            "notes": "",
            "role_type": None,
            "custom_role_id": None,
            "moderator": False,
            "ticket_restriction": "requested",
            "only_private_comments": False,
            "restricted_agent": True,
            "suspended": False,
            "default_group_id": None,
            "report_csv": False,
            "user_fields": dict.fromkeys(self.config.user_fields or ()),
            "_emails": [],
            "_seq": 0,
            "_updated": 0,
        }
        problems = Problems()
        _set_time_zone(self, user, None, problems)
        _set_locale(self, user, None, problems)
        return user

    def _write_user(self, user: dict[str, Any], now: datetime) -> None:
        user["updated_at"] = _stamp(now)
        user["_updated"] = int(now.timestamp())
        user["_seq"] = self._store.next_value("change_seq", 1)
        self._put_user(user)

    def _put_user(self, user: dict[str, Any], persist: bool = True) -> None:
        previous = self._users.get(user["id"])
        if previous is not None:
            for key in [*(e.casefold() for e in previous["_emails"])]:
                if self._emails.get(key) == previous["id"]:
                    del self._emails[key]
            external = (previous["external_id"] or "").casefold()
            if external and self._user_externals.get(external) == previous["id"]:
                del self._user_externals[external]
        self._users[user["id"]] = user
        if user["active"]:
            for email in user["_emails"]:
                self._emails[email.casefold()] = user["id"]
            if user["external_id"]:
                self._user_externals[user["external_id"].casefold()] = user["id"]
        if persist:
            self._store.put(self.USERS, str(user["id"]), user)

    def _announce_user(self, kind: str, user: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        detail = {
            "created_at": user["created_at"],
            "email": user["email"],
            "external_id": user["external_id"] or "",
            "default_group_id": str(user["default_group_id"] or 0),
            "id": str(user["id"]),
            "organization_id": str(user["organization_id"] or 0),
            "role": user["role"],
            "updated_at": user["updated_at"],
        }
        self._publish(self._envelope(kind, f"zen:user:{user['id']}", detail, event))

    # ---- organization writes -------------------------------------------------------------

    def create_organization(self, attributes: Any) -> dict[str, Any]:
        now = self._clock()
        organization = _edited(self, self._new_organization(now), attributes, ORGANIZATION_SETTERS)
        organization["id"] = self._store.next_value("organization_id", FIRST_ORGANIZATION_ID)
        self._write_organization(organization, now)
        self._announce_organization("organization.created", organization, {})
        return organization

    def update_organization(self, organization_id: int, attributes: Any) -> dict[str, Any]:
        current = self.organization(organization_id)
        organization = _edited(self, current, attributes, ORGANIZATION_SETTERS)
        if organization == current:
            return current
        self._write_organization(organization, self._clock())
        for attribute, kind in ORGANIZATION_CHANGE_EVENTS:
            if organization[attribute] != current[attribute]:
                event = {"current": organization[attribute], "previous": current[attribute]}
                self._announce_organization(kind, organization, event)
        return organization

    def create_or_update_organization(self, attributes: Any) -> tuple[dict[str, Any], bool]:
        """Update the organization the attributes name (id, else external id), or create one."""
        match_id = None
        if isinstance(attributes, Mapping):
            if isinstance(attributes.get("id"), int) and self.has_organization(attributes["id"]):
                match_id = attributes["id"]
            elif not _blank(attributes.get("external_id")):
                match_id = self.organization_id_by_external_id(str(attributes["external_id"]))
        if match_id is None:
            return self.create_organization(attributes), True
        return self.update_organization(match_id, attributes), False

    def delete_organization(self, organization_id: int) -> None:
        """Hard delete; the organization's users lose their membership."""
        organization = self.organization(organization_id)
        del self._organizations[organization_id]
        self._store.delete(self.ORGANIZATIONS, str(organization_id))
        now = self._clock()
        for user in list(self._users.values()):
            if user["organization_id"] == organization_id:
                self._write_user({**user, "organization_id": None}, now)
        self._announce_organization("organization.deleted", organization, {})

    def _new_organization(self, now: datetime) -> dict[str, Any]:
        stamp = _stamp(now)
        return {
            "id": None,
            "name": "",
            "shared_tickets": False,
            "shared_comments": False,
            "external_id": None,
            "created_at": stamp,
            "updated_at": stamp,
            "domain_names": [],
            "details": "",
            "notes": "",
            "group_id": None,
            "tags": [],
            "organization_fields": {},
        }

    def _write_organization(self, organization: dict[str, Any], now: datetime) -> None:
        organization["updated_at"] = _stamp(now)
        self._organizations[organization["id"]] = organization
        self._store.put(self.ORGANIZATIONS, str(organization["id"]), organization)

    def _announce_organization(
        self, kind: str, organization: Mapping[str, Any], event: Mapping[str, Any]
    ) -> None:
        detail = {
            "created_at": organization["created_at"],
            "external_id": organization["external_id"] or "",
            "group_id": str(organization["group_id"] or 0),
            "id": str(organization["id"]),
            "name": organization["name"],
            "shared_comments": organization["shared_comments"],
            "shared_tickets": organization["shared_tickets"],
            "updated_at": organization["updated_at"],
        }
        subject = f"zen:organization:{organization['id']}"
        self._publish(self._envelope(kind, subject, detail, event))

    def _envelope(
        self, kind: str, subject: str, detail: Mapping[str, Any], event: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {
            "type": f"zen:event-type:{kind}",
            "account_id": self.config.account_id,
            "id": str(uuid.uuid4()),
            "time": _stamp(self._clock()),
            "zendesk_event_version": EVENT_VERSION,
            "subject": subject,
            "detail": dict(detail),
            "event": dict(event),
        }


def _user_changes(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """The user events one update raises, in Zendesk's event types."""
    for attribute, kind in USER_CHANGE_EVENTS:
        if before[attribute] != after[attribute]:
            yield kind, {"current": after[attribute], "previous": before[attribute]}
    for email in after["_emails"][len(before["_emails"]) :]:
        yield (
            "user.identity_created",
            {
                "type": "email",
                "value": email,
                "primary": email == after["email"],
            },
        )
    yield from _identity_change("phone_number", before["phone"], after["phone"])
    if before["organization_id"] != after["organization_id"]:
        if before["organization_id"] is not None:
            event = {"organization_id": str(before["organization_id"])}
            yield "user.organization_membership_deleted", event
        if after["organization_id"] is not None:
            event = {"organization_id": str(after["organization_id"])}
            yield "user.organization_membership_created", event
    fields_before, fields_after = before["user_fields"], after["user_fields"]
    for key in sorted(set(fields_before) | set(fields_after)):
        if fields_before.get(key) != fields_after.get(key):
            yield (
                "user.custom_field_changed",
                {
                    "current": fields_after.get(key),
                    "previous": fields_before.get(key),
                    "field": {"key": key},
                },
            )


def _identity_change(
    kind: str, before: str | None, after: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    if before == after:
        return
    current = None if after is None else {"type": kind, "value": after}
    previous = None if before is None else {"type": kind, "value": before}
    if previous is None:
        yield "user.identity_created", dict(current or {})
    elif current is None:
        yield "user.identity_deleted", previous
    else:
        yield "user.identity_changed", {"current": current, "previous": previous}


def _matches(user: Mapping[str, Any], term: tuple[str | None, str]) -> bool:
    """One term of a user search: ``key:value`` on an attribute, or free text."""
    key, value = term
    emails = [email.casefold() for email in user["_emails"]]
    if key == "email":
        if value.endswith("*"):
            return any(email.startswith(value[:-1]) for email in emails)
        return value in emails
    if key == "external_id":
        return (user["external_id"] or "").casefold() == value
    if key in ("name", "phone", "role"):
        return value in _text(user[key]).casefold()
    if key in ("tags", "tag"):
        return value in (tag.casefold() for tag in user["tags"])
    if key == "type":
        return value == "user"
    if key is not None:
        return False
    haystack = [user["name"], *emails, user["phone"], user["external_id"]]
    return any(value in _text(text).casefold() for text in haystack)


def public_view(record: Mapping[str, Any], url: str) -> dict[str, Any]:
    """A record as the API shows it: id, url, then its attributes; internal keys dropped."""
    body = {"id": record["id"], "url": url}
    body.update((key, value) for key, value in record.items() if key[0] != "_" and key != "id")
    return body


# --------------------------------------------------------------------------------------------
# Background jobs
# --------------------------------------------------------------------------------------------


class JobQueue:
    """Zendesk's background jobs: queued at once, run a moment later, results kept.

    Job statuses are durable; a job still queued or working when the emulator stopped runs
    again from the start when it restarts (every step is an idempotent upsert or delete).
    """

    COLLECTION = "job_statuses"

    def __init__(
        self,
        store: DurableStore,
        directory: Directory,
        delay: float,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._directory = directory
        self._delay = delay
        self._clock = clock
        self._jobs: dict[str, dict[str, Any]] = dict(store.load(self.COLLECTION))
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        return sum(job["status"] in ("queued", "working") for job in self._jobs.values())

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._jobs.get(job_id)

    def recent(self, limit: int = MAX_PAGE_SIZE) -> list[dict[str, Any]]:
        jobs = sorted(self._jobs.values(), key=lambda job: job["_queued_at"], reverse=True)
        return jobs[:limit]

    def submit(self, kind: str, items: Sequence[Any]) -> dict[str, Any]:
        job = {
            "id": uuid.uuid4().hex,
            "total": len(items),
            "progress": None,
            "status": "queued",
            "message": None,
            "results": None,
            "_kind": kind,
            "_items": list(items),
            "_queued_at": self._clock().isoformat(),
        }
        self._save(job)
        self._schedule(job["id"])
        return job

    async def start(self, _app: web.Application | None = None) -> None:
        for job_id, job in self._jobs.items():
            if job["status"] in ("queued", "working"):
                self._schedule(job_id)

    async def stop(self, _app: web.Application | None = None) -> None:
        tasks = list(self._tasks.values())
        self.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cancel(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    def _schedule(self, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job_id))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _run(self, job_id: str) -> None:
        await asyncio.sleep(self._delay)
        job = self._jobs[job_id]
        job.update(status="working", progress=0)
        self._save(job)
        results = []
        try:
            for index, item in enumerate(job["_items"]):
                results.append(self._perform(job["_kind"], index, item))
                job["progress"] = index + 1
                await asyncio.sleep(0)  # let requests in between, as a worker would
        except Exception as error:  # a bug in the emulator, not a refused record
            log.exception("job %s failed", job_id)
            job.update(status="failed", message=f"Failed: {error}")
        else:
            message = f"Completed at {self._clock():%Y-%m-%d %H:%M:%S} +0000"
            job.update(status="completed", message=message, results=results)
        self._save(job)

    def _perform(self, kind: str, index: int, item: Any) -> dict[str, Any]:
        if kind == "create_or_update_users":
            return self._upsert(index, item)
        if kind == "update_users":
            return self._update(item)
        return self._destroy(item)

    def _upsert(self, index: int, attributes: Any) -> dict[str, Any]:
        directory = self._directory
        action = "create" if directory.match_user(attributes) is None else "update"
        try:
            user, created = directory.create_or_update_user(attributes)
        except RecordInvalid as error:
            # Zendesk puts the index where a failed result's id would be.
            return {
                "id": index,
                "index": index,
                "action": action,
                "status": "Failed",
                "success": False,
                "error": "UserUpdateError",
                "details": error.summary(),
            }
        result: dict[str, Any] = {
            "id": user["id"],
            "index": index,
            "action": "create" if created else "update",
            "status": "Created" if created else "Updated",
            "success": True,
        }
        if user["email"]:
            result["email"] = user["email"]
        if user["external_id"]:
            result["external_id"] = user["external_id"]
        return result

    def _update(self, attributes: Any) -> dict[str, Any]:
        """One user of an update_many: the live user its ``id`` names, else its
        ``external_id``; never creates one."""
        directory = self._directory
        changes = dict(attributes) if isinstance(attributes, Mapping) else {}
        user_id = changes.pop("id", None)
        if user_id is None and not _blank(changes.get("external_id")):
            user_id = directory.user_id_by_external_id(str(changes["external_id"]))
        failed = {"id": user_id, "action": "update", "status": "Failed", "success": False}
        try:
            if user_id is None or not str(user_id).isdigit():
                raise RecordNotFound()
            user = directory.update_user(int(user_id), changes)
        except RecordNotFound:
            return {**failed, "error": "RecordNotFound", "details": "Not found"}
        except RecordInvalid as error:
            return {**failed, "error": "UserUpdateError", "details": error.summary()}
        return {"id": user["id"], "action": "update", "status": "Updated", "success": True}

    def _destroy(self, item: Mapping[str, Any]) -> dict[str, Any]:
        directory = self._directory
        user_id = item.get("id")
        if "external_id" in item:
            user_id = directory.user_id_by_external_id(item["external_id"])
        try:
            if user_id is None:
                raise RecordNotFound()
            directory.delete_user(user_id)
        except RecordNotFound:
            return {
                **item,
                "action": "delete",
                "status": "Failed",
                "success": False,
                "error": "RecordNotFound",
                "details": "Not found",
            }
        return {"action": "delete", "id": user_id, "status": "Deleted", "success": True}

    def _save(self, job: dict[str, Any]) -> None:
        self._jobs[job["id"]] = job
        self._store.put(self.COLLECTION, job["id"], job)


def job_view(job: Mapping[str, Any], base: str) -> dict[str, Any]:
    return {
        "id": job["id"],
        "url": f"{base}{API}/job_statuses/{job['id']}.json",
        "total": job["total"],
        "progress": job["progress"],
        "status": job["status"],
        "message": job["message"],
        "results": job["results"],
    }


# --------------------------------------------------------------------------------------------
# Webhook signatures
# --------------------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def webhook_id(url: str) -> str:
    """A stable ULID-shaped id for the webhook delivering to `url`, as Zendesk names webhooks."""
    number = int.from_bytes(hashlib.sha256(url.encode()).digest()[:17], "big") >> 6
    return "".join(_CROCKFORD[(number >> (5 * i)) & 31] for i in reversed(range(26)))


def sign_webhook(body: bytes, url: str, secret: str) -> dict[str, str]:
    """Zendesk's signing scheme: base64(HMAC-SHA256(secret, timestamp + body))."""
    timestamp = _stamp(_utc_now())
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "User-Agent": "Zendesk Webhook",
        "X-Zendesk-Webhook-Id": webhook_id(url),
        "X-Zendesk-Webhook-Invocation-Id": str(secrets.randbelow(10**18)),
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }


# --------------------------------------------------------------------------------------------
# Emulator state
# --------------------------------------------------------------------------------------------


class ZendeskState:
    """Everything one emulated account holds: records, jobs, quotas, faults and webhooks."""

    directory: Directory
    jobs: JobQueue
    limiter: SlidingWindowLimiter
    user_update_limiter: SlidingWindowLimiter
    export_limiter: SlidingWindowLimiter

    def __init__(self, config: ZendeskEmulatorConfig, store: DurableStore) -> None:
        self.config = config
        self.store = store
        self.faults = FaultInjector()
        self.webhooks = WebhookEmitter(store, sign_webhook)
        self._build()

    def _build(self) -> None:
        config = self.config
        window = config.rate_window_seconds
        self.directory = Directory(self.store, config, self.webhooks.emit)
        self.jobs = JobQueue(self.store, self.directory, config.job_delay_seconds)
        self.limiter = SlidingWindowLimiter(config.requests_per_window, window)
        self.user_update_limiter = SlidingWindowLimiter(config.user_update_limit, window)
        self.export_limiter = SlidingWindowLimiter(config.export_limit, window)
        self.requests = self.rate_limited = 0

    def accepts(self, authorization: str | None) -> bool:
        credential = _credential(authorization)
        if credential is None:
            return False
        kind, secret = credential
        required = self.config.required_token
        if required is None:
            return True
        return kind != "password" and hmac.compare_digest(
            secret.encode(), required.get_secret_value().encode()
        )

    def stats(self) -> dict[str, Any]:
        directory = self.directory
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "creates": directory.creates,
            "updates": directory.updates,
            "deletes": directory.deletes,
            "archives": directory.deletes,
            **directory.counts,
            "jobs": len(self.jobs),
            "jobs_pending": self.jobs.pending,
        }

    def reset(self) -> None:
        self.jobs.cancel()
        self.store.clear()
        self._build()


STATE = web.AppKey("zendesk_state", ZendeskState)


def _credential(authorization: str | None) -> tuple[str, str] | None:
    """("token" | "bearer" | "password", secret) from an Authorization header."""
    scheme, _, value = (authorization or "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return ("bearer", value) if value else None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, separator, secret = decoded.partition(":")
    if not separator or not login or not secret:
        return None
    return ("token" if login.endswith("/token") else "password", secret)


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _rate_headers(admission: Admission) -> dict[str, str]:
    reset = str(max(0, math.ceil(admission.reset_after)))
    return {
        "X-Rate-Limit": str(admission.limit),
        "X-Rate-Limit-Remaining": str(admission.remaining),
        "ratelimit-limit": str(admission.limit),
        "ratelimit-remaining": str(admission.remaining),
        "ratelimit-reset": reset,
    }


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _zendesk_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What Zendesk does around every API call: faults, auth, the account's rate limit."""
    if request.path.startswith("/_emulator"):
        return await handler(request)
    state = request.config_dict[STATE]
    state.requests += 1
    fault = await state.faults.draw()
    if fault == "outage":
        return outage_response()
    if not state.accepts(request.headers.get("Authorization")):
        return _json(401, AUTH_FAILED, {"WWW-Authenticate": 'Basic realm="Web Password"'})
    if fault == "throttle":
        state.rate_limited += 1
        return web.Response(status=429, text=ACCOUNT_LIMIT_TEXT, headers=_retry_after(1))
    admission = state.limiter.admit()
    if not admission.allowed:
        state.rate_limited += 1
        response: web.StreamResponse = web.Response(
            status=429, text=ACCOUNT_LIMIT_TEXT, headers=_retry_after(admission.reset_after)
        )
    elif fault == "error":
        status = state.faults.faults.error_status
        name = SERVER_ERRORS[status]
        response = _json(status, {"error": name, "description": f"Injected fault: HTTP {status}"})
    else:
        response = await _serve(request, handler)
    response.headers.update(_rate_headers(admission))
    response.headers["X-Zendesk-API-Version"] = "v2"
    return response


async def _serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ZendeskError as error:
        if error.status == 429:
            request.config_dict[STATE].rate_limited += 1
        return error.response()
    except web.HTTPNotFound:
        return _json(404, {"error": "InvalidEndpoint", "description": "Not found"})
    except web.HTTPMethodNotAllowed as error:
        return _json(405, {"error": "MethodNotAllowed", "description": str(error.reason)})


def _state(request: web.Request) -> ZendeskState:
    return request.config_dict[STATE]


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _user_url(request: web.Request, user_id: int) -> str:
    return f"{_base(request)}{API}/users/{user_id}.json"


def _user_view(request: web.Request, user: Mapping[str, Any]) -> dict[str, Any]:
    return public_view(user, _user_url(request, user["id"]))


def _organization_view(request: web.Request, organization: Mapping[str, Any]) -> dict[str, Any]:
    url = f"{_base(request)}{API}/organizations/{organization['id']}.json"
    return public_view(organization, url)


async def _document(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as error:
        raise _bad_request("InvalidJSON", f"Invalid JSON: {error}") from error


async def _body(request: web.Request, key: str) -> Any:
    """The request body's `key` member, as Zendesk requires every write to wrap its record."""
    document = await _document(request)
    if not isinstance(document, dict) or document.get(key) is None:
        raise _bad_request("ParameterMissing", f"param is missing or the value is empty: {key}")
    return document[key]


def _id(request: web.Request, name: str) -> int:
    return int(request.match_info[name])


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _bad_request("InvalidPaginationParameter", f"{name} must be an integer") from None


def _list_query(request: web.Request, name: str) -> list[str] | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    values = [value.strip() for value in raw.split(",") if value.strip()]
    if len(values) > MAX_BULK:
        raise _bad_request(
            "TooManyValues", f"Too many values specified for parameter: {name} (max {MAX_BULK})"
        )
    return values


def _encode_cursor(record_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{record_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = text.partition(":")
        if prefix != "id":
            raise ValueError(text)
        return int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _bad_request("InvalidPaginationParameter", "invalid cursor") from None


def _page(
    request: web.Request,
    key: str,
    records: list[dict[str, Any]],
    view: Callable[[web.Request, Mapping[str, Any]], dict[str, Any]],
) -> web.Response:
    """A list in Zendesk's cursor pagination (any ``page[...]`` parameter) or offset pagination."""
    if any(name.startswith("page[") for name in request.query):
        return _cursor_page(request, key, records, view)
    page = _int_query(request, "page", 1)
    per_page = min(_int_query(request, "per_page", MAX_PAGE_SIZE), MAX_PAGE_SIZE)
    if page < 1 or per_page < 1:
        raise _bad_request("InvalidPaginationParameter", "page and per_page must be positive")
    start = (page - 1) * per_page
    chosen = records[start : start + per_page]
    base = f"{_base(request)}{request.path}"
    more = start + per_page < len(records)
    body = {
        key: [view(request, record) for record in chosen],
        "next_page": f"{base}?page={page + 1}&per_page={per_page}" if more else None,
        "previous_page": f"{base}?page={page - 1}&per_page={per_page}" if page > 1 else None,
        "count": len(records),
    }
    return _json(200, body)


def _cursor_page(
    request: web.Request,
    key: str,
    records: list[dict[str, Any]],
    view: Callable[[web.Request, Mapping[str, Any]], dict[str, Any]],
) -> web.Response:
    size = _int_query(request, "page[size]", MAX_PAGE_SIZE)
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise _bad_request("InvalidPaginationParameter", f"page[size] must be 1..{MAX_PAGE_SIZE}")
    after, before = request.query.get("page[after]"), request.query.get("page[before]")
    if before is not None:
        bound = _decode_cursor(before)
        window = [record for record in records if record["id"] < bound]
        chosen, has_more = window[-size:], len(window) > size
        more_after, more_before = True, has_more
    else:
        bound = _decode_cursor(after) if after is not None else None
        window = [record for record in records if bound is None or record["id"] > bound]
        chosen, has_more = window[:size], len(window) > size
        more_after, more_before = has_more, bound is not None
    after_cursor = _encode_cursor(chosen[-1]["id"]) if chosen else None
    before_cursor = _encode_cursor(chosen[0]["id"]) if chosen else None
    base = f"{_base(request)}{request.path}"
    body = {
        key: [view(request, record) for record in chosen],
        "meta": {
            "has_more": has_more,
            "after_cursor": after_cursor,
            "before_cursor": before_cursor,
        },
        "links": {
            "next": f"{base}?page%5Bafter%5D={after_cursor}&page%5Bsize%5D={size}"
            if after_cursor and more_after else None,
            "prev": f"{base}?page%5Bbefore%5D={before_cursor}&page%5Bsize%5D={size}"
            if before_cursor and more_before else None,
        },
    }  # fmt: skip
    return _json(200, body)


def _listing(request: web.Request, key: str, users: list[dict[str, Any]]) -> web.Response:
    """An offset-paginated user list that fits one page (show_many, search)."""
    body = {
        key: [_user_view(request, user) for user in users],
        "next_page": None,
        "previous_page": None,
        "count": len(users),
    }
    return _json(200, body)


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.Response:
    user = _state(request).directory.create_user(await _body(request, "user"))
    location = {"Location": _user_url(request, user["id"])}
    return _json(201, {"user": _user_view(request, user)}, location)


async def show_user(request: web.Request) -> web.Response:
    user = _state(request).directory.user(_id(request, "user_id"))
    return _json(200, {"user": _user_view(request, user)})


def _admit_user_update(state: ZendeskState, user: Mapping[str, Any]) -> None:
    """Zendesk's Update User limit: a few updates per minute to one user."""
    admission = state.user_update_limiter.admit(str(user["id"]))
    if not admission.allowed:
        text = (
            "You have exceeded the rate limit for updating a single unique user."
            f" user email: {user['email'] or ''} id: {user['id']}"
            f" external_id: {user['external_id'] or ''}"
        )
        raise ZendeskError(429, text, _retry_after(admission.reset_after))


async def update_user(request: web.Request) -> web.Response:
    state = _state(request)
    attributes = await _body(request, "user")
    current = state.directory.live_user(_id(request, "user_id"))
    _admit_user_update(state, current)
    user = state.directory.update_user(current["id"], attributes)
    return _json(200, {"user": _user_view(request, user)})


async def delete_user(request: web.Request) -> web.Response:
    user = _state(request).directory.delete_user(_id(request, "user_id"))
    return _json(200, {"user": _user_view(request, user)})


async def create_or_update_user(request: web.Request) -> web.Response:
    """201 when the user was created, 200 when an existing one (external id, else email) was
    updated; both with a Location header."""
    state = _state(request)
    attributes = await _body(request, "user")
    match = state.directory.match_user(attributes)
    if match is not None:
        _admit_user_update(state, match)
    user, created = state.directory.create_or_update_user(attributes)
    location = {"Location": _user_url(request, user["id"])}
    return _json(201 if created else 200, {"user": _user_view(request, user)}, location)


async def create_or_update_many_users(request: web.Request) -> web.Response:
    users = await _body(request, "users")
    if not isinstance(users, list):
        raise _bad_request("InvalidValue", "users must be an array")
    if len(users) > MAX_BULK:
        description = f"Too many values specified for parameter: users (max {MAX_BULK})"
        raise _bad_request("TooManyValues", description)
    job = _state(request).jobs.submit("create_or_update_users", users)
    return _json(200, {"job_status": job_view(job, _base(request))})


async def update_many_users(request: web.Request) -> web.Response:
    """Batch update (``users``: each user named by its ``id``, else its ``external_id``) or
    bulk update (``user``: one change to every user the ``ids`` or ``external_ids`` query
    names); either way a job, one result per user."""
    document = await _document(request)
    if isinstance(document, dict) and document.get("users") is not None:
        items = document["users"]
        if not isinstance(items, list):
            raise _bad_request("InvalidValue", "users must be an array")
    else:
        ids = _list_query(request, "ids")
        external_ids = _list_query(request, "external_ids")
        if ids is None and external_ids is None:
            raise _bad_request("InvalidValue", "ids or external_ids is required")
        user = await _body(request, "user")
        if not isinstance(user, dict):
            raise _bad_request("InvalidValue", "user must be an object")
        if ids is not None:
            items = [{**user, "id": int(value)} for value in ids if value.isdigit()]
        else:
            items = [{**user, "external_id": value} for value in external_ids or []]
    if len(items) > MAX_BULK:
        description = f"Too many values specified for parameter: users (max {MAX_BULK})"
        raise _bad_request("TooManyValues", description)
    job = _state(request).jobs.submit("update_users", items)
    return _json(200, {"job_status": job_view(job, _base(request))})


async def destroy_many_users(request: web.Request) -> web.Response:
    ids = _list_query(request, "ids")
    external_ids = _list_query(request, "external_ids")
    if ids is not None:
        items: list[dict[str, Any]] = [{"id": int(v)} for v in ids if v.isdigit()]
    elif external_ids is not None:
        items = [{"external_id": value} for value in external_ids]
    else:
        raise _bad_request("InvalidValue", "ids or external_ids is required")
    job = _state(request).jobs.submit("destroy_users", items)
    return _json(200, {"job_status": job_view(job, _base(request))})


async def list_users(request: web.Request) -> web.Response:
    users = _state(request).directory.live_users()
    role, external_id = request.query.get("role"), request.query.get("external_id")
    if role is not None:
        users = [user for user in users if user["role"] == role]
    if external_id is not None:
        users = [u for u in users if (u["external_id"] or "").casefold() == external_id.casefold()]
    return _page(request, "users", users, _user_view)


async def show_many_users(request: web.Request) -> web.Response:
    directory = _state(request).directory
    ids = _list_query(request, "ids")
    external_ids = _list_query(request, "external_ids")
    users: list[dict[str, Any]] = []
    if ids is not None:
        found = (directory.find_user(int(value)) for value in ids if value.isdigit())
        users = [user for user in found if user is not None]
    elif external_ids is not None:
        for value in external_ids:
            users.extend(directory.users_by_external_id(value))
    else:
        raise _bad_request("InvalidValue", "ids or external_ids is required")
    return _listing(request, "users", users)


async def search_users(request: web.Request) -> web.Response:
    directory = _state(request).directory
    if "external_id" in request.query:
        users = directory.users_by_external_id(request.query["external_id"])
    elif "query" in request.query:
        users = directory.search_users(request.query["query"])
    else:
        raise _bad_request("InvalidValue", "query or external_id is required")
    return _page(request, "users", users, _user_view)


def _export_cursor(sequence: int) -> str:
    """Opaque to clients, shaped like Zendesk's (base64 of ``<time>.0||<position>|``)."""
    text = f"{int(_utc_now().timestamp())}.0||{sequence}|"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_export_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(text.split("||")[1].rstrip("|"))
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        raise _bad_request("InvalidPaginationParameter", "invalid cursor") from None


async def export_users(request: web.Request) -> web.Response:
    """The cursor-based incremental user export: every user changed since ``start_time`` (or
    after ``cursor``), deleted ones included, oldest change first."""
    state = _state(request)
    admission = state.export_limiter.admit()
    if not admission.allowed:
        raise ZendeskError(429, EXPORT_LIMITED, _retry_after(admission.reset_after))
    per_page = min(max(_int_query(request, "per_page", MAX_EXPORT_PAGE), 1), MAX_EXPORT_PAGE)
    if "cursor" in request.query:
        after: int | None = _read_export_cursor(request.query["cursor"])
        start_time = 0
    elif "start_time" in request.query:
        after, start_time = None, _int_query(request, "start_time", 0)
    else:
        raise _bad_request("InvalidValue", "start_time or cursor is required")
    users, resume, end_of_stream = state.directory.export_users(after, start_time, per_page)
    cursor = _export_cursor(resume)
    body = {
        "users": [_user_view(request, user) for user in users],
        "after_url": f"{_base(request)}{API}/incremental/users/cursor.json?cursor={cursor}",
        "after_cursor": cursor,
        "before_url": None,
        "before_cursor": None,
        "end_of_stream": end_of_stream,
    }
    return _json(200, body)


# --------------------------------------------------------------------------------------------
# Job statuses
# --------------------------------------------------------------------------------------------


async def show_job_status(request: web.Request) -> web.Response:
    job = _state(request).jobs.get(request.match_info["job_id"])
    if job is None:
        raise RecordNotFound()
    return _json(200, {"job_status": job_view(job, _base(request))})


async def show_many_job_statuses(request: web.Request) -> web.Response:
    jobs = _state(request).jobs
    ids = _list_query(request, "ids") or []
    found = [job for job in map(jobs.get, ids) if job is not None]
    return _json(200, {"job_statuses": [job_view(job, _base(request)) for job in found]})


async def list_job_statuses(request: web.Request) -> web.Response:
    recent = _state(request).jobs.recent()
    return _json(200, {"job_statuses": [job_view(job, _base(request)) for job in recent]})


# --------------------------------------------------------------------------------------------
# Organizations
# --------------------------------------------------------------------------------------------


async def create_organization(request: web.Request) -> web.Response:
    attributes = await _body(request, "organization")
    organization = _state(request).directory.create_organization(attributes)
    return _json(201, {"organization": _organization_view(request, organization)})


async def show_organization(request: web.Request) -> web.Response:
    organization = _state(request).directory.organization(_id(request, "organization_id"))
    return _json(200, {"organization": _organization_view(request, organization)})


async def update_organization(request: web.Request) -> web.Response:
    attributes = await _body(request, "organization")
    directory = _state(request).directory
    organization = directory.update_organization(_id(request, "organization_id"), attributes)
    return _json(200, {"organization": _organization_view(request, organization)})


async def delete_organization(request: web.Request) -> web.Response:
    _state(request).directory.delete_organization(_id(request, "organization_id"))
    return web.Response(status=204)


async def create_or_update_organization(request: web.Request) -> web.Response:
    attributes = await _body(request, "organization")
    organization, created = _state(request).directory.create_or_update_organization(attributes)
    body = {"organization": _organization_view(request, organization)}
    return _json(201 if created else 200, body)


async def list_organizations(request: web.Request) -> web.Response:
    organizations = _state(request).directory.organizations()
    return _page(request, "organizations", organizations, _organization_view)


# --------------------------------------------------------------------------------------------
# Application
# --------------------------------------------------------------------------------------------


def _routes(method: str, path: str, handler: Handler) -> list[web.RouteDef]:
    """The route with and without Zendesk's optional ``.json`` suffix."""
    return [
        web.route(method, f"{API}{path}", handler),
        web.route(method, f"{API}{path}.json", handler),
    ]


def _api_routes() -> Iterable[web.RouteDef]:
    user = r"/users/{user_id:\d+}"
    organization = r"/organizations/{organization_id:\d+}"
    table: list[tuple[str, str, Handler]] = [
        ("GET", "/users", list_users),
        ("POST", "/users", create_user),
        ("GET", "/users/show_many", show_many_users),
        ("GET", "/users/search", search_users),
        ("POST", "/users/create_or_update", create_or_update_user),
        ("POST", "/users/create_or_update_many", create_or_update_many_users),
        ("PUT", "/users/update_many", update_many_users),
        ("DELETE", "/users/destroy_many", destroy_many_users),
        ("GET", user, show_user),
        ("PUT", user, update_user),
        ("DELETE", user, delete_user),
        ("GET", "/incremental/users/cursor", export_users),
        ("GET", "/job_statuses", list_job_statuses),
        ("GET", "/job_statuses/show_many", show_many_job_statuses),
        ("GET", "/job_statuses/{job_id:[0-9A-Za-z]+}", show_job_status),
        ("GET", "/organizations", list_organizations),
        ("POST", "/organizations", create_organization),
        ("POST", "/organizations/create_or_update", create_or_update_organization),
        ("GET", organization, show_organization),
        ("PUT", organization, update_organization),
        ("DELETE", organization, delete_organization),
    ]
    for method, path, handler in table:
        yield from _routes(method, path, handler)


def create_app(config: ZendeskEmulatorConfig, store: DurableStore) -> web.Application:
    """The emulator as an aiohttp application over `store` (empty or from a previous run)."""
    state = ZendeskState(config, store)
    app = web.Application(middlewares=[_zendesk_gateway])
    app[STATE] = state
    app.add_routes(list(_api_routes()))
    add_control_routes(app, state)

    async def start_jobs(_: web.Application) -> None:
        await state.jobs.start()

    async def stop_jobs(_: web.Application) -> None:
        await state.jobs.stop()

    app.on_startup.append(start_jobs)
    app.on_cleanup.append(stop_jobs)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = emulator_parser(
        "zendesk", "Serve a local Zendesk Support API (users, organizations, job statuses).",
        18082, "API token",
    )  # fmt: skip
    parser.add_argument("--plan", choices=sorted(PLAN_LIMITS), default="team")
    parser.add_argument("--rate-limit", type=int, help="requests per window (default: the plan's)")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds (default: 60)")
    parser.add_argument("--user-update-limit", type=int, default=5)
    parser.add_argument("--export-limit", type=int, default=10)
    parser.add_argument("--job-delay-ms", type=int, default=50)
    parser.add_argument(
        "--user-field", action="append", help="a user field the account defines (repeatable)"
    )
    args = parser.parse_args(argv)
    config = ZendeskEmulatorConfig(
        required_token=args.token,
        plan=args.plan,
        rate_limit=UNLIMITED if args.unlimited else args.rate_limit,
        rate_window_seconds=args.rate_window,
        user_update_limit=UNLIMITED if args.unlimited else args.user_update_limit,
        export_limit=UNLIMITED if args.unlimited else args.export_limit,
        job_delay_seconds=args.job_delay_ms / 1000,
        user_fields=tuple(args.user_field) if args.user_field else None,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(lambda store: create_app(config, store), args.host, args.port, args.data, args.receipts)


if __name__ == "__main__":
    main()
