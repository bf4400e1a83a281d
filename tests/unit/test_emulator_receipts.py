"""What every emulator shares: the benchmarks' receipts of record writes."""

from __future__ import annotations

from emulators.common import DurableStore, Receipts


def test_receipts_note_each_synced_record_write_with_its_marker() -> None:
    """`--receipts` (benchmarks): when each write of a record carrying a crmsync id arrived,
    with the number in a `B<n>` state (HubSpot `state`, Stripe `address.state`)."""
    store = DurableStore(None, Receipts())
    customer = "5f0c7a9e-2b1d-4c3e-9f8a-1b2c3d4e5f60"
    store.put("contacts", "1", {"properties": {"crmsync_id": customer, "state": "B42"}})
    store.put("users", "2", {"external_id": customer, "name": "Ada"})
    store.put("events", "3", {"type": "customer.updated"})  # no customer id: not a receipt
    assert store.receipts is not None
    entries = store.receipts.since(0)["receipts"]
    assert [(c, m) for _, c, m in entries] == [(customer, 42), (customer, -1)]
    assert store.receipts.since(1)["next"] == 2
