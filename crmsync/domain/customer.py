"""The golden record: a canonical customer row, validated and normalised.

Apps write free text; this is where it becomes comparable: emails lower-cased and checked,
phones in E.164, countries as ISO 3166-1 alpha-2, enums from their fixed sets, free text
(names, company, address) without terminal escapes or control characters, birth dates only
when a living customer can have them. What the targets can take is checked by the ingest
policy (crmsync.domain.limits) handed to `normalise_customer`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import available_timezones

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict

from crmsync.errors import ValidationFailed

if TYPE_CHECKING:
    from crmsync.domain.limits import IngestPolicy

__all__ = [
    "EARLIEST_BIRTH_DATE",
    "ENUM_VALUES",
    "SYNCED_FIELDS",
    "GoldenRecord",
    "normalise_customer",
    "normalise_value",
]

LifecycleStage = Literal["lead", "trial", "customer", "churned"]
PlanTier = Literal["free", "pro", "enterprise"]
Status = Literal["active", "suspended", "churned"]

ENUM_VALUES: dict[str, frozenset[str]] = {
    "lifecycle_stage": frozenset({"lead", "trial", "customer", "churned"}),
    "plan_tier": frozenset({"free", "pro", "enterprise"}),
    "status": frozenset({"active", "suspended", "churned"}),
}
# Names people write that pycountry does not resolve on its own.
_COUNTRY_ALIASES = {"UK": "GB", "GREAT BRITAIN": "GB", "ENGLAND": "GB", "EL": "GR"}
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
# Terminal control sequences (ECMA-48), each removed whole so that no "[31m" is left behind:
# CSI (ESC [ or 0x9B, parameters, intermediates, a final byte: colours, cursor moves), the
# string commands up to BEL or ST (OSC window titles and links, DCS, SOS, PM, APC), and the
# two-byte escapes.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"
)
# C0 and C1 control characters and DEL (Unicode's Cc); the ones that are whitespace (tab,
# newline, the information separators, NEL) become a space.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: No living customer was born before this (the oldest person on record was born in 1875 and
#: died in 1997): an earlier birth date is a typo or a placeholder such as 1800-01-01.
EARLIEST_BIRTH_DATE = dt.date(1900, 1, 1)
# The IANA names tzdata ships (not its folders, nor files such as "localtime" or "Factory").
_TIME_ZONES = frozenset(available_timezones()) - {"localtime", "posixrules", "Factory"}


class GoldenRecord(BaseModel):
    """One customer as every system should see it. JSON-native values only (dates as ISO)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company_name: str | None = None
    street: str | None = None
    city: str | None = None
    postal_code: str | None = None
    region: str | None = None
    country: str | None = None
    birth_date: str | None = None
    lifecycle_stage: LifecycleStage | None = None
    plan_tier: PlanTier | None = None
    status: Status | None = None
    timezone: str | None = None
    language: str | None = None
    consent_email: bool = False
    consent_sms: bool = False
    do_not_contact: bool = False
    owner_email: str | None = None
    updated_at: str | None = None
    deleted_at: str | None = None


# Fields that are synced (the ones ownership and mapping may name).
SYNCED_FIELDS = frozenset(GoldenRecord.model_fields) - {"id", "updated_at", "deleted_at"}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = _SPACES.sub(" ", str(value)).strip()
    return text or None


def _free_text(value: Any) -> str | None:
    """Names, company and address as people read them: escape sequences and control
    characters pasted from a terminal or a spreadsheet are stripped, not refused (the text
    around them is what the app meant), then whitespace is collapsed."""
    if value is None:
        return None
    text = _ESCAPES.sub("", str(value))
    text = _CONTROLS.sub(lambda m: " " if m.group().isspace() else "", text)
    return _text(text)


