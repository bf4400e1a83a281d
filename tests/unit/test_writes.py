"""The write ledger's rules (crmsync.domain.writes): what counts as our own write."""

from __future__ import annotations

from crmsync.domain.writes import REMEMBERED, Written, acknowledged, sending, withdrawn

T = 1_714_557_600_000


def test_a_write_is_in_flight_until_acknowledged_and_then_remembered_with_when_sent() -> None:
    ledger = sending({}, {"phone": "+1", "name": None})
    assert ledger["phone"] == Written(pending=("+1",)) and ledger["name"].pending == (None,)
    ledger = acknowledged(ledger, {"phone": "+1", "name": None}, T)
    assert ledger["phone"] == Written(values=("+1",), at=T)
    assert ledger["name"] == Written(values=(None,), at=T)  # a cleared value is a value too


def test_the_last_values_are_remembered_newest_last_each_once() -> None:
    ledger = {}
    for n, value in enumerate(["a", "b", "a", "c", "d"]):
        ledger = acknowledged(ledger, {"city": value}, T + n)
    assert ledger["city"].values == ("a", "c", "d")[-REMEMBERED:]
    assert ledger["city"].at == T + 4


def test_a_failed_write_is_withdrawn_and_the_acknowledged_values_stay() -> None:
    ledger = acknowledged({}, {"city": "Berlin"}, T)
    ledger = withdrawn(sending(ledger, {"city": "Paris"}))
    assert ledger["city"] == Written(values=("Berlin",), at=T)


def test_a_copy_is_covered_when_from_before_the_second_our_last_write_was_sent_in() -> None:
    sent = T + 400  # T is a whole second
    written = Written(values=("Berlin",), at=sent)
    assert written.covers(T - 60_000) and written.covers(T - 1)
    # Stripe and Zendesk stamp whole seconds: an edit made just after our write reads as T.
    assert not written.covers(T) and not written.covers(sent + 1)
    assert not Written(pending=("Paris",)).covers(T)  # in flight: the copy is judged
