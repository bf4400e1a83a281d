"""Debezium change events for `public.customers`, parsed and normalised.

The envelope is what Kafka Connect's JsonConverter writes with schemas disabled:
`{"before", "after", "source", "op", "ts_ms"}`; a delete is followed by a tombstone (null value).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from crmsync.domain.customer import GoldenRecord, normalise_customer
from crmsync.errors import ValidationFailed

if TYPE_CHECKING:
    from crmsync.domain.limits import IngestPolicy

__all__ = ["CustomerChange", "SourcePosition", "parse_customer_event"]

Op = Literal["c", "u", "r", "d"]


class SourcePosition(BaseModel):
    """Where a change came from: enough to find it again and to derive stable keys from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str = "canonical"
    topic: str
    partition: int
    offset: int
    op: Op
    lsn: int | None = None
    tx_id: int | None = None
    ts_ms: int | None = None  # when the source committed the change (epoch ms)
    snapshot: bool = False
    external_id: str | None = None  # the system's record id, for changes from a target


class CustomerChange(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: str
    op: Op
    record: GoldenRecord | None  # None for a hard delete
    source: SourcePosition
    #: The row before an update, when Debezium sends it (REPLICA IDENTITY FULL) and it is
    #: valid: the fields that differ are the ones the writer changed.
    before: GoldenRecord | None = None
    #: Set when crmsync itself wrote the row (`public.customers.sync_origin`): a write-back.
    origin: str | None = None


def _loads(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(what, f"not JSON: {exc}") from None


def _customer_id(key: bytes | None) -> str:
    if not key:
        raise ValidationFailed("key", "record has no key")
    parsed = _loads(key, "key")
    if isinstance(parsed, dict) and "payload" in parsed:  # schemas enabled
        parsed = parsed["payload"]
    if not isinstance(parsed, dict) or not parsed.get("id"):
        raise ValidationFailed("key", f"expected {{'id': ...}}, got {parsed!r}")
    return str(parsed["id"])


def parse_customer_event(
    key: bytes | None,
    value: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    policy: IngestPolicy | None = None,
) -> CustomerChange | None:
    """One CDC record -> a normalised change, None for a tombstone, or ValidationFailed. With
    the ingest `policy`, a row some target cannot take is refused here, before any target
    hears of it: a new customer reaches none, an update leaves every target as it was."""
    customer_id = _customer_id(key)
    if value is None:
        return None
    envelope = _loads(value, "value")
    if isinstance(envelope, dict) and "payload" in envelope and "schema" in envelope:
        envelope = envelope["payload"]
    if not isinstance(envelope, dict) or envelope.get("op") not in ("c", "u", "r", "d"):
        raise ValidationFailed("op", "not a Debezium change envelope")
    op: Op = envelope["op"]
    source = envelope.get("source") or {}
    position = SourcePosition(
        topic=topic,
        partition=partition,
        offset=offset,
        op=op,
        lsn=source.get("lsn"),
        tx_id=source.get("txId"),
        ts_ms=source.get("ts_ms"),
        snapshot=source.get("snapshot") not in (None, "false", False),
    )
    if op == "d":
        return CustomerChange(customer_id=customer_id, op=op, record=None, source=position)
    after = envelope.get("after")
    if not isinstance(after, dict):
        raise ValidationFailed("after", f"op {op!r} without an after image")
    record = normalise_customer(after, policy)
    before = None
    if op == "u" and isinstance(envelope.get("before"), dict):
        try:
            before = normalise_customer(envelope["before"])
        except ValidationFailed:  # the writer fixed an invalid row: compare with the state
            before = None
    return CustomerChange(
        customer_id=customer_id,
        op=op,
        record=record,
        source=position,
        before=before,
        origin=after.get("sync_origin"),
    )
