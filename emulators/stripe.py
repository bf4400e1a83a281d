"""Local emulator of Stripe's v1 Customers API, with its events, idempotency and rate limits.

crmsync's Stripe adapter and its tests talk to this instead of api.stripe.com. It serves
``/v1/customers`` (create, retrieve, update, delete, list, search) and ``/v1/events`` with
Stripe's bodies, form encoding (``address[line1]=…``, ``metadata[key]=`` to unset), error
envelopes and headers (``Request-Id``, ``Stripe-Should-Retry``, ``Idempotent-Replayed``,
``Stripe-Rate-Limited-Reason``), API keys by mode (``sk_test_`` / ``sk_live_``, bearer or basic
auth), Stripe's default rate limits (reads and writes per second per mode, search 20/s) and
idempotency keys kept for 24 hours. Every write records a Stripe Event, served at
``/v1/events`` and delivered to webhook subscribers signed with ``Stripe-Signature``. The
official ``stripe`` SDK works against it by changing only its API base address.

Records live in memory and are written through to a ``DurableStore``, so a restarted emulator
keeps its customers, events and idempotency keys. The private ``/_emulator`` routes
(emulators.common) inject faults, report counters, take webhook subscriptions and reset.

Run it with ``python -m emulators.stripe --port 12111 --data stripe.sqlite``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
import pydantic
from aiohttp import web

from emulators.common import (
    UNLIMITED,
    DurableStore,
    FaultInjector,
    SlidingWindowLimiter,
    WebhookEmitter,
    add_control_routes,
    emulator_parser,
    outage_response,
    serve,
)

__all__ = ["StripeEmulatorConfig", "StripeEmulatorState", "create_app", "main", "sign_payload"]

#: The account's default API version: events are rendered in it, and responses to requests
#: that name no ``Stripe-Version`` report it. This is the version stripe-python 16.1.0 pins.
API_VERSION = "2026-10-28.endive"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
IDEMPOTENCY_KEY_MAX_LENGTH = 255
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500
EMAIL_MAX_LENGTH = 512
NAME_MAX_LENGTH = 256
PHONE_MAX_LENGTH = 20
STRING_MAX_LENGTH = 5000  # the OpenAPI description's maxLength for the other strings
DOCS = "https://stripe.com/docs/error-codes/"
RATE_LIMIT_MESSAGES = {
    "live": (
        "Request rate limit exceeded. You can learn more about rate limits here"
        " https://stripe.com/docs/rate-limits."
    ),
    "test": (
        "Testmode request rate limit exceeded, the rate limits in testmode are lower than"
        " livemode. You can learn more about rate limits here https://stripe.com/docs/rate-limits."
    ),
}
NO_KEY_MESSAGE = (
    "You did not provide an API key. You need to provide your API key in the Authorization"
    " header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See"
    " https://stripe.com/docs/api#authentication for details, or we can help at"
    " https://support.stripe.com/."
)
PUBLISHABLE_KEY_MESSAGE = (
    "This API call cannot be made with a publishable API key. Please use a secret API key."
    " You can find a list of your API keys at https://dashboard.stripe.com/account/apikeys."
)
SERVER_ERROR_MESSAGE = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need"
    " any help, you can reach us at https://support.stripe.com/contact."
)
ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")
CUSTOMER_SEARCH_FIELDS = ("created", "email", "metadata", "name", "phone")
#: Customer fields the emulator can expand: all are null or empty lists here.
EXPANDABLE = frozenset(
    {"default_source", "invoice_settings.default_payment_method", "test_clock", "sources"}
    | {"subscriptions", "tax_ids"}
)
INCLUDABLE_LISTS = {"sources": "sources", "subscriptions": "subscriptions", "tax_ids": "tax_ids"}
_KEY = re.compile(r"(?P<kind>sk|rk|pk)_(?P<mode>test|live)_[A-Za-z0-9_]+")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_INVOICE_PREFIX = re.compile(r"[A-Z0-9]{3,12}")
_PARAM_NAME = re.compile(r"(?P<base>[^\[\]]+)(?P<rest>(\[[^\[\]]*\])*)")
_ALPHANUMERIC = string.ascii_letters + string.digits

Mode = Literal["live", "test"]


class StripeEmulatorConfig(pydantic.BaseModel):
    """How the emulated account behaves; the defaults are Stripe's published limits."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    #: None accepts any well-formed secret key; otherwise every other key gets Stripe's 401.
    required_key: pydantic.SecretStr | None = None
    live_reads_per_second: int = pydantic.Field(default=100, gt=0)
    live_writes_per_second: int = pydantic.Field(default=100, gt=0)
    test_reads_per_second: int = pydantic.Field(default=25, gt=0)
    test_writes_per_second: int = pydantic.Field(default=25, gt=0)
    search_per_second: int = pydantic.Field(default=20, gt=0)
    #: How long a write takes to become searchable. Stripe says "under normal operating
    #: conditions, less than a minute"; 0 makes search read-after-write consistent.
    search_lag_seconds: float = pydantic.Field(default=0.0, ge=0)
    idempotency_ttl_seconds: float = pydantic.Field(default=24 * 3600, gt=0)
    api_version: str = API_VERSION


def _random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


# --------------------------------------------------------------------------------------------
# Errors in Stripe's envelope
# --------------------------------------------------------------------------------------------


class StripeError(Exception):
    """An error response in Stripe's envelope.

    `saved` says whether the idempotency layer keeps it: Stripe saves a result only once the
    endpoint began executing, so parameter validation failures are not saved (a retry with
    the same key runs again) while a missing resource is.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        saved: bool = False,
        logged: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.saved = saved
        self.logged = logged  # Stripe links errors the API itself raised to the request log

    def body(self, request_id: str, mode: Mode | None) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = DOCS + self.code.replace("_", "-")
        if self.param is not None:
            error["param"] = self.param
        if self.logged and mode is not None:
            logs = "logs" if mode == "live" else "test/logs"
            error["request_log_url"] = (
                f"https://dashboard.stripe.com/{logs}/{request_id}?t={int(time.time())}"
            )
        return {"error": dict(sorted(error.items()))}


def _invalid(message: str, param: str | None, code: str | None = None) -> StripeError:
    return StripeError(400, message, code=code, param=param)


def _no_such(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param, saved=True
    )


# --------------------------------------------------------------------------------------------
# Form encoding: Stripe's bracket syntax
# --------------------------------------------------------------------------------------------


def parse_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nest ``a[b][c]=v`` pairs into dicts; ``a[]=v`` and ``a[0]=v`` become list items.

    Lists stay dicts keyed by position until a parameter's type asks for a list (see
    `_as_list`), as Stripe's own decoder does.
    """
    root: dict[str, Any] = {}
    for name, value in pairs:
        match = _PARAM_NAME.fullmatch(name)
        keys = [name] if match is None else [match["base"], *re.findall(r"\[([^\]]*)\]", name)]
        node = root
        for key in keys[:-1]:
            key = key or str(len(node))
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1] or str(len(node))] = value
    return root


