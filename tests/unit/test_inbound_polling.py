"""The pollers' paging (adapters.inbound) over in-memory vendor fakes that page the way the
vendors document it: HubSpot's search cap, Stripe's `ending_before`, Zendesk's export cursor.
The real APIs are exercised in tests/integration/test_inbound.py; these cover paths that need
thousands of records there."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from adapters import hubspot
from adapters.inbound import (
    HubSpotInbound,
    InboundSource,
    PollPage,
    StripeInbound,
    ZendeskInbound,
    hubspot_staged,
    stripe_staged,
    zendesk_staged,
)
from crmsync.errors import PermanentError

T = TypeVar("T")
NOW_MS = int(time.time() * 1000) - 60_000  # well before the search settles


async def call(request: Callable[[], Awaitable[T]]) -> T:
    return await request()


async def poll(source: InboundSource, cursor: str | None) -> tuple[list[PollPage], str | None]:
    pages, state = [], source.start_poll(cursor)
    while state is not None:
        page = await source.poll_page(state)
        pages.append(page)
        cursor = page.cursor if page.cursor is not None else cursor
        state = page.next
    return pages, cursor


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class FakeHubSpot:
    """Search as HubSpot pages it: offsets as `after`, refused past the result cap."""

    modified_property = "lastmodifieddate"

    def __init__(self, stamps: list[int]) -> None:
        self.contacts = [
            {"id": str(n + 1), "properties": {"lastmodifieddate": iso(ms)},
             "createdAt": iso(ms), "updatedAt": iso(ms), "archived": False}
            for n, ms in enumerate(stamps)
        ]  # fmt: skip
        self.searches = 0

    async def search_modified_since(
        self, since_ms: int, properties: list[str], *, after: str | None = None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        self.searches += 1
        offset = int(after or 0)
        if offset >= hubspot.SEARCH_RESULT_CAP:
            raise PermanentError(400, "The search endpoints are limited to 10000 total results")
        ms = lambda c: int(datetime.fromisoformat(c["updatedAt"]).timestamp() * 1000)  # noqa: E731
        matches = sorted((c for c in self.contacts if ms(c) >= since_ms), key=ms)
        page = matches[offset : offset + limit]
        more = offset + limit < len(matches)
        return page, str(offset + limit) if more else None


@pytest.fixture
def small_search_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hubspot, "SEARCH_RESULT_CAP", 10)
    monkeypatch.setattr(hubspot, "SEARCH_PAGE_LIMIT", 3)


async def test_hubspot_polling_restarts_from_the_last_time_seen_at_the_search_cap(
    small_search_cap: None,
) -> None:
    stamps = [NOW_MS + 1000 * n for n in range(25)]
    client = FakeHubSpot(stamps)
    source = HubSpotInbound(call, client, [], searches_per_second=1000)  # type: ignore[arg-type]
    pages, cursor = await poll(source, str(NOW_MS - 1))
    seen = {s.external_id for page in pages for s in page.staged}
    assert seen == {c["id"] for c in client.contacts}
    assert cursor == str(stamps[-1])  # older than the settle time: the cursor reaches it


async def test_hubspot_polling_skips_past_more_than_the_cap_sharing_one_time(
    small_search_cap: None,
) -> None:
    client = FakeHubSpot([NOW_MS] * 12 + [NOW_MS + 5])
    source = HubSpotInbound(call, client, [], searches_per_second=1000)  # type: ignore[arg-type]
    pages, cursor = await poll(source, str(NOW_MS - 1))
    assert client.searches < 20  # it ends
    assert "13" in {s.external_id for page in pages for s in page.staged}
    assert cursor == str(NOW_MS + 5)


async def test_hubspot_cursor_stays_behind_what_search_may_not_have_indexed_yet() -> None:
    recent = int(time.time() * 1000)
    client = FakeHubSpot([recent])
    source = HubSpotInbound(call, client, [], settle_seconds=5.0)  # type: ignore[arg-type]
    pages, cursor = await poll(source, str(recent - 60_000))
    assert [s.external_id for s in pages[0].staged] == ["1"]
    assert cursor is not None and int(cursor) < recent  # found again by the next poll


async def test_the_first_hubspot_poll_replays_nothing() -> None:
    client = FakeHubSpot([NOW_MS])
    pages, cursor = await poll(HubSpotInbound(call, client, []), None)  # type: ignore[arg-type]
    assert client.searches == 0 and pages[0].staged == []
    assert cursor is not None and int(cursor) > NOW_MS


class FakeStripe:
    """`GET /v1/events` as Stripe pages it: newest first; `ending_before` gives the events
    just after the cursor, `starting_after` those just before."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # oldest first

    def add(self, count: int) -> None:
        for _ in range(count):
            n = len(self.events)
            self.events.append({
                "id": f"evt_{n:04d}", "type": "customer.updated", "created": 1_700_000_000 + n,
                "data": {"object": {"id": f"cus_{n % 7}", "object": "customer", "n": n}},
            })  # fmt: skip

    async def list_events(
        self, types: list[str], *, ending_before: str | None = None,
        starting_after: str | None = None, limit: int = 100,
    ) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
        newest_first = list(reversed(self.events))
        ids = [e["id"] for e in newest_first]
        if ending_before is not None:
            if ending_before not in ids:
                raise PermanentError(404, "No such event")
            newer = newest_first[: ids.index(ending_before)]
            return newer[-limit:], len(newer) > limit
        if starting_after is not None:
            older = newest_first[ids.index(starting_after) + 1 :]
            return older[:limit], len(older) > limit
        return newest_first[:limit], len(newest_first) > limit


