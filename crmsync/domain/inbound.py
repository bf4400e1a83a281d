"""Changes made in a target, as they come back through its staging table.

The inbound side mirrors each external record into `staging.<table>` exactly as the vendor's
API returns it; Debezium captures that table. `parse_staging_event` reads one such CDC record
into the record's mapped properties (after the change, and before it when Debezium sends the
old row), and `decode` turns a target's properties back into golden-record fields, normalised
the same way as a canonical row, so that a value we wrote and the target echoes back compares
equal to the golden one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from crmsync.domain.customer import GoldenRecord, normalise_value
from crmsync.domain.events import SourcePosition
from crmsync.domain.mapping import FieldMapping, TargetMapping
from crmsync.domain.writes import Ledger
from crmsync.errors import ValidationFailed

__all__ = [
    "STAGING_TABLES",
    "InboundChange",
    "Relinked",
    "Resolution",
    "StagedRecord",
    "decode",
    "parse_inbound",
    "parse_staging_event",
    "split_name",
]

#: Each target's staging mirror, in schema `staging`.
STAGING_TABLES = {"crm": "crm_contacts", "billing": "billing_customers", "support": "support_users"}
#: Where a vendor's object keeps the mapped properties (HubSpot nests them; the others don't).
_PROPERTIES_ROOT = {"hubspot": "properties"}
#: Properties a vendor takes in one form and returns in another: Zendesk takes an IANA zone
#: in `time_zone` but answers with its Rails name there and the IANA one beside it.
_READ_FROM = {"zendesk": {"time_zone": "iana_time_zone"}}
_FLAGS = frozenset({"consent_email", "consent_sms", "do_not_contact"})


class StagedRecord(BaseModel):
    """One staging row change: the record's mapped properties, keyed by target property name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    external_id: str
    customer_id: str | None  # the id property we wrote, when the record carries it
    properties: dict[str, Any]
    previous: dict[str, Any] | None  # the same for the row before (None: first seen)
    deleted: bool
    source: SourcePosition


class InboundChange(BaseModel):
    """A staged record routed to its canonical customer (on `crmsync.inbound`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["record"] = "record"
    customer_id: str
    system: str
    properties: dict[str, Any]
    previous: dict[str, Any] | None
    deleted: bool
    source: SourcePosition
    #: Set when identity resolution has just linked this record (made in the target by a
    #: person) to the customer, by this method: the golden record keeps its values, the
    #: record fills the golden record's gaps, and the whole golden record is written to it.
    link: str | None = None
    #: What we had written to the record when it was routed (`sync.target_writes`): the
    #: values in it that are our own writes (crmsync.domain.writes).
    written: Ledger = {}


class Relinked(BaseModel):
    """The customer's record in `systems` changed hands (a merge moved the loser's record to
    it, or undoing one took a record away): write the whole golden record there, whatever
    the state says those systems were last told."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["relinked"] = "relinked"
    customer_id: str
    systems: list[str]
    reason: str
    source: SourcePosition