def _as_list(value: Any, param: str) -> list[Any]:
    if value == "":
        return []
    if isinstance(value, dict) and all(key.isdigit() for key in value):
        return [value[key] for key in sorted(value, key=int)]
    raise _invalid(f"Invalid array: {param} must be an array", param)


def _describe(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# --------------------------------------------------------------------------------------------
# Parameters: what each endpoint accepts, and how a value is checked and normalised
# --------------------------------------------------------------------------------------------


class _Clear:
    """A hash parameter sent as "" (unset it all), as distinct from a hash of changes."""

    def __repr__(self) -> str:
        return "CLEAR"


CLEAR = _Clear()

Check = Callable[[Any, str], Any]


def _string(max_length: int | None = None) -> Check:
    def check(value: Any, param: str) -> str | None:
        if not isinstance(value, str):
            raise _invalid(f"Invalid string: {_describe(value)}", param)
        if max_length is not None and len(value) > max_length:
            message = f"Invalid string: {value[:40]}...; must be at most {max_length} characters"
            raise _invalid(message, param, "parameter_invalid_string_too_long")
        return value or None

    return check


def _email(value: Any, param: str) -> str | None:
    text = _string(EMAIL_MAX_LENGTH)(value, param)
    if text is not None and not _EMAIL.fullmatch(text):
        raise _invalid(f"Invalid email address: {text}", param, "email_invalid")
    return text


def _integer(value: Any, param: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(f"Invalid integer: {_describe(value)}", param, "parameter_invalid_integer")
    return int(value)


def _boolean(value: Any, param: str) -> bool:
    if value not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {_describe(value)}", param)
    return value == "true"


def _enum(*choices: str, empty: str | None = None) -> Check:
    def check(value: Any, param: str) -> str | None:
        if value == "" and empty is not None:
            return empty
        if value not in choices:
            listed = ", ".join(f"`{choice}`" for choice in choices)
            message = f"Invalid {param}: must be one of {listed}"
            raise _invalid(message, param)
        return str(value)

    return check


def _invoice_prefix(value: Any, param: str) -> str:
    if not isinstance(value, str) or not _INVOICE_PREFIX.fullmatch(value):
        message = "Invoice prefix must be between 3 and 12 uppercase letters or numbers."
        raise _invalid(message, param)
    return value


def _hash(spec: Mapping[str, Check], *, emptyable: bool = False, required: Sequence[str] = ()):
    def check(value: Any, param: str) -> Any:
        if value == "" and emptyable:
            return CLEAR
        if not isinstance(value, dict):
            raise _invalid(f"Invalid object: {_describe(value)}", param)
        checked = _checked(value, spec, prefix=param)
        for name in required:
            if name not in checked:
                raise _invalid(
                    f"Missing required param: {param}[{name}].",
                    f"{param}[{name}]",
                    "parameter_missing",
                )
        return checked

    return check


def _array(item: Check) -> Check:
    def check(value: Any, param: str) -> list[Any]:
        return [item(entry, f"{param}[{n}]") for n, entry in enumerate(_as_list(value, param))]

    return check


def _metadata(value: Any, param: str) -> Any:
    if value == "":
        return CLEAR
    if not isinstance(value, dict):
        raise _invalid(f"Invalid object: {_describe(value)}", param)
    if len(value) > METADATA_MAX_KEYS:
        message = f"Invalid metadata: metadata can have up to {METADATA_MAX_KEYS} keys."
        raise _invalid(message, param)
    changes: dict[str, str | None] = {}
    for key, entry in value.items():
        where = f"{param}[{key}]"
        if len(key) > METADATA_KEY_MAX_LENGTH:
            message = (
                f"Metadata keys can have up to {METADATA_KEY_MAX_LENGTH} characters, but you"
                f" passed in a key that is {len(key)} characters. Invalid key: '{key}'"
            )
            raise _invalid(message, where)
        if not isinstance(entry, str):
            raise _invalid(f"Invalid string: {_describe(entry)}", where)
        if len(entry) > METADATA_VALUE_MAX_LENGTH:
            message = (
                f"Metadata values can have up to {METADATA_VALUE_MAX_LENGTH} characters, but you"
                f" passed in a value that is {len(entry)} characters. Invalid value: '{entry}'"
            )
            raise _invalid(message, where)
        changes[key] = entry or None
    return changes


def _no_such_object(kind: str) -> Check:
    """A reference to an object kind the emulated account never has (sources, test clocks)."""

    def check(value: Any, param: str) -> Any:
        raise StripeError(
            400, f"No such {kind}: '{_describe(value)}'", code="resource_missing", param=param
        )

    return check


def _not_emulated(value: Any, param: str) -> Any:
    # A real Stripe parameter whose effects this emulator does not model: refuse it loudly
    # rather than silently dropping it.
    raise _invalid(f"The Stripe emulator does not implement the `{param}` parameter.", param)


_ADDRESS = {name: _string(STRING_MAX_LENGTH) for name in ADDRESS_FIELDS}
_CUSTOMER_WRITE: dict[str, Check] = {
    "address": _hash(_ADDRESS, emptyable=True),
    "balance": _integer,
    "business_name": _not_emulated,
    "cash_balance": _not_emulated,
    "description": _string(5000),
    "email": _email,
    "expand": _array(_string()),
    "individual_name": _not_emulated,
    "invoice_prefix": _invoice_prefix,
    "invoice_settings": _hash(
        {
            "custom_fields": _array(
                _hash({"name": _string(40), "value": _string(140)}, required=("name", "value"))
            ),
            "default_payment_method": _no_such_object("PaymentMethod"),
            "footer": _string(5000),
            "rendering_options": _hash(
                {
                    "amount_tax_display": _enum(
                        "exclude_tax", "include_inclusive_tax", empty="exclude_tax"
                    ),
                    "template": _string(),
                },
                emptyable=True,
            ),
        }
    ),
    "metadata": _metadata,
    "name": _string(NAME_MAX_LENGTH),
    "next_invoice_sequence": _integer,
    "phone": _string(PHONE_MAX_LENGTH),
    "preferred_locales": _array(_string()),
    "shipping": _hash(
        {
            "address": _hash(_ADDRESS, required=("line1",)),
            "name": _string(5000),
            "phone": _string(20),
        },
        emptyable=True,
        required=("address", "name"),
    ),
    "source": _no_such_object("source"),
    "tax": _not_emulated,
    "tax_exempt": _enum("exempt", "none", "reverse", empty="none"),
    "validate": _boolean,
}
CUSTOMER_CREATE = {
    **_CUSTOMER_WRITE,
    "payment_method": _no_such_object("PaymentMethod"),
    "tax_id_data": _not_emulated,
    "test_clock": _no_such_object("test clock"),
}
CUSTOMER_UPDATE = {**_CUSTOMER_WRITE, "default_source": _no_such_object("source")}
_RANGE = _hash({op: _integer for op in ("gt", "gte", "lt", "lte")})


def _created_range(value: Any, param: str) -> int | dict[str, int]:
    return _RANGE(value, param) if isinstance(value, dict) else _integer(value, param)


_PAGING: dict[str, Check] = {
    "ending_before": _string(),
    "expand": _array(_string()),
    "limit": _integer,
    "starting_after": _string(),
}
CUSTOMER_LIST = {
    **_PAGING,
    "created": _created_range,
    "email": _string(512),
    "test_clock": _string(),
}
CUSTOMER_SEARCH = {
    "expand": _array(_string()),
    "limit": _integer,
    "page": _string(),
    "query": _string(),
}
EVENT_LIST = {**_PAGING, "created": _created_range, "type": _string(), "types": _array(_string())}
RETRIEVE = {"expand": _array(_string())}
DELETE: dict[str, Check] = {}


def _checked(params: Mapping[str, Any], spec: Mapping[str, Check], prefix: str = "") -> dict:
    """Each parameter checked and normalised by `spec`; unknown names are Stripe's 400."""

    def full(name: str) -> str:
        return f"{prefix}[{name}]" if prefix else name

    unknown = [full(name) for name in params if name not in spec]
    if len(unknown) == 1:
        raise _invalid(f"Received unknown parameter: {unknown[0]}", unknown[0], "parameter_unknown")
    if unknown:
        message = f"Received unknown parameters: {', '.join(unknown)}"
        raise _invalid(message, unknown[0], "parameter_unknown")
    return {name: spec[name](value, full(name)) for name, value in params.items()}


def _created_filter(params: Mapping[str, Any]) -> Callable[[int], bool]:
    """``created=<t>`` or ``created[gte]=<t>`` (and gt, lt, lte) as a predicate."""
    raw = params.get("created")
    if raw is None:
        return lambda _: True
    bounds = raw if isinstance(raw, dict) else {"eq": raw}
    tests = {
        "eq": lambda created, t: created == t,
        "gt": lambda created, t: created > t,
        "gte": lambda created, t: created >= t,
        "lt": lambda created, t: created < t,
        "lte": lambda created, t: created <= t,
    }
    return lambda created: all(tests[op](created, t) for op, t in bounds.items())


def _limit(params: Mapping[str, Any]) -> int:
    limit = params.get("limit", DEFAULT_PAGE_SIZE)
    if limit < 1:
        raise _invalid(
            "This value must be greater than or equal to 1.", "limit", "parameter_invalid_integer"
        )
    if limit > MAX_PAGE_SIZE:
        raise _invalid(
            f"This value must be less than or equal to {MAX_PAGE_SIZE}.",
            "limit",
            "parameter_invalid_integer",
        )
    return int(limit)


# --------------------------------------------------------------------------------------------
# Search query language (the subset customers use)
# --------------------------------------------------------------------------------------------

_QUERY_TOKEN = re.compile(
    r"""\s*(?:
        (?P<keyword>AND|OR)(?=\s)
      | (?P<clause>
          (?P<negated>-)?
          (?P<field>[a-z_]+)(?:\[(?P<quote>['"])(?P<key>(?:\\.|(?!(?P=quote)).)*)(?P=quote)\])?
          (?P<op>>=|<=|:|~|>|<)
          (?:'(?P<single>(?:\\.|[^'\\])*)'|"(?P<double>(?:\\.|[^"\\])*)"|(?P<bare>[^\s'"]+))
        )
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Clause:
    field: str
    key: str | None
    op: str
    value: str | float | None
    negated: bool

    def matches(self, customer: Mapping[str, Any]) -> bool:
        if self.field == "metadata":
            actual = customer["metadata"].get(self.key)
        else:
            actual = customer.get(self.field)
        return self._test(actual) != self.negated

    def _test(self, actual: Any) -> bool:
        if self.value is None:
            return actual is None
        if isinstance(self.value, float):
            if not isinstance(actual, int):
                return False
            return {
                ":": actual == self.value,
                ">": actual > self.value,
                ">=": actual >= self.value,
                "<": actual < self.value,
                "<=": actual <= self.value,
            }[self.op]
        if not isinstance(actual, str):
            return False
        if self.op == "~":
            return self.value.casefold() in actual.casefold()
        return actual.casefold() == self.value.casefold()


@dataclass(frozen=True)
class Query:
    clauses: tuple[Clause, ...]
    any_of: bool  # clauses joined by OR rather than AND

    def matches(self, customer: Mapping[str, Any]) -> bool:
        results = (clause.matches(customer) for clause in self.clauses)
        return any(results) if self.any_of else all(results)


def parse_query(text: str) -> Query:
    """Stripe's search query language, as far as customers use it: ``email:'a@b.c'``,
    ``metadata['key']:'value'``, ``name~'sub'``, ``created>1700000000``, ``-field:…``,
    ``field:null``, clauses joined by ``AND`` or by ``OR`` (never both)."""
    clauses: list[Clause] = []
    keywords: set[str] = set()
    position, expect_clause = 0, True
    while position < len(text.rstrip()):
        match = _QUERY_TOKEN.match(text, position)
        if match is None or bool(match["clause"]) != expect_clause:
            raise _invalid(
                f"Invalid query: unexpected input at position {position}: "
                f"`{text[position:].strip()[:40]}`.",
                "query",
            )
        position, expect_clause = match.end(), not expect_clause
        if match["keyword"]:
            keywords.add(match["keyword"])
            continue
        clauses.append(_clause(match))
    if expect_clause:
        raise _invalid("Invalid query: a query must end with a clause.", "query")
    if len(keywords) > 1:
        raise _invalid("Invalid query: `AND` and `OR` cannot be combined in one query.", "query")
    return Query(tuple(clauses), any_of=keywords == {"OR"})


def _clause(match: re.Match[str]) -> Clause:
    name, key, op = match["field"], match["key"], match["op"]
    if name not in CUSTOMER_SEARCH_FIELDS:
        raise _invalid(
            f"Field `{name}` is an unsupported search field for resource `customers`. See"
            " http://stripe.com/docs/search#query-fields-for-customers for a list of supported"
            " fields.",
            "query",
        )
    if (name == "metadata") != (key is not None):
        raise _invalid("Invalid query: use `metadata['key']` to search metadata.", "query")
    quoted = match["single"] if match["single"] is not None else match["double"]
    value: str | float | None
    if quoted is not None:
        value = re.sub(r"\\(.)", r"\1", quoted)
    elif match["bare"] == "null":
        value = None
    else:
        try:
            value = float(match["bare"])
        except ValueError:
            raise _invalid(f"Invalid query: `{match['bare']}` must be quoted.", "query") from None
    numeric = name == "created"
    if numeric != isinstance(value, float) and value is not None:
        kind = "a number" if numeric else "a quoted string"
        raise _invalid(f"Invalid query: `{name}` must be compared with {kind}.", "query")
    if op == "~" and (not isinstance(value, str) or len(value) < 3):
        message = "Invalid query: the substring operator `~` needs at least 3 characters."
        raise _invalid(message, "query")
    if op in (">", "<", ">=", "<=") and not numeric:
        raise _invalid(f"Invalid query: `{op}` only applies to numeric fields.", "query")
    return Clause(name, key, op, value, negated=match["negated"] is not None)


def _page_token(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"after:{sequence}".encode()).decode()


def _page_after(token: str) -> int:
    try:
        kind, _, sequence = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "after":
            return int(sequence)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise _invalid(f"Invalid page: {token}", "page")


# --------------------------------------------------------------------------------------------
# The account: customers, events and idempotent results, free of HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class StoredCustomer:
    """One customer, live or deleted, and the state of it that search sees.

    Search trails writes by the configured lag: until `visible_at`, a search sees
    `searchable` (the state before the latest write; None when it was not yet searchable).
    """

    sequence: int
    body: dict[str, Any]
    deleted: bool = False
    searchable: dict[str, Any] | None = None
    visible_at: float = 0.0

    @property
    def mode(self) -> Mode:
        return "live" if self.body["livemode"] else "test"

    def replace(self, body: dict[str, Any], deleted: bool, now: float, lag: float) -> None:
        if now >= self.visible_at:
            self.searchable = self.search_view(now)
        self.body, self.deleted = body, deleted
        self.visible_at = now + lag

    def search_view(self, now: float) -> dict[str, Any] | None:
        if now >= self.visible_at:
            return None if self.deleted else self.body
        return self.searchable

    def document(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "deleted": self.deleted, "body": self.body}


@dataclass(frozen=True)
class StoredEvent:
    sequence: int
    body: dict[str, Any]


@dataclass(frozen=True)
class SavedResult:
    """The first response to an idempotent request, as Stripe keeps it for 24 hours."""

    endpoint: str
    params: dict[str, Any]
    status: int
    body: bytes
    request_id: str
    saved_at: float

    def document(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "params": self.params,
            "status": self.status,
            "body": self.body.decode(),
            "request_id": self.request_id,
            "saved_at": self.saved_at,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> SavedResult:
        return cls(**{**doc, "body": doc["body"].encode()})


@dataclass(frozen=True)
class RequestContext:
    """Who is asking and how: what every write records in its event."""

    mode: Mode
    request_id: str
    idempotency_key: str | None = None


@dataclass
class Counters:
    requests: int = 0
    rate_limited: int = 0
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    idempotent_replays: int = 0


@dataclass
class Page:
    data: list[dict[str, Any]]
    has_more: bool
    next_sequence: int | None = None
    total_count: int | None = None


class Account:
    """One Stripe account's customers and events, in memory and written through to a store.

    Test-mode and live-mode objects are separate, as on Stripe: a key sees only its mode's.
    Lists and searches run newest first. Deleted customers stay as tombstones, so retrieving
    one answers Stripe's deleted stub and updating it answers 404.
    """

    CUSTOMERS, EVENTS, RESULTS = "customers", "events", "idempotency"

    def __init__(
        self,
        store: DurableStore,
        config: StripeEmulatorConfig,
        emit: Callable[[dict[str, Any]], None],
        subscribers: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._config = config
        self._emit = emit
        self._subscribers = subscribers
        self._clock = clock
        self.counters = Counters()
        self.load()

    def load(self) -> None:
        self.customers: dict[str, StoredCustomer] = {
            cid: StoredCustomer(doc["sequence"], doc["body"], doc["deleted"])
            for cid, doc in self._store.load(self.CUSTOMERS)
        }
        self._invoice_prefixes = {c.body["invoice_prefix"] for c in self.customers.values()}
        self.events: dict[str, StoredEvent] = {
            eid: StoredEvent(doc["sequence"], doc["body"])
            for eid, doc in self._store.load(self.EVENTS)
        }
        horizon = self._clock() - self._config.idempotency_ttl_seconds
        self.results: dict[str, SavedResult] = {}
        for key, doc in self._store.load(self.RESULTS):
            if doc["saved_at"] >= horizon:
                self.results[key] = SavedResult.from_document(doc)
            else:
                self._store.delete(self.RESULTS, key)

    def clear(self) -> None:
        self._store.clear()
        self.counters = Counters()
        self.load()

    # Customers ------------------------------------------------------------------------------

    def retrieve(self, customer_id: str, mode: Mode) -> dict[str, Any]:
        customer = self._find(customer_id, mode)
        if customer.deleted:
            return {"id": customer_id, "object": "customer", "deleted": True}
        return customer.body

    def create(self, changes: Mapping[str, Any], context: RequestContext) -> dict[str, Any]:
        customer_id = _random_id("cus_", 14)
        while customer_id in self.customers:
            customer_id = _random_id("cus_", 14)
        body = _apply_changes(self._blank_customer(customer_id, context.mode), changes)
        now = self._clock()
        stored = StoredCustomer(
            self._next_sequence(),
            body,
            searchable=None,
            visible_at=now + self._config.search_lag_seconds,
        )
        self._put(stored)
        self.counters.creates += 1
        self._record_event("customer.created", body, context)
        return body

    def update(
        self, customer_id: str, changes: Mapping[str, Any], context: RequestContext
    ) -> dict[str, Any]:
        stored = self._find(customer_id, context.mode)
        if stored.deleted:
            raise _no_such("customer", customer_id)
        body = _apply_changes(stored.body, changes)
        previous = _previous_attributes(stored.body, body)
        if not previous:
            return stored.body  # nothing changed: Stripe records no event
        stored.replace(body, False, self._clock(), self._config.search_lag_seconds)
        self._put(stored)
        self.counters.updates += 1
        self._record_event("customer.updated", body, context, previous)
        return body

    def delete(self, customer_id: str, context: RequestContext) -> dict[str, Any]:
        stored = self._find(customer_id, context.mode)
        if stored.deleted:
            raise _no_such("customer", customer_id)
        stored.replace(stored.body, True, self._clock(), self._config.search_lag_seconds)
        self._put(stored)
        self.counters.deletes += 1
        self._record_event("customer.deleted", stored.body, context)
        return {"id": customer_id, "object": "customer", "deleted": True}

    def list_customers(self, mode: Mode, params: Mapping[str, Any]) -> Page:
        created = _created_filter(params)
        email = params.get("email")
        candidates = [
            (stored.sequence, stored.body)
            for stored in self.customers.values()
            if stored.mode == mode
            and not stored.deleted
            and created(stored.body["created"])
            and (email is None or stored.body["email"] == email)
            and (params.get("test_clock") is None)
        ]
        return self._page(candidates, params, lambda cid, param: self._find(cid, mode, param))

    def search(self, mode: Mode, query: Query, limit: int, page: str | None) -> Page:
        now = self._clock()
        after = _page_after(page) if page else None
        matches = []
        for stored in self.customers.values():
            body = stored.search_view(now)
            if body is not None and stored.mode == mode and query.matches(body):
                matches.append((stored.sequence, body))
        matches.sort(key=lambda item: item[0], reverse=True)
        total = len(matches)
        if after is not None:
            matches = [item for item in matches if item[0] < after]
        page_items = matches[:limit]
        has_more = len(matches) > limit
        next_sequence = page_items[-1][0] if has_more else None
        return Page([body for _, body in page_items], has_more, next_sequence, total)

    # Events ---------------------------------------------------------------------------------

    def retrieve_event(self, event_id: str, mode: Mode) -> dict[str, Any]:
        event = self.events.get(event_id)
        if event is None or (event.body["livemode"] != (mode == "live")):
            raise _no_such("event", event_id)
        return event.body

    def list_events(self, mode: Mode, params: Mapping[str, Any]) -> Page:
        created = _created_filter(params)
        types = [params["type"]] if params.get("type") else params.get("types", [])
        patterns = [re.compile(re.escape(t).replace(r"\*", "[^.]+")) for t in types if t]
        candidates = [
            (event.sequence, event.body)
            for event in self.events.values()
            if event.body["livemode"] == (mode == "live")
            and created(event.body["created"])
            and (not patterns or any(p.fullmatch(event.body["type"]) for p in patterns))
        ]

        def cursor_of(event_id: str, param: str) -> StoredEvent:
            event = self.events.get(event_id)
            if event is None:
                raise _no_such("event", event_id, param)
            return event

        return self._page(candidates, params, cursor_of)

    # Idempotency ----------------------------------------------------------------------------

    def saved_result(self, scope: str, key: str) -> SavedResult | None:
        result = self.results.get(f"{scope}:{key}")
        if result is None:
            return None
        if result.saved_at < self._clock() - self._config.idempotency_ttl_seconds:
            del self.results[f"{scope}:{key}"]
            self._store.delete(self.RESULTS, f"{scope}:{key}")
            return None
        return result

    def save_result(self, scope: str, key: str, result: SavedResult) -> None:
        self.results[f"{scope}:{key}"] = result
        self._store.put(self.RESULTS, f"{scope}:{key}", result.document())

    # Internals ------------------------------------------------------------------------------

    def _find(self, customer_id: str, mode: Mode, param: str = "id") -> StoredCustomer:
        stored = self.customers.get(customer_id)
        if stored is None:
            raise _no_such("customer", customer_id, param)
        if stored.mode != mode:
            error = _no_such("customer", customer_id, param)
            error.message += (
                f"; a similar object exists in {stored.mode} mode, but a {mode} mode key was"
                " used to make this request."
            )
            raise error
        return stored

    def _page(
        self,
        candidates: list[tuple[int, dict[str, Any]]],
        params: Mapping[str, Any],
        cursor_of: Callable[[str, str], StoredCustomer | StoredEvent],
    ) -> Page:
        """Newest first; ``starting_after`` pages towards older, ``ending_before`` newer."""
        limit = _limit(params)
        candidates.sort(key=lambda item: item[0], reverse=True)
        if params.get("starting_after"):
            cursor = cursor_of(params["starting_after"], "starting_after").sequence
            older = [item for item in candidates if item[0] < cursor]
            return Page([body for _, body in older[:limit]], len(older) > limit)
        if params.get("ending_before"):
            cursor = cursor_of(params["ending_before"], "ending_before").sequence
            newer = [item for item in candidates if item[0] > cursor]
            return Page([body for _, body in newer[-limit:]], len(newer) > limit)
        return Page([body for _, body in candidates[:limit]], len(candidates) > limit)

    def _blank_customer(self, customer_id: str, mode: Mode) -> dict[str, Any]:
        prefix = secrets.token_hex(4).upper()
        while prefix in self._invoice_prefixes:  # unique per account, as on Stripe
            prefix = secrets.token_hex(4).upper()
        self._invoice_prefixes.add(prefix)
        return {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(self._clock()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "email": None,
            "invoice_prefix": prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": mode == "live",
            "metadata": {},
            "name": None,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }

    def _put(self, stored: StoredCustomer) -> None:
        self.customers[stored.body["id"]] = stored
        self._store.put(self.CUSTOMERS, stored.body["id"], stored.document())

    def _next_sequence(self) -> int:
        return self._store.next_value("sequence", 1)

    def _record_event(
        self,
        kind: str,
        body: dict[str, Any],
        context: RequestContext,
        previous: dict[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {"object": copy.deepcopy(body)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": _random_id("evt_", 24),
            "object": "event",
            "api_version": self._config.api_version,
            "created": int(self._clock()),
            "data": data,
            "livemode": context.mode == "live",
            "pending_webhooks": self._subscribers(),
            "request": {"id": context.request_id, "idempotency_key": context.idempotency_key},
            "type": kind,
        }
        stored = StoredEvent(self._next_sequence(), event)
        self.events[event["id"]] = stored
        self._store.put(self.EVENTS, event["id"], {"sequence": stored.sequence, "body": event})
        self._emit(event)


def _apply_changes(customer: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A new customer body with checked parameters applied, as Stripe applies them: "" unsets
    a field (or a whole hash), hashes merge key by key, `metadata[key]=""` drops one key."""
    body = copy.deepcopy(dict(customer))
    for name, value in changes.items():
        if name in ("expand", "validate"):
            continue
        if name == "metadata":
            metadata = {} if value is CLEAR else body["metadata"]
            for key, entry in ({} if value is CLEAR else value).items():
                if entry is None:
                    metadata.pop(key, None)
                else:
                    metadata[key] = entry
            body["metadata"] = metadata
        elif name == "address":
            body["address"] = None if value is CLEAR else _merged_address(body["address"], value)
        elif name == "shipping":
            body["shipping"] = None if value is CLEAR else _shipping(value)
        elif name == "invoice_settings":
            body["invoice_settings"] = _invoice_settings(body["invoice_settings"], value)
        else:
            body[name] = value
    return body


def _merged_address(current: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict:
    return {**dict.fromkeys(ADDRESS_FIELDS), **(current or {}), **changes}


def _shipping(value: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "address": _merged_address(None, value["address"]),
        "name": value["name"],
        "phone": value.get("phone"),
    }


def _invoice_settings(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    settings = dict(current)
    for name, value in changes.items():
        if name == "custom_fields":
            settings[name] = value or None
        elif name == "rendering_options":
            options = {"amount_tax_display": None, "template": None}
            settings[name] = None if value is CLEAR else {**options, **value}
        else:
            settings[name] = value
    return settings


def _previous_attributes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Stripe's `data.previous_attributes`: the old values of what changed, hashes diffed key
    by key (a key that was absent shows as null)."""
    previous: dict[str, Any] = {}
    for name in new.keys() | old.keys():
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            previous[name] = _previous_attributes(before, after)
        else:
            previous[name] = before
    return previous


# --------------------------------------------------------------------------------------------
# Emulator state
# --------------------------------------------------------------------------------------------


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's webhook signature header: ``t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def _webhook_headers(body: bytes, _url: str, secret: str) -> dict[str, str]:
    return {
        "Stripe-Signature": sign_payload(body, secret),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }


@dataclass
class RateLimiters:
    """Stripe's basic limiter (reads and writes per second, per mode) and the search limiter."""

    config: StripeEmulatorConfig
    reads: dict[Mode, SlidingWindowLimiter] = field(init=False)
    writes: dict[Mode, SlidingWindowLimiter] = field(init=False)
    search: SlidingWindowLimiter = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.reads = {
            "live": SlidingWindowLimiter(c.live_reads_per_second, 1.0),
            "test": SlidingWindowLimiter(c.test_reads_per_second, 1.0),
        }
        self.writes = {
            "live": SlidingWindowLimiter(c.live_writes_per_second, 1.0),
            "test": SlidingWindowLimiter(c.test_writes_per_second, 1.0),
        }
        self.search = SlidingWindowLimiter(c.search_per_second, 1.0)

    def refusal(self, mode: Mode, method: str, path: str) -> str | None:
        """None to admit the request, else the `Stripe-Rate-Limited-Reason` for refusing it."""
        if path.endswith("/search") and not self.search.admit(mode).allowed:
            return "endpoint-rate"
        limiter = self.reads if method in ("GET", "HEAD") else self.writes
        return None if limiter[mode].admit().allowed else "global-rate"


class StripeEmulatorState:
    """Everything one emulated account holds, and what the `/_emulator` routes need."""

    def __init__(self, config: StripeEmulatorConfig, store: DurableStore) -> None:
        self.config = config
        self.store = store
        self.faults = FaultInjector()
        self.webhooks = WebhookEmitter(store, _webhook_headers)
        self.account = Account(
            store, config, self.webhooks.emit, lambda: len(self.webhooks.subscriptions)
        )
        self.limiters = RateLimiters(config)

    @property
    def counters(self) -> Counters:
        return self.account.counters

    def accepts(self, key: str) -> bool:
        required = self.config.required_key
        if required is None:
            return True
        return hmac.compare_digest(key.encode(), required.get_secret_value().encode())

    def stats(self) -> dict[str, int]:
        customers = self.account.customers.values()
        deleted = sum(stored.deleted for stored in customers)
        return {
            "requests": self.counters.requests,
            "rate_limited": self.counters.rate_limited,
            "creates": self.counters.creates,
            "updates": self.counters.updates,
            "deletes": self.counters.deletes,
            "idempotent_replays": self.counters.idempotent_replays,
            "customers": len(customers) - deleted,
            "deleted_customers": deleted,
            "events": len(self.account.events),
            "idempotency_keys": len(self.account.results),
        }

    def reset(self) -> None:
        self.account.clear()
        self.limiters = RateLimiters(self.config)


STATE = web.AppKey("stripe_emulator_state", StripeEmulatorState)


# --------------------------------------------------------------------------------------------
# HTTP: authentication, limits, idempotency and headers around every call
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The authenticated request: its API key's mode, parameters and identifiers."""

    mode: Mode
    key_scope: str  # a digest of the API key: idempotency keys are per key
    request_id: str
    idempotency_key: str | None
    params: dict[str, Any]

    @property
    def context(self) -> RequestContext:
        return RequestContext(self.mode, self.request_id, self.idempotency_key)


CALLER = "stripe_caller"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=_encode(body), content_type="application/json")


def _encode(body: object) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_INDENT_2)


def _mask(key: str) -> str:
    """Stripe's rendering of a refused key: its prefix and last four characters."""
    match = re.match(r"(sk|rk|pk)_(test|live)_", key)
    prefix = match.group(0) if match else ""
    rest = key[len(prefix) :]
    return prefix + "*" * max(len(rest) - 4, 0) + rest[-4:]


def _api_key(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None


def _authenticate(request: web.Request, state: StripeEmulatorState) -> tuple[str, Mode]:
    key = _api_key(request)
    if key is None:
        raise StripeError(401, NO_KEY_MESSAGE, logged=False)
    match = _KEY.fullmatch(key)
    if match is not None and match["kind"] == "pk":
        raise StripeError(401, PUBLISHABLE_KEY_MESSAGE, logged=False)
    if match is None or not state.accepts(key):
        raise StripeError(401, f"Invalid API Key provided: {_mask(key)}", logged=False)
    return key, "live" if match["mode"] == "live" else "test"


async def _params(request: web.Request) -> dict[str, Any]:
    if request.method == "POST":
        body = (await request.read()).decode("utf-8", errors="replace")
        return parse_form(parse_qsl(body, keep_blank_values=True))
    return parse_form(request.query.items())


def _rate_limited(mode: Mode, reason: str | None) -> web.Response:
    error = StripeError(429, RATE_LIMIT_MESSAGES[mode], code="rate_limit", logged=False)
    response = _json(429, error.body("", None))
    if reason is not None:
        response.headers["Stripe-Rate-Limited-Reason"] = reason
    return response


def _error_response(error: StripeError, request_id: str, mode: Mode | None) -> web.Response:
    response = _json(error.status, error.body(request_id, mode))
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="Stripe"'
    if error.status != 429:
        # Stripe marks its definitive refusals (validation) as not worth retrying and its
        # own failures and lock conflicts as worth it.
        retry = error.status >= 500 or error.status == 409
        response.headers["Stripe-Should-Retry"] = "true" if retry else "false"
    return response


async def _injected_fault(request: web.Request, state: StripeEmulatorState) -> web.Response | None:
    fault = await state.faults.draw()
    if fault == "throttle":
        state.counters.rate_limited += 1
        mode: Mode = "live" if "_live_" in (_api_key(request) or "") else "test"
        return _rate_limited(mode, "global-rate")
    if fault == "error":
        status = state.faults.faults.error_status
        error = StripeError(status, SERVER_ERROR_MESSAGE, type="api_error", logged=False)
        return _error_response(error, "", None)
    return outage_response() if fault == "outage" else None


@web.middleware
async def _stripe_gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What api.stripe.com does around every call: faults at the edge, authentication, rate
    limits, idempotency, error envelopes and the response headers Stripe sends."""
    state = request.config_dict[STATE]
    state.counters.requests += 1
    request_id = _random_id("req_", 14)
    response = await _injected_fault(request, state)
    if response is not None and response.content_type != "application/json":
        return response  # an outage: the load balancer answers, not Stripe
    if response is None:
        response = await _serve(request, handler, state, request_id)
    response.headers["Request-Id"] = request_id
    response.headers["Cache-Control"] = "no-cache, no-store"
    version = request.headers.get("Stripe-Version") or state.config.api_version
    response.headers.setdefault("Stripe-Version", version)
    idempotency_key = request.headers.get("Idempotency-Key")
    if request.method == "POST" and idempotency_key:
        response.headers["Idempotency-Key"] = idempotency_key
        response.headers.setdefault("Original-Request", request_id)
    return response


async def _serve(
    request: web.Request, handler: Handler, state: StripeEmulatorState, request_id: str
) -> web.StreamResponse:
    mode: Mode | None = None
    try:
        key, mode = _authenticate(request, state)
        reason = state.limiters.refusal(mode, request.method, request.path)
        if reason is not None:
            state.counters.rate_limited += 1
            return _rate_limited(mode, reason)
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if request.method != "POST":
            idempotency_key = None  # Stripe ignores them on GET and DELETE
        caller = Caller(
            mode=mode,
            key_scope=hashlib.sha256(key.encode()).hexdigest()[:24],
            request_id=request_id,
            idempotency_key=idempotency_key,
            params=await _params(request),
        )
        request[CALLER] = caller
        if idempotency_key is None:
            return await handler(request)
        return await _idempotent(request, handler, state, caller)
    except StripeError as error:
        return _error_response(error, request_id, mode)


async def _idempotent(
    request: web.Request, handler: Handler, state: StripeEmulatorState, caller: Caller
) -> web.StreamResponse:
    key = caller.idempotency_key
    assert key is not None
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise _invalid(
            f"Invalid Idempotency-Key: {key[:20]}...; must be at most"
            f" {IDEMPOTENCY_KEY_MAX_LENGTH} characters long.",
            None,
        )
    endpoint = f"{request.method} {request.path}"
    saved = state.account.saved_result(caller.key_scope, key)
    if saved is not None:
        return _replay(saved, endpoint, caller, state)
    try:
        response = await handler(request)
    except StripeError as error:
        if not error.saved:
            raise
        response = _error_response(error, caller.request_id, caller.mode)
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    result = SavedResult(
        endpoint, caller.params, response.status, response.body, caller.request_id, time.time()
    )
    state.account.save_result(caller.key_scope, key, result)
    return response


def _replay(
    saved: SavedResult, endpoint: str, caller: Caller, state: StripeEmulatorState
) -> web.Response:
    key = caller.idempotency_key
    if saved.endpoint != endpoint:
        raise StripeError(
            400,
            "Keys for idempotent requests can only be used for the same endpoint they were"
            f" first used for ('{saved.endpoint}' vs '{endpoint}'). Try using a key other than"
            f" '{key}' if you meant to execute a different request.",
            type="idempotency_error",
        )
    if saved.params != caller.params:
        raise StripeError(
            400,
            "Keys for idempotent requests can only be used with the same parameters they were"
            f" first used with. Try using a key other than '{key}' if you meant to execute a"
            " different request.",
            type="idempotency_error",
        )
    state.counters.idempotent_replays += 1
    response = web.Response(status=saved.status, body=saved.body, content_type="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    response.headers["Original-Request"] = saved.request_id
    if saved.status >= 400:
        response.headers["Stripe-Should-Retry"] = "false"
    return response


# --------------------------------------------------------------------------------------------
# Stripe endpoints
# --------------------------------------------------------------------------------------------


def _caller(request: web.Request) -> Caller:
    return request[CALLER]


def _account(request: web.Request) -> Account:
    return request.config_dict[STATE].account


def _expanded(customer: dict[str, Any], expand: Sequence[str], prefix: str = "") -> dict:
    """Apply ``expand[]`` (paths under `prefix`, "data." in lists): every expandable customer
    field is null here, and the includable lists (sources, subscriptions, tax_ids) empty."""
    extra: dict[str, Any] = {}
    for path in expand:
        name = path.removeprefix(prefix)
        if name not in EXPANDABLE or not path.startswith(prefix):
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        if name in INCLUDABLE_LISTS and not customer.get("deleted"):
            extra[name] = {
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": f"/v1/customers/{customer['id']}/{INCLUDABLE_LISTS[name]}",
            }
    return {**customer, **extra} if extra else customer


async def create_customer(request: web.Request) -> web.Response:
    caller = _caller(request)
    changes = _checked(caller.params, CUSTOMER_CREATE)
    customer = _account(request).create(changes, caller.context)
    return _json(200, _expanded(customer, changes.get("expand", [])))


async def retrieve_customer(request: web.Request) -> web.Response:
    caller = _caller(request)
    params = _checked(caller.params, RETRIEVE)
    customer = _account(request).retrieve(request.match_info["customer_id"], caller.mode)
    return _json(200, _expanded(customer, params.get("expand", [])))


async def update_customer(request: web.Request) -> web.Response:
    caller = _caller(request)
    changes = _checked(caller.params, CUSTOMER_UPDATE)
    account = _account(request)
    customer = account.update(request.match_info["customer_id"], changes, caller.context)
    return _json(200, _expanded(customer, changes.get("expand", [])))


async def delete_customer(request: web.Request) -> web.Response:
    caller = _caller(request)
    _checked(caller.params, DELETE)
    return _json(200, _account(request).delete(request.match_info["customer_id"], caller.context))


async def list_customers(request: web.Request) -> web.Response:
    caller = _caller(request)
    params = _checked(caller.params, CUSTOMER_LIST)
    page = _account(request).list_customers(caller.mode, params)
    data = [_expanded(customer, params.get("expand", []), "data.") for customer in page.data]
    body = {"object": "list", "data": data, "has_more": page.has_more, "url": "/v1/customers"}
    return _json(200, body)


async def search_customers(request: web.Request) -> web.Response:
    caller = _caller(request)
    params = _checked(caller.params, CUSTOMER_SEARCH)
    if params.get("query") is None:
        raise _invalid("Missing required param: query.", "query", "parameter_missing")
    query = parse_query(params["query"])
    expand = params.get("expand", [])
    counted = "total_count" in expand
    per_customer = [path for path in expand if path != "total_count"]
    page = _account(request).search(caller.mode, query, _limit(params), params.get("page"))
    body: dict[str, Any] = {
        "object": "search_result",
        "data": [_expanded(customer, per_customer, "data.") for customer in page.data],
        "has_more": page.has_more,
        "next_page": None if page.next_sequence is None else _page_token(page.next_sequence),
        "url": "/v1/customers/search",
    }
    if counted:
        body["total_count"] = page.total_count
    return _json(200, body)


async def list_events(request: web.Request) -> web.Response:
    caller = _caller(request)
    params = _checked(caller.params, EVENT_LIST)
    page = _account(request).list_events(caller.mode, params)
    body = {"object": "list", "data": page.data, "has_more": page.has_more, "url": "/v1/events"}
    return _json(200, body)


async def retrieve_event(request: web.Request) -> web.Response:
    caller = _caller(request)
    _checked(caller.params, RETRIEVE)
    return _json(200, _account(request).retrieve_event(request.match_info["event_id"], caller.mode))


async def unrecognized(request: web.Request) -> web.Response:
    raise StripeError(
        404,
        f"Unrecognized request URL ({request.method}: {request.path}). Please see"
        " https://stripe.com/docs or we can help at https://support.stripe.com/.",
    )


def create_app(config: StripeEmulatorConfig, store: DurableStore | None = None) -> web.Application:
    """The emulator as an aiohttp application over `store` (in memory when None)."""
    state = StripeEmulatorState(config, store if store is not None else DurableStore(None))
    api = web.Application(middlewares=[_stripe_gateway])
    api.add_routes(
        [
            web.get("/customers", list_customers),
            web.post("/customers", create_customer),
            web.get("/customers/search", search_customers),
            web.get("/customers/{customer_id}", retrieve_customer),
            web.post("/customers/{customer_id}", update_customer),
            web.delete("/customers/{customer_id}", delete_customer),
            web.get("/events", list_events),
            web.get("/events/{event_id}", retrieve_event),
            web.route("*", "/{tail:.*}", unrecognized),
        ]
    )
    app = web.Application()
    app[STATE] = state
    app.add_subapp("/v1", api)
    add_control_routes(app, state)
    app.on_cleanup.append(lambda _: _close(state.store))
    return app


async def _close(store: DurableStore) -> None:
    store.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = emulator_parser(
        "stripe", "Serve a local Stripe customers API.", 12111, "secret API key"
    )
    parser.add_argument("--live-reads", type=int, help="live-mode reads per second (100)")
    parser.add_argument("--live-writes", type=int, help="live-mode writes per second (100)")
    parser.add_argument("--test-reads", type=int, help="test-mode reads per second (25)")
    parser.add_argument("--test-writes", type=int, help="test-mode writes per second (25)")
    parser.add_argument("--search-rate", type=int, help="searches per second (20)")
    parser.add_argument("--search-lag", type=float, help="seconds before a write is searchable")
    args = parser.parse_args(argv)
    settings = {
        "required_key": args.token,
        "live_reads_per_second": args.live_reads,
        "live_writes_per_second": args.live_writes,
        "test_reads_per_second": args.test_reads,
        "test_writes_per_second": args.test_writes,
        "search_per_second": args.search_rate,
        "search_lag_seconds": args.search_lag,
    }
    if args.unlimited:
        settings |= {name: UNLIMITED for name in settings if name.endswith("_per_second")}
    config = StripeEmulatorConfig(**{k: v for k, v in settings.items() if v is not None})
    serve(lambda store: create_app(config, store), args.host, args.port, args.data,
          args.receipts, print=None)  # fmt: skip


if __name__ == "__main__":
    main()
