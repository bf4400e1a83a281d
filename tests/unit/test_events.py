"""parse_customer_event: Debezium envelopes for public.customers become normalised changes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.domain.events import CustomerChange, parse_customer_event
from crmsync.errors import ValidationFailed

CID = "0b6f6a39-3c1e-4a53-8d1c-5f0f1b2e9a11"
TOPIC = "crmsync.public.customers"
ROW = {
    "id": CID,
    "email": " Alice@Example.com ",
    "first_name": "Alice",
    "country": "germany",
    "phone": "030 1234567",
    "lifecycle_stage": "Trial",
    "birth_date": 7305,
    "consent_email": True,
    "updated_at": "2024-05-01T10:00:00.000000Z",
    "deleted_at": None,
}
SOURCE = {
    "version": "3.0.0.Final",
    "connector": "postgresql",
    "name": "crmsync",
    "ts_ms": 1714557600000,
    "snapshot": "false",
    "db": "crmsync",
    "schema": "public",
    "table": "customers",
    "txId": 771,
    "lsn": 24023128,
}


def key(customer_id: Any = CID) -> bytes:
    return orjson.dumps({"id": customer_id})


def envelope(op: str, *, before: Any = None, after: Any = None, **source: Any) -> bytes:
    return orjson.dumps(
        {
            "before": before,
            "after": after,
            "source": {**SOURCE, **source},
            "op": op,
            "ts_ms": 1714557600123,
        }
    )


def parse(key_bytes: bytes | None, value: bytes | None, offset: int = 42) -> CustomerChange | None:
    return parse_customer_event(key_bytes, value, topic=TOPIC, partition=3, offset=offset)


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_row_image_ops_carry_the_normalised_record(op: str) -> None:
    before = ROW if op == "u" else None
    change = parse(key(), envelope(op, before=before, after=ROW))
    assert change is not None
    assert change.customer_id == CID
    assert change.op == op
    assert change.record is not None
    assert change.record.id == CID
    assert change.record.email == "alice@example.com"
    assert change.record.phone == "+49301234567"
    assert change.record.country == "DE"
    assert change.record.lifecycle_stage == "trial"
    assert change.record.birth_date == "1990-01-01"


def test_delete_has_no_record() -> None:
    change = parse(key(), envelope("d", before={"id": CID}, after=None))
    assert change is not None
    assert change.op == "d"
    assert change.record is None
    assert change.customer_id == CID


def test_source_position_is_kept() -> None:
    change = parse(key(), envelope("u", after=ROW), offset=1234)
    assert change is not None
    source = change.source
    assert (source.topic, source.partition, source.offset) == (TOPIC, 3, 1234)
    assert source.op == "u"
    assert source.lsn == 24023128
    assert source.tx_id == 771
    assert source.ts_ms == 1714557600000
    assert source.snapshot is False
    assert source.system == "canonical"


@pytest.mark.parametrize(("flag", "expected"), [("true", True), ("last", True), ("first", True)])
def test_snapshot_reads_are_flagged(flag: str, expected: bool) -> None:
    change = parse(key(), envelope("r", after=ROW, snapshot=flag))
    assert change is not None
    assert change.source.snapshot is expected


@pytest.mark.parametrize("flag", ["false", None])
def test_streamed_changes_are_not_snapshots(flag: str | None) -> None:
    change = parse(key(), envelope("u", after=ROW, snapshot=flag))
    assert change is not None
    assert change.source.snapshot is False


def test_missing_source_fields_are_none() -> None:
    raw = orjson.dumps({"op": "c", "after": ROW})
    change = parse(key(), raw)
    assert change is not None
    assert (change.source.lsn, change.source.tx_id, change.source.ts_ms) == (None, None, None)


def test_tombstone_is_none() -> None:
    assert parse(key(), None) is None


@pytest.mark.parametrize(
    "bad_key",
    [
        None,
        b"",
        b"not json",
        orjson.dumps({"customer": CID}),
        orjson.dumps({"id": None}),
        orjson.dumps({"id": ""}),
        orjson.dumps([CID]),
        orjson.dumps(CID),
    ],
)
def test_bad_key_is_a_validation_failure(bad_key: bytes | None) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse(bad_key, envelope("c", after=ROW))
    assert caught.value.field == "key"


def test_bad_key_fails_even_for_a_tombstone() -> None:
    with pytest.raises(ValidationFailed):
        parse(b"{}", None)


@pytest.mark.parametrize("value", [b"not json", b'{"op": ', b"\xff\xfe"])
def test_value_that_is_not_json_is_a_validation_failure(value: bytes) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse(key(), value)
    assert caught.value.field == "value"


@pytest.mark.parametrize(
    "value",
    [
        orjson.dumps({"op": "x", "after": ROW}),
        orjson.dumps({"after": ROW}),
        orjson.dumps([1, 2, 3]),
        orjson.dumps("c"),
    ],
)
def test_value_that_is_not_an_envelope_is_a_validation_failure(value: bytes) -> None:
    with pytest.raises(ValidationFailed):
        parse(key(), value)


@pytest.mark.parametrize("op", ["c", "u", "r"])
def test_upsert_without_an_after_image_is_a_validation_failure(op: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse(key(), envelope(op, after=None))
    assert caught.value.field == "after"


def test_invalid_row_surfaces_the_field() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse(key(), envelope("u", after={**ROW, "email": "nope"}))
    assert caught.value.field == "email"


def test_schemas_enabled_envelope_parses_like_the_plain_one() -> None:
    plain = orjson.loads(envelope("u", after=ROW))
    wrapped_value = orjson.dumps(
        {"schema": {"type": "struct", "optional": False}, "payload": plain}
    )
    wrapped_key = orjson.dumps({"schema": {"type": "struct"}, "payload": {"id": CID}})
    assert parse(wrapped_key, wrapped_value) == parse(key(), envelope("u", after=ROW))


def test_schemas_enabled_delete_parses() -> None:
    plain = orjson.loads(envelope("d", before={"id": CID}))
    change = parse(key(), orjson.dumps({"schema": {}, "payload": plain}))
    assert change is not None
    assert change.op == "d"
    assert change.record is None


@given(
    op=st.sampled_from(["c", "u", "r", "d"]),
    lsn=st.none() | st.integers(0, 2**62),
    tx_id=st.none() | st.integers(0, 2**31),
    offset=st.integers(0, 2**40),
)
def test_any_well_formed_envelope_keeps_its_position(
    op: str, lsn: int | None, tx_id: int | None, offset: int
) -> None:
    after = None if op == "d" else ROW
    change = parse(key(), envelope(op, after=after, lsn=lsn, txId=tx_id), offset=offset)
    assert change is not None
    assert (change.op, change.source.op) == (op, op)
    assert (change.source.lsn, change.source.tx_id, change.source.offset) == (lsn, tx_id, offset)
    assert (change.record is None) == (op == "d")