class Resolution(BaseModel):
    """A person's decision on a conflict (`crmsync review resolve`, on `crmsync.inbound`):
    `value` becomes the field's golden value and is written to every system."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["resolution"] = "resolution"
    customer_id: str
    field: str
    value: Any
    review_id: int
    resolved_by: str
    source: SourcePosition


def parse_inbound(value: bytes) -> InboundChange | Resolution | Relinked:
    """A `crmsync.inbound` record (ValidationFailed or pydantic's ValidationError if bad)."""
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("value", f"not JSON: {exc}") from None
    if isinstance(document, dict) and document.get("kind") == "resolution":
        return Resolution.model_validate(document)
    if isinstance(document, dict) and document.get("kind") == "relinked":
        return Relinked.model_validate(document)
    return InboundChange.model_validate(document)


def _lookup(obj: Any, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def mapped_properties(vendor: str, mapping: TargetMapping, payload: Any) -> dict[str, Any]:
    """The properties `mapping` reads, from a vendor object; "" (HubSpot's empty) is None.
    A property the object does not carry is left out, which is not the same as cleared."""
    root = payload.get(_PROPERTIES_ROOT[vendor], {}) if vendor in _PROPERTIES_ROOT else payload
    found = {}
    read_from = _READ_FROM.get(vendor, {})
    for prop in [m.property for m in mapping.fields.values()] + [mapping.id_property]:
        present, value = _lookup(root, read_from.get(prop, prop))
        if present:
            found[prop] = None if value == "" else value
    return found


def _row(image: Any) -> dict[str, Any] | None:
    if not isinstance(image, dict):
        return None
    payload = image.get("payload")
    if isinstance(payload, str):  # Debezium sends jsonb as text
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ValidationFailed("payload", "staging payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ValidationFailed("payload", "staging payload is not a JSON object")
    return {**image, "payload": payload}


def _epoch_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        raise ValidationFailed("source_updated_at", f"not a timestamp: {value!r}") from None


def parse_staging_event(
    value: bytes,
    *,
    system: str,
    vendor: str,
    mapping: TargetMapping,
    topic: str,
    partition: int,
    offset: int,
) -> StagedRecord | None:
    """One staging-table CDC record -> the staged record (None when there is nothing to
    judge: a tombstone or a hard delete of the mirror row)."""
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("value", f"not JSON: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("op") not in ("c", "u", "r", "d"):
        raise ValidationFailed("op", "not a Debezium change envelope")
    after = _row(envelope.get("after"))
    if after is None:
        return None
    before = _row(envelope.get("before"))
    external_id = str(after.get("external_id") or "")
    if not external_id:
        raise ValidationFailed("external_id", "staging row without an external id")
    properties = mapped_properties(vendor, mapping, after["payload"])
    customer_id = properties.get(mapping.id_property)
    source = envelope.get("source") or {}
    return StagedRecord(
        external_id=external_id,
        customer_id=str(customer_id) if customer_id else None,
        properties=properties,
        previous=mapped_properties(vendor, mapping, before["payload"]) if before else None,
        deleted=bool(after.get("deleted")),
        source=SourcePosition(
            system=system,
            topic=topic,
            partition=partition,
            offset=offset,
            op=envelope["op"],
            lsn=source.get("lsn"),
            tx_id=source.get("txId"),
            ts_ms=_epoch_ms(after.get("source_updated_at")),
            snapshot=source.get("snapshot") not in (None, "false", False),
            external_id=external_id,
        ),
    )


def split_name(full: str | None, fields: tuple[str, ...], golden: GoldenRecord) -> dict[str, Any]:
    """A joined property (a full name) back into its fields. Where the golden record's first
    or last name still fits, it is kept ("Grace Brewster Hopper" with first name Grace keeps
    Grace); otherwise the first word is the first field and the rest the second."""
    first, last = fields
    current = {first: getattr(golden, first), last: getattr(golden, last)}
    if full is None:
        return {first: None, last: None}
    joined = " ".join(v for v in current.values() if v)
    if full == joined:
        return current
    if current[first] and full.startswith(current[first] + " "):
        return {first: current[first], last: full[len(current[first]) + 1 :]}
    if current[last] and full.endswith(" " + current[last]):
        return {first: full[: -len(current[last]) - 1], last: current[last]}
    head, _, rest = full.partition(" ")
    return {first: head, last: rest or None}


def _from_target(name: str, mapping: FieldMapping, value: Any) -> Any:
    if value is not None and mapping.values is not None:
        reverse = {v: k for k, v in mapping.values.items()}
        if value not in reverse:
            raise ValidationFailed(name, f"{value!r} is not a value crmsync maps for {name}")
        return reverse[value]
    if name in _FLAGS and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # HubSpot sends booleans as text
    return value


def decode(
    mapping: TargetMapping, properties: dict[str, Any], golden: GoldenRecord
) -> tuple[dict[str, Any], dict[str, str]]:
    """A target's properties -> (golden-record fields, normalised; why each field that could
    not be read was refused). Only the fields whose properties are present."""
    raw: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, field in mapping.fields.items():
        if field.property not in properties:
            continue
        value = properties[field.property]
        if field.join is not None:
            if len(field.join) == 2:
                raw.update(split_name(value if value is None else str(value), field.join, golden))
            continue
        try:
            raw[name] = _from_target(name, field, value)
        except ValidationFailed as exc:
            problems[name] = str(exc)
    country = golden.country
    if "country" in raw:
        with contextlib.suppress(ValidationFailed):  # else refused below, with the reason
            country = normalise_value("country", raw["country"])
    values = {}
    for name, value in raw.items():
        try:
            values[name] = normalise_value(name, value, country)
        except ValidationFailed as exc:
            problems[name] = str(exc)
    return values, problems
