"""Pure parts of `crmsync dlq`: which row an ingest letter names, and `--since`."""

from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest

from crmsync.dlq import _row_id, _where, parse_since

ID = str(uuid.uuid4())


@pytest.mark.parametrize(
    "key",
    [
        orjson.dumps({"id": ID}).decode(),  # Debezium's key, JSON converter without schemas
        orjson.dumps({"schema": {}, "payload": {"id": ID}}).decode(),  # with schemas
        ID,
        ID.upper(),
    ],
)
def test_an_ingest_letter_names_its_row_by_debeziums_key(key: str) -> None:
    assert _row_id(key) == ID


@pytest.mark.parametrize("key", ["", "{}", '{"id": "x"}', "not json", "[1]", "'; drop table x"])
def test_a_key_naming_no_customer_row_names_none(key: str) -> None:
    assert _row_id(key) is None


def test_since_takes_durations_and_iso_times() -> None:
    now = dt.datetime.now(dt.UTC)
    assert abs((now - parse_since("2h")) - dt.timedelta(hours=2)) < dt.timedelta(seconds=5)  # type: ignore[operator]
    assert parse_since("2026-01-02T03:04:05") == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_since(None) is None
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_since_means_seen_since_so_a_failure_that_keeps_coming_back_is_listed() -> None:
    """A letter counts each time its failure comes back: one first written a week ago and
    seen a minute ago is recent."""
    moment = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    where, params = _where(None, "crm", moment, everything=False)
    assert where == " where target = %s and last_failed_at >= %s and replayed_at is null"
    assert params == ["crm", moment]