def _email(field: str, value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return validate_email(text, check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValidationFailed(field, f"invalid email {text!r}: {exc}") from None


def _country(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = _COUNTRY_ALIASES.get(text.upper(), text)
    try:
        return str(pycountry.countries.lookup(text).alpha_2)
    except LookupError:
        raise ValidationFailed("country", f"unknown country {text!r}") from None


def _phone(value: Any, country: str | None) -> str | None:
    text = _text(value)
    if text is None:
        return None
    try:
        number = phonenumbers.parse(text, country)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed("phone", f"unparseable phone {text!r}: {exc}") from None
    if not phonenumbers.is_possible_number(number):
        raise ValidationFailed("phone", f"impossible phone number {text!r}")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    # Normalising must be idempotent: a target echoes the value back and it must compare
    # equal. A trunk prefix written after the country code ("0049 0...") survives one pass,
    # so read the result again until it no longer changes.
    for _ in range(3):
        again = phonenumbers.format_number(
            phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.E164
        )
        if again == e164:
            break
        e164 = again
    return e164


def _enum(field: str, value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    folded = text.lower().replace(" ", "_")
    if folded not in ENUM_VALUES[field]:
        allowed = ", ".join(sorted(ENUM_VALUES[field]))
        raise ValidationFailed(field, f"{text!r} is not one of {allowed}")
    return folded


def _birth_date(value: Any) -> str | None:
    """Debezium sends a `date` as days since the epoch (Connect's Date type) or ISO text. A
    date in the future (today anywhere on Earth, UTC+14, is not) or before 1900 is refused."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a date")
        if isinstance(value, int):
            date = dt.date(1970, 1, 1) + dt.timedelta(days=value)
        else:
            date = dt.date.fromisoformat(str(value))
    except (ValueError, OverflowError):
        raise ValidationFailed("birth_date", f"not a date: {value!r}") from None
    latest = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=14)).date()
    if date > latest:
        raise ValidationFailed("birth_date", f"{date.isoformat()} is in the future")
    if date < EARLIEST_BIRTH_DATE:
        raise ValidationFailed(
            "birth_date",
            f"{date.isoformat()} is before {EARLIEST_BIRTH_DATE.year}: not a"
            " living customer's birth date",
        )
    return date.isoformat()


def _timezone(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    if text not in _TIME_ZONES:
        raise ValidationFailed("timezone", f"unknown IANA time zone {text!r}")
    return text


def _language(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    text = text.replace("_", "-")
    if not _LANGUAGE.match(text):
        raise ValidationFailed("language", f"not a language tag: {text!r}")
    primary, _, rest = text.partition("-")
    return primary.lower() + (f"-{rest.upper()}" if rest else "")


def _timestamp(value: Any) -> str | None:
    """Debezium writes timestamptz as ISO-8601 text (ZonedTimestamp)."""
    if value is None:
        return None
    if isinstance(value, int):  # epoch millis, should a converter send them
        return dt.datetime.fromtimestamp(value / 1000, dt.UTC).isoformat()
    return str(value)


def _flag(field: str, value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise ValidationFailed(field, f"expected a boolean, got {value!r}")


_NORMALISERS: dict[str, Callable[[Any], Any]] = {
    "email": lambda v: _email("email", v),
    "owner_email": lambda v: _email("owner_email", v),
    "country": _country,
    "birth_date": _birth_date,
    "timezone": _timezone,
    "language": _language,
    **{f: (lambda v, f=f: _enum(f, v)) for f in ENUM_VALUES},
    **{f: (lambda v, f=f: _flag(f, v)) for f in ("consent_email", "consent_sms", "do_not_contact")},
}


def normalise_value(field: str, value: Any, country: str | None = None) -> Any:
    """One synced field's value, normalised as in the golden record (a phone is read in the
    customer's `country`), or ValidationFailed."""
    if field == "phone":
        return _phone(value, country)
    return _NORMALISERS.get(field, _free_text)(value)


def normalise_customer(row: dict[str, Any], policy: IngestPolicy | None = None) -> GoldenRecord:
    """A `public.customers` row (as Debezium sends it) -> the golden record, or ValidationFailed.
    With a `policy`, a live customer that a target cannot take is refused too."""
    if not row.get("id"):
        raise ValidationFailed("id", "missing customer id")
    country = _country(row.get("country"))
    values = {f: normalise_value(f, row.get(f), country) for f in SYNCED_FIELDS}
    record = GoldenRecord(
        id=str(row["id"]),
        **values,
        updated_at=_timestamp(row.get("updated_at")),
        deleted_at=_timestamp(row.get("deleted_at")),
    )
    if policy is not None:
        policy.check(record)
    return record