async def test_stripe_polling_records_the_newest_event_then_reads_forward_in_order() -> None:
    client = FakeStripe()
    client.add(5)
    source = StripeInbound(call, client)  # type: ignore[arg-type]
    pages, cursor = await poll(source, None)
    assert cursor == "evt_0004" and pages[0].events == []  # history is not replayed

    client.add(250)
    pages, cursor = await poll(source, cursor)
    events = [e.event_id for page in pages for e in page.events]
    assert events == [f"evt_{n:04d}" for n in range(5, 255)]  # oldest first, all of them
    assert cursor == "evt_0254"
    assert await poll(source, cursor) == ([PollPage([], [], None, None)], cursor)


async def test_stripe_polling_with_no_event_at_the_first_poll_reads_all_history() -> None:
    client = FakeStripe()
    source = StripeInbound(call, client)  # type: ignore[arg-type]
    _, cursor = await poll(source, None)
    assert cursor == ""
    client.add(230)
    pages, cursor = await poll(source, cursor)
    assert [e.event_id for p in pages for e in p.events] == [f"evt_{n:04d}" for n in range(230)]
    assert cursor == "evt_0229"


async def test_stripe_polling_restarts_from_the_newest_when_its_event_has_expired() -> None:
    client = FakeStripe()
    client.add(3)
    source = StripeInbound(call, client)  # type: ignore[arg-type]
    _, cursor = await poll(source, "evt_gone")
    assert cursor == "evt_0002"


class FakeZendesk:
    def __init__(self, pages: list[list[int]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, Any]] = []

    async def export_users(
        self, *, start_time: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        self.calls.append({"start_time": start_time, "cursor": cursor})
        index = 0 if cursor is None else int(cursor.removeprefix("c")) + 1
        users = [
            {"id": n, "updated_at": "2026-01-01T00:00:00Z", "active": n % 2 == 0}
            for n in self.pages[index]
        ]
        last = index == len(self.pages) - 1
        return {"users": users, "after_cursor": f"c{index}", "end_of_stream": last}


async def test_zendesk_polling_follows_the_export_cursor_to_the_end_of_the_stream() -> None:
    client = FakeZendesk([[1, 2], [3], [4, 5]])
    source = ZendeskInbound(call, client, exports_per_minute=1000)  # type: ignore[arg-type]
    pages, cursor = await poll(source, None)
    assert client.calls == [] and cursor is not None and cursor.startswith("time:")

    pages, cursor = await poll(source, cursor)
    assert client.calls[0]["start_time"] is not None and client.calls[0]["cursor"] is None
    assert [s.external_id for p in pages for s in p.staged] == ["1", "2", "3", "4", "5"]
    assert [s.deleted for p in pages for s in p.staged] == [True, False, True, False, True]
    assert cursor == "c2"


def test_staged_rows_take_each_vendors_id_time_and_deletion() -> None:
    contact = {"id": "1001", "properties": {}, "createdAt": "2026-01-01T00:00:00.000Z",
               "updatedAt": "2026-01-02T03:04:05.678Z", "archived": True}  # fmt: skip
    row = hubspot_staged(contact)
    assert (row.external_id, row.deleted, row.payload) == ("1001", True, contact)
    assert row.source_updated_at == datetime(2026, 1, 2, 3, 4, 5, 678000, UTC)

    event = {"id": "evt_1", "type": "customer.deleted", "created": 1_700_000_000,
             "data": {"object": {"id": "cus_1", "email": "a@b.co"}}}  # fmt: skip
    row = stripe_staged(event)
    assert (row.external_id, row.deleted, row.payload) == ("cus_1", True, event["data"]["object"])
    assert row.source_updated_at == datetime.fromtimestamp(1_700_000_000, UTC)

    user = {"id": 15, "updated_at": "2026-01-01T00:00:09Z", "active": True}
    row = zendesk_staged(user)
    assert (row.external_id, row.deleted) == ("15", False)
    assert row.source_updated_at == datetime(2026, 1, 1, 0, 0, 9, tzinfo=UTC)
