"""The state table's values (streams.state): a customer's state packed small, read back whole,
and states stored before compression still read."""

from __future__ import annotations

import pytest

from crmsync.domain.decide import CustomerState, apply
from streams.state import pack, unpack
from tests.unit.test_two_way import NOW, ROW, RULES, T0, canonical

FULL = {**ROW, "street": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH",
        "region": "Westminster", "company_name": "Analytical Engines Ltd",
        "lifecycle_stage": "customer", "owner_email": "sales@example.com"}  # fmt: skip


def synced_customer() -> CustomerState:
    """A customer created and changed a few times, pushed to every target."""
    state = apply(None, canonical(FULL, offset=1, at=T0, op="c"), RULES, now=NOW).state
    for n in range(2, 5):
        change = canonical({**FULL, "city": f"City {n}"}, offset=n, at=T0 + n, before=FULL)
        state = apply(state, change, RULES, now=NOW).state
    return state


def test_a_packed_state_reads_back_equal_and_is_a_fraction_of_its_json() -> None:
    state = synced_customer()
    packed = pack(state)

    assert unpack(packed) == state
    assert len(packed) < len(state.model_dump_json()) / 3


def test_a_state_stored_as_plain_json_before_compression_is_still_read() -> None:
    state = synced_customer()

    assert unpack(state.model_dump_json().encode()) == state


def test_a_state_in_an_unknown_format_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        unpack(b"\x07" + pack(synced_customer())[1:])
