"""The inbound side of two-way sync: edits made in a target reach its staging table
(`staging.crm_contacts`, `staging.billing_customers`, `staging.support_users`).

It runs in the target's adapter process (`crmsync adapter <target>`), beside the outbound
consumer, so every API request it makes goes through the same breaker, throttle and retries
(`TargetAdapter.call`) and one quota is kept per target. Three loops:

- the **receiver** (aiohttp, loopback) verifies each webhook (adapters.webhooks), stores its
  events in `sync.inbound_events` and only then answers 2xx: a delivery acknowledged is never
  lost. Exact replays get 409, redelivered event ids store nothing new;
- the **drain** turns unprocessed inbox rows into staging rows (fetching the current objects
  where the event carries none) and marks them processed; after a crash it picks up what was
  left. Where the vendor says which write caused an event (Stripe), the updates we made are
  left out: they would only travel the whole pipeline back to be dropped as echoes. The
  staging mirror then shows our values as of the target's next edit;
- the **poller**, the backstop for missed webhooks, reads each vendor's incremental API every
  `poll_interval_seconds` from a durable cursor (`sync.inbound_cursors`), committed with
  what the page staged.

Staging writes are idempotent and ordered (`upsert_staging`): an identical object changes
nothing (so Debezium emits nothing) and an older one never replaces a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from aiohttp import web
from prometheus_client import Counter, Gauge
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from adapters import hubspot, zendesk
from adapters.hubspot import HubSpotClient
from adapters.ratelimit import RequestWindow, Throttle
from adapters.stripe import StripeClient, caused_by_us
from adapters.target import TargetClient
from adapters.webhooks import (
    PARSERS,
    STRIPE_CUSTOMER_EVENTS,
    VERIFIERS,
    InboundEvent,
    UnreadableBody,
    WebhookRejected,
    stripe_event,
)
from adapters.zendesk import ZendeskClient
from crmsync.dead_letters import DeadLetter, insert_dead_letter
from crmsync.domain.inbound import STAGING_TABLES
from crmsync.errors import PermanentError, TargetError
from crmsync.rules import SyncRules
from crmsync.settings import Settings

__all__ = [
    "Gone",
    "HubSpotInbound",
    "InboundRuntime",
    "InboundSource",
    "InboxRow",
    "PollPage",
    "StagedObject",
    "StripeInbound",
    "ZendeskInbound",
    "build_inbound",
    "request_url",
    "run_all",
    "upsert_staging",
]

log = logging.getLogger("crmsync.inbound")
T = TypeVar("T")

WEBHOOKS_ACCEPTED = Counter(
    "crmsync_inbound_webhooks_accepted", "Webhook deliveries verified and stored", ["target"]
)
WEBHOOKS_REJECTED = Counter(
    "crmsync_inbound_webhooks_rejected", "Webhook deliveries refused", ["target", "reason"]
)
EVENTS_RECEIVED = Counter(
    "crmsync_inbound_events", "Events stored in the inbox (new: not seen before)",
    ["target", "source"],
)  # fmt: skip
POLLED = Counter("crmsync_inbound_polled_objects", "Objects and events polled", ["target"])
OWN_WRITES = Counter(
    "crmsync_inbound_own_writes", "Events of our own writes, recognised and not staged", ["target"]
)
STAGED = Counter("crmsync_inbound_staging_writes", "Staging rows inserted or changed", ["target"])
INBOUND_DEAD = Counter("crmsync_inbound_dead_letters", "Inbox events dead-lettered", ["target"])
RECEIVER_UP = Gauge("crmsync_inbound_receiver_up", "1 while the receiver listens", ["target"])

#: The staging table of each target, in schema `staging`.
#: Processed inbox rows are kept this long: event ids are deduplicated against vendor retries
#: (Stripe retries for up to three days, HubSpot for one).
EVENT_RETENTION_SECONDS = 7 * 86_400
DRAIN_BATCH = 500  # inbox rows per drain round
DRAIN_IDLE_SECONDS = 5.0  # a drain round runs at least this often without a wake-up
DRAIN_DEBOUNCE_SECONDS = 0.1  # let a burst of deliveries gather into one fetch
RETRY_DELAY_SECONDS = 5.0  # after a failed drain round (the target down, the database gone)
PRUNE_EVERY_SECONDS = 60.0
#: HubSpot's search index trails writes: the cursor never passes now minus this, so a write
#: indexed late is still found by the next poll (overlap costs nothing: upserts are idempotent).
SEARCH_SETTLE_SECONDS = 5.0
#: Zendesk's incremental export leaves out the last minute; the first poll starts this far back.
EXPORT_START_SECONDS = 60


class Call(Protocol):
    """`TargetAdapter.call`: one request through the target's breaker, throttle and retries."""

    def __call__(self, request: Callable[[], Awaitable[T]]) -> Awaitable[T]: ...


# --------------------------------------------------------------------------------------------
# What goes into staging
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedObject:
    """One external object as its API returns it, for its staging row."""

    external_id: str
    payload: dict[str, Any]
    source_updated_at: datetime
    deleted: bool = False


@dataclass(frozen=True)
class Gone:
    """An object the target no longer has at all (purged): its staging row, if any, is marked
    deleted; there is no payload to store."""

    external_id: str
    gone_at: datetime


Staged = StagedObject | Gone


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _from_millis(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def hubspot_staged(contact: dict[str, Any]) -> StagedObject:
    """A v3 object `{id, properties, createdAt, updatedAt, archived}`; archived is deleted."""
    return StagedObject(
        str(contact["id"]), contact, _parse_time(contact["updatedAt"]),
        bool(contact.get("archived")),
    )  # fmt: skip


def stripe_staged(event: dict[str, Any]) -> StagedObject:
    """The customer a `customer.*` event carries, as of the event's `created` time."""
    customer = event["data"]["object"]
    created = datetime.fromtimestamp(event["created"], UTC)
    return StagedObject(customer["id"], customer, created, event["type"] == "customer.deleted")


def _our_update(event: dict[str, Any]) -> bool:
    return event["type"] == "customer.updated" and caused_by_us(event)


def zendesk_staged(user: dict[str, Any]) -> StagedObject:
    """A Zendesk user; a deleted one stays readable with `active: false`."""
    return StagedObject(
        str(user["id"]), user, _parse_time(user["updated_at"]), not user.get("active", True)
    )


# Update only when the incoming object is newer, or equally new and different: the vendors'
# timestamps are coarse (Stripe's `created` and Zendesk's `updated_at` count whole seconds),
# so two edits within one second carry the same time, and refusing the second would lose it.
# Fetches and writes run one at a time per target (InboundRuntime._work) so the later fetch
# is written last. Within one timestamp a deletion wins: a deleted Stripe customer or Zendesk
# user cannot be edited afterwards, so an equally old live version is the earlier one. An
# identical delivery matches no condition and writes nothing (Debezium sees no change).
_UPSERT_STAGED = """
    insert into {table} as s (external_id, payload, source_updated_at, deleted)
    values (%s, %s, %s, %s)
    on conflict (external_id) do update
        set payload = excluded.payload, source_updated_at = excluded.source_updated_at,
            deleted = excluded.deleted, received_at = now()
        where s.source_updated_at < excluded.source_updated_at
           or (s.source_updated_at = excluded.source_updated_at
               and (s.payload, s.deleted) is distinct from (excluded.payload, excluded.deleted)
               and (excluded.deleted or not s.deleted))
    returning deleted"""
_MARK_GONE = """
    update {table} set deleted = true, received_at = now(),
        source_updated_at = greatest(source_updated_at, %s)
    where external_id = %s and not deleted
    returning deleted"""
# The adapter must create a new record for this customer, not update the deleted one.
_LINK_ARCHIVED = """
    update sync.identity_links set archived_at = now(), pushed_hash = null
    where system = %s and external_id = %s"""


async def upsert_staging(
    conn: psycopg.AsyncConnection[Any], target: str, staged: Iterable[Staged]
) -> int:
    """Write `staged` in order into the target's staging table (call inside a transaction);
    returns how many rows were inserted or changed. A delete that lands also archives the
    record's identity link, in the same transaction."""
    table = sql.Identifier("staging", STAGING_TABLES[target])
    upsert = sql.SQL(_UPSERT_STAGED).format(table=table)
    gone = sql.SQL(_MARK_GONE).format(table=table)
    written = 0
    for item in staged:
        if isinstance(item, StagedObject):
            params: tuple[Any, ...] = (
                item.external_id, Jsonb(item.payload), item.source_updated_at, item.deleted,
            )  # fmt: skip
            cursor = await conn.execute(upsert, params)
        else:
            cursor = await conn.execute(gone, (item.gone_at, item.external_id))
        row = await cursor.fetchone()
        if row is None:
            continue
        written += 1
        if row[0]:
            await conn.execute(_LINK_ARCHIVED, (target, item.external_id))
    STAGED.labels(target).inc(written)
    return written


# --------------------------------------------------------------------------------------------
# The inbox and the cursor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxRow:
    id: int
    event_id: str
    event_type: str
    object_id: str | None
    payload: Any


_REMEMBER_SIGNATURE = """
    insert into sync.inbound_signatures (system, signature, signed_at) values (%s, %s, %s)
    on conflict do nothing returning 1"""
# One statement per delivery (HubSpot sends up to 100 events at once), rows in event order.
_INSERT_EVENTS = """
    insert into sync.inbound_events
        (system, event_id, event_type, object_id, payload, source, signature)
    select %s, e.event_id, e.event_type, e.object_id, e.payload, %s, %s
    from unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[])
        with ordinality as e(event_id, event_type, object_id, payload, n)
    order by e.n
    on conflict (system, event_id) do nothing returning id"""
_PENDING = """
    select id, event_id, event_type, object_id, payload from sync.inbound_events
    where system = %s and processed_at is null order by id limit %s"""
_MARK_PROCESSED = """
    update sync.inbound_events set processed_at = now(), error = %s where id = any(%s)"""
_CURSOR = "select cursor from sync.inbound_cursors where system = %s"
_SET_CURSOR = """
    insert into sync.inbound_cursors (system, cursor, updated_at) values (%s, %s, now())
    on conflict (system) do update set cursor = excluded.cursor, updated_at = now()"""
_PRUNE_SIGNATURES = """
    delete from sync.inbound_signatures
    where system = %s and signed_at < now() - make_interval(secs => %s)"""
_PRUNE_EVENTS = """
    delete from sync.inbound_events
    where system = %s and processed_at < now() - make_interval(secs => %s)"""


async def _insert_events(
    conn: psycopg.AsyncConnection[Any],
    target: str,
    events: Sequence[InboundEvent],
    source: Literal["webhook", "poll"],
    signature: str | None = None,
) -> int:
    if not events:
        return 0
    columns = (
        [e.event_id for e in events], [e.event_type for e in events],
        [e.object_id for e in events], [Jsonb(e.payload) for e in events],
    )  # fmt: skip
    cursor = await conn.execute(_INSERT_EVENTS, (target, source, signature, *columns))
    new = len(await cursor.fetchall())
    EVENTS_RECEIVED.labels(target, source).inc(new)
    return new


class _Database:
    """One connection used by one task at a time, opened again after it broke (a restarted
    Postgres costs the requests in flight, not the process)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
            yield self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


# --------------------------------------------------------------------------------------------
# Vendors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PollPage:
    """What one poll request found, and where polling stands after it."""

    staged: list[Staged]
    events: list[InboundEvent]  # for the inbox (Stripe: events, deduplicated by id)
    cursor: str | None  # the durable cursor after this page (None: unchanged)
    next: Any  # the source's state for the next request; None when caught up


class InboundSource(Protocol):
    """One vendor's inbound reads; every request goes through `Call`."""

    target: str
    vendor: str

    async def resolve(self, rows: list[InboxRow]) -> list[Staged]:
        """The staging writes these inbox events call for (fetching current objects where
        the events carry none), in order."""

    def start_poll(self, cursor: str | None) -> Any:
        """The state of a poll starting from the stored cursor (None: never polled)."""

    async def poll_page(self, state: Any) -> PollPage:
        """At most one API request."""


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _latest(rows: Iterable[InboxRow], when: Callable[[InboxRow], datetime]) -> dict[str, datetime]:
    """Each object id of the rows with its latest event time, in order of first appearance."""
    latest: dict[str, datetime] = {}
    for row in rows:
        if row.object_id is not None:
            moment = when(row)
            latest[row.object_id] = max(latest.get(row.object_id, moment), moment)
    return latest


@dataclass(frozen=True)
class _HubSpotPoll:
    since: int | None  # ms, the search's lower bound (None: the very first poll)
    cursor: int  # ms, the durable cursor so far
    cap: int  # ms, the cursor never passes this (SEARCH_SETTLE_SECONDS before the poll)
    after: str | None = None


class HubSpotInbound:
    """Contacts. Webhook events name contacts only, so the drain reads the current objects
    (`batch/read`, live then archived); polling searches `lastmodifieddate >= cursor`."""

    target, vendor = "crm", "hubspot"

    def __init__(
        self,
        call: Call,
        client: HubSpotClient,
        properties: list[str],
        *,
        settle_seconds: float = SEARCH_SETTLE_SECONDS,
        searches_per_second: int = hubspot.SEARCH_REQUESTS_PER_SECOND,
    ) -> None:
        self._call = call
        self._client = client
        self.properties = properties
        self.settle_seconds = settle_seconds
        self.searches = Throttle([RequestWindow(searches_per_second, 1.0)])

    async def resolve(self, rows: list[InboxRow]) -> list[Staged]:
        def occurred(row: InboxRow) -> datetime:
            at = row.payload.get("occurredAt") if isinstance(row.payload, dict) else None
            return _from_millis(at) if isinstance(at, int) else datetime.now(UTC)

        latest = _latest(rows, occurred)
        staged: list[Staged] = []
        for ids in _chunks(list(latest), hubspot.BATCH_LIMIT):
            live = await self._call(partial(self._client.read, ids, self.properties))
            found = {str(o["id"]) for o in live}
            missing = [i for i in ids if i not in found]
            archived: list[dict[str, Any]] = []
            if missing:
                read = partial(self._client.read, missing, self.properties, archived=True)
                archived = await self._call(read)
            staged += [hubspot_staged(o) for o in (*live, *archived)]
            found |= {str(o["id"]) for o in archived}
            staged += [Gone(i, latest[i]) for i in missing if i not in found]
        return staged

    def start_poll(self, cursor: str | None) -> _HubSpotPoll:
        cap = int((time.time() - self.settle_seconds) * 1000)
        if cursor is None:
            return _HubSpotPoll(since=None, cursor=cap, cap=cap)
        return _HubSpotPoll(since=int(cursor), cursor=int(cursor), cap=cap)

    async def poll_page(self, state: _HubSpotPoll) -> PollPage:
        if state.since is None:  # nothing before the first run is replayed
            return PollPage([], [], str(state.cursor), None)
        await self.searches.acquire()
        limit = hubspot.SEARCH_PAGE_LIMIT
        search = partial(
            self._client.search_modified_since, state.since, self.properties,
            after=state.after, limit=limit,
        )  # fmt: skip
        results, after = await self._call(search)
        seen = max((self._modified_ms(o) for o in results), default=state.since)
        cursor = max(state.cursor, min(seen, state.cap))
        following = None
        within_cap = after is not None and int(after) + limit <= hubspot.SEARCH_RESULT_CAP
        if after is not None and within_cap:
            following = replace(state, cursor=cursor, after=after)
        elif after is not None:  # the query's 10,000-result cap: search again from here
            since = seen
            if since <= state.since:
                log.warning(
                    "crm: over %d contacts modified at %d ms; polling skips past them",
                    hubspot.SEARCH_RESULT_CAP, since,
                )  # fmt: skip
                since = state.since + 1
            following = replace(state, since=since, cursor=cursor, after=None)
        return PollPage([hubspot_staged(o) for o in results], [], str(cursor), following)

    def _modified_ms(self, contact: dict[str, Any]) -> int:
        value = (contact.get("properties") or {}).get(self._client.modified_property)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        moment = _parse_time(value if isinstance(value, str) and value else contact["updatedAt"])
        return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class _StripePoll:
    #: newest: record the newest event id and nothing else (the first poll ever); forward:
    #: events after `event_id`; history: every event (none existed at the first poll).
    mode: Literal["newest", "forward", "history"]
    event_id: str | None = None
    collected: tuple[dict[str, Any], ...] = ()


class StripeInbound:
    """Customers. Events carry the customer, so the drain fetches nothing; polling reads
    `GET /v1/events` forward from the newest event id seen, into the inbox."""

    target, vendor = "billing", "stripe"
    types = sorted(STRIPE_CUSTOMER_EVENTS)

    def __init__(self, call: Call, client: StripeClient) -> None:
        self._call = call
        self._client = client

    async def resolve(self, rows: list[InboxRow]) -> list[Staged]:
        """The updates we made are not staged: they would only come back as echoes, through
        staging, the capture and the streams, to be dropped there. Our creates are: the
        first copy of a record is what tells its own defaults from the values we sent."""
        events = [row.payload for row in rows if row.object_id is not None]
        staged = [event for event in events if not _our_update(event)]
        OWN_WRITES.labels(self.target).inc(len(events) - len(staged))
        return [stripe_staged(event) for event in staged]

    def start_poll(self, cursor: str | None) -> _StripePoll:
        if cursor is None:
            return _StripePoll("newest")
        return _StripePoll("history") if cursor == "" else _StripePoll("forward", cursor)

    async def poll_page(self, state: _StripePoll) -> PollPage:
        if state.mode == "newest":
            data, _ = await self._call(partial(self._client.list_events, self.types, limit=1))
            return PollPage([], [], data[0]["id"] if data else "", None)
        if state.mode == "history":
            page = partial(self._client.list_events, self.types, starting_after=state.event_id)
            data, more = await self._call(page)
            collected = (*state.collected, *data)
            if more and data:
                return PollPage([], [], None, replace(state, event_id=data[-1]["id"],
                                                      collected=collected))  # fmt: skip
            newest = collected[0]["id"] if collected else ""
            return PollPage([], _readable(reversed(collected)), newest, None)
        try:
            page = partial(self._client.list_events, self.types, ending_before=state.event_id)
            data, more = await self._call(page)
        except PermanentError as exc:
            if exc.status != 404:
                raise
            log.warning(
                "billing: Stripe no longer has event %s (it keeps 30 days of events): polling"
                " restarts from the newest event; changes in between are not polled",
                state.event_id,
            )
            return await self.poll_page(_StripePoll("newest"))
        if not data:
            return PollPage([], [], None, None)
        newest = data[0]["id"]  # the page is newest first
        following = _StripePoll("forward", newest) if more else None
        return PollPage([], _readable(reversed(data)), newest, following)


def _readable(documents: Iterable[dict[str, Any]]) -> list[InboundEvent]:
    events = []
    for document in documents:
        try:
            events.append(stripe_event(document))
        except UnreadableBody as exc:
            log.warning("billing: skipped a polled event: %s", exc)
    return events


@dataclass(frozen=True)
class _ZendeskPoll:
    start_time: int | None = None
    cursor: str | None = None
    first: bool = False  # record where polling starts, send nothing


class ZendeskInbound:
    """Users. Webhook events name the user, so the drain reads the current users
    (`users/show_many`); polling follows the cursor-based incremental user export."""

    target, vendor = "support", "zendesk"

    def __init__(
        self,
        call: Call,
        client: ZendeskClient,
        *,
        exports_per_minute: int = zendesk.EXPORT_REQUESTS_PER_MINUTE,
    ) -> None:
        self._call = call
        self._client = client
        self.exports = Throttle([RequestWindow(exports_per_minute, 60.0)])

    async def resolve(self, rows: list[InboxRow]) -> list[Staged]:
        def occurred(row: InboxRow) -> datetime:
            at = row.payload.get("time") if isinstance(row.payload, dict) else None
            try:
                return _parse_time(at) if isinstance(at, str) else datetime.now(UTC)
            except ValueError:
                return datetime.now(UTC)

        latest = _latest(rows, occurred)
        staged: list[Staged] = []
        for ids in _chunks(list(latest), zendesk.BATCH_LIMIT):
            users = await self._call(partial(self._client.show_many, ids))
            found = {str(user["id"]) for user in users}
            staged += [zendesk_staged(user) for user in users]
            staged += [Gone(i, latest[i]) for i in ids if i not in found]
        return staged

    def start_poll(self, cursor: str | None) -> _ZendeskPoll:
        now = int(time.time())
        if cursor is None:
            return _ZendeskPoll(start_time=now, first=True)
        if cursor.startswith("time:"):
            return _ZendeskPoll(start_time=min(int(cursor[5:]), now - EXPORT_START_SECONDS))
        return _ZendeskPoll(cursor=cursor)

    async def poll_page(self, state: _ZendeskPoll) -> PollPage:
        if state.first:  # nothing before the first run is replayed
            return PollPage([], [], f"time:{state.start_time}", None)
        await self.exports.acquire()
        export = partial(
            self._client.export_users, start_time=state.start_time, cursor=state.cursor
        )
        page = await self._call(export)
        after = page.get("after_cursor")
        following = None if page.get("end_of_stream") or not after else _ZendeskPoll(cursor=after)
        staged: list[Staged] = [zendesk_staged(user) for user in page.get("users") or []]
        return PollPage(staged, [], after or None, following)


# --------------------------------------------------------------------------------------------
# The runtime
# --------------------------------------------------------------------------------------------


def request_url(request: web.Request) -> str:
    """The URL the vendor called, as it signs it: a TLS proxy in front tells the scheme and
    host it was called with (`X-Forwarded-Proto`, `X-Forwarded-Host`), else the request's;
    then the path and query exactly as sent."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{scheme}://{host}{request.raw_path}"


async def _wait(events: Iterable[asyncio.Event], timeout: float) -> None:
    """Until any of `events` is set, or `timeout` seconds pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_all(
    coroutines: Iterable[Coroutine[Any, Any, None]], stop: asyncio.Event, grace: float = 10.0
) -> None:
    """Run the loops until `stop`; the first to fail sets `stop` for the others and its error
    is raised once they have ended (or, after `grace` seconds, been cancelled)."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


class InboundRuntime:
    """One target's receiver, drain and poller (each can be left out, for tests)."""

    def __init__(
        self,
        source: InboundSource,
        dsn: str,
        *,
        secret: SecretStr,
        port: int,
        tolerance: float,
        poll_interval: float,
        receive: bool = True,
        drain: bool = True,
        poll: bool = True,
    ) -> None:
        self.source = source
        self.target = source.target
        self.port = port
        self.path = f"/webhooks/{source.vendor}"
        self._secret = secret
        self._tolerance = tolerance
        self._poll_interval = poll_interval
        self._loops = {"receive": receive, "drain": drain, "poll": poll}
        self._verify = VERIFIERS[source.vendor]
        self._parse = PARSERS[source.vendor]
        self._inbox = _Database(dsn)  # the receiver's, so it never waits behind the drain
        self._db = _Database(dsn)
        self._work = asyncio.Lock()  # fetch-and-write rounds, one at a time (see _UPSERT_STAGED)
        self._wake = asyncio.Event()
        self._pruned_at = 0.0
        self.listening = asyncio.Event()

    def __repr__(self) -> str:
        return f"InboundRuntime({self.target}, 127.0.0.1:{self.port}{self.path})"

    async def run(self, stop: asyncio.Event) -> None:
        loops = {"receive": self._serve, "drain": self._drain_forever, "poll": self._poll_forever}
        running = [name for name, on in self._loops.items() if on]
        log.info(
            "%s inbound: %s; webhooks at http://127.0.0.1:%d%s, polling every %gs",
            self.target, ", ".join(running), self.port, self.path, self._poll_interval,
        )  # fmt: skip
        try:
            await run_all([loops[name](stop) for name in running], stop)
        finally:
            await self._inbox.close()
            await self._db.close()

    # ---- receiver ----------------------------------------------------------------------

    async def _serve(self, stop: asyncio.Event) -> None:
        app = web.Application()
        app.router.add_post(self.path, self.receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            while not self.listening.is_set() and not stop.is_set():
                try:
                    await web.TCPSite(runner, "127.0.0.1", self.port).start()
                except OSError as exc:  # the port is taken: polling still runs meanwhile
                    log.error("%s inbound: cannot listen on 127.0.0.1:%d (%s); retrying",
                              self.target, self.port, exc)  # fmt: skip
                    await _wait([stop], 10.0)
                else:
                    RECEIVER_UP.labels(self.target).set(1)
                    self.listening.set()
            await stop.wait()
        finally:
            RECEIVER_UP.labels(self.target).set(0)
            await runner.cleanup()

    async def receive(self, request: web.Request) -> web.Response:
        """Verify, store, answer: 200 once the events are in the inbox (new or known), 401
        for a bad, missing or stale signature, 409 for a replayed one, 400 for a body that
        is not the vendor's events, 503 while the database is unreachable."""
        body = await request.read()
        try:
            verified = self._verify(
                request.headers, body, self._secret.get_secret_value(),
                url=request_url(request), now=time.time(), tolerance=self._tolerance,
            )  # fmt: skip
            events = self._parse(body)
        except WebhookRejected as exc:
            return self._refuse(request, exc.reason, exc.status)
        except UnreadableBody as exc:
            return self._refuse(request, "unparseable", 400, str(exc))
        try:
            async with self._inbox.connection() as conn, conn.transaction():
                remember = (self.target, verified.signature, verified.signed_at)
                first = await (await conn.execute(_REMEMBER_SIGNATURE, remember)).fetchone()
                new = None
                if first is not None:  # else this very delivery was accepted before
                    new = await _insert_events(
                        conn, self.target, events, "webhook", verified.signature
                    )
        except psycopg.OperationalError as exc:
            log.warning("%s inbound: database unavailable, webhook refused: %s", self.target, exc)
            return web.json_response({"error": "unavailable"}, status=503)
        if new is None:
            return self._refuse(request, "replayed", 409)
        WEBHOOKS_ACCEPTED.labels(self.target).inc()
        if new:
            self._wake.set()
        return web.json_response({"events": len(events), "new": new})

    def _refuse(
        self, request: web.Request, reason: str, status: int, detail: str = ""
    ) -> web.Response:
        WEBHOOKS_REJECTED.labels(self.target, reason).inc()
        log.warning("%s inbound: refused a webhook from %s: %s %s",
                    self.target, request.remote, reason, detail)  # fmt: skip
        return web.json_response({"error": reason}, status=status)

    # ---- drain -------------------------------------------------------------------------

    async def _drain_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            delay = DRAIN_IDLE_SECONDS
            try:
                while not stop.is_set() and await self.drain_once():
                    pass
                await self._prune()
            except (TargetError, psycopg.OperationalError) as exc:
                log.warning("%s inbound: drain failed, retrying: %s", self.target, exc)
                await _wait([stop], RETRY_DELAY_SECONDS)
            await _wait([stop, self._wake], delay)
            if self._wake.is_set():
                await _wait([stop], DRAIN_DEBOUNCE_SECONDS)

    async def drain_once(self) -> int:
        """Stage one batch of unprocessed inbox rows; returns how many rows it handled."""
        async with self._work:
            async with self._db.connection() as conn:
                cursor = await conn.execute(_PENDING, (self.target, DRAIN_BATCH))
                rows = [InboxRow(*row) for row in await cursor.fetchall()]
            if not rows:
                return 0
            staged, refused = await self._resolve(rows)
            async with self._db.connection() as conn, conn.transaction():
                await upsert_staging(conn, self.target, staged)
                done = [row.id for row in rows if row.id not in refused]
                await conn.execute(_MARK_PROCESSED, (None, done))
                for row in rows:
                    if row.id in refused:
                        await self._dead_letter(conn, row, refused[row.id])
            return len(rows)

    async def _resolve(self, rows: list[InboxRow]) -> tuple[list[Staged], dict[int, str]]:
        """What the rows stage; a request the target refuses for good is retried row by row
        so that only the rows at fault are dead-lettered (refused credentials are not the
        events' fault: they wait, like an outage)."""
        try:
            return await self.source.resolve(rows), {}
        except PermanentError as exc:
            if exc.status in (401, 403):
                raise
            if len(rows) == 1:
                return [], {rows[0].id: str(exc)}
        staged: list[Staged] = []
        refused: dict[int, str] = {}
        for row in rows:
            more, failed = await self._resolve([row])
            staged += more
            refused |= failed
        return staged, refused

    async def _dead_letter(
        self, conn: psycopg.AsyncConnection[Any], row: InboxRow, error: str
    ) -> None:
        letter = DeadLetter(
            stage="inbound", target=self.target, key=row.object_id or row.event_id,
            payload=row.payload, error=error,
        )  # fmt: skip
        await insert_dead_letter(conn, letter)
        await conn.execute(_MARK_PROCESSED, (error, [row.id]))
        INBOUND_DEAD.labels(self.target).inc()
        log.warning("%s inbound: dead-lettered event %s: %s", self.target, row.event_id, error)

    async def _prune(self) -> None:
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        async with self._db.connection() as conn:
            await conn.execute(_PRUNE_SIGNATURES, (self.target, self._tolerance))
            await conn.execute(_PRUNE_EVENTS, (self.target, EVENT_RETENTION_SECONDS))
        self._pruned_at = time.monotonic()

    # ---- poller ------------------------------------------------------------------------

    async def _poll_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once()
            except (TargetError, psycopg.OperationalError) as exc:
                log.warning("%s inbound: poll failed, next in %gs: %s",
                            self.target, self._poll_interval, exc)  # fmt: skip
            await _wait([stop], self._poll_interval)

    async def poll_once(self) -> int:
        """Read the target's changes since the stored cursor, page by page, each page staged
        with its cursor in one transaction; returns the objects and events found."""
        async with self._db.connection() as conn:
            row = await (await conn.execute(_CURSOR, (self.target,))).fetchone()
        state = self.source.start_poll(None if row is None else row[0])
        found = 0
        while state is not None:
            async with self._work:
                page = await self.source.poll_page(state)
                async with self._db.connection() as conn, conn.transaction():
                    await upsert_staging(conn, self.target, page.staged)
                    new = await _insert_events(conn, self.target, page.events, "poll")
                    if page.cursor is not None:
                        await conn.execute(_SET_CURSOR, (self.target, page.cursor))
            found += len(page.staged) + len(page.events)
            POLLED.labels(self.target).inc(len(page.staged) + len(page.events))
            if new:
                self._wake.set()
            state = page.next
        return found


def build_inbound(
    settings: Settings,
    target: str,
    call: Call,
    client: TargetClient,
    rules: SyncRules,
    *,
    receive: bool = True,
    drain: bool = True,
    poll: bool = True,
) -> InboundRuntime | None:
    """The inbound side for `target`'s vendor, or None where there is none (Salesforce)."""
    source: InboundSource
    if isinstance(client, HubSpotClient):
        mapping = rules.mappings[target]
        properties = {f.property for f in mapping.fields.values()}
        properties |= {mapping.id_property, client.modified_property}
        source = HubSpotInbound(call, client, sorted(properties))
    elif isinstance(client, StripeClient):
        source = StripeInbound(call, client)
    elif isinstance(client, ZendeskClient):
        source = ZendeskInbound(call, client)
    else:
        log.info(
            "%s: no inbound side for %s (webhooks and polling are not built for it): edits"
            " made there do not reach staging", target, client.vendor,
        )  # fmt: skip
        return None
    return InboundRuntime(
        source,
        settings.dsn,
        secret=settings.webhook_secret_of(target),
        port=settings.webhook_port_of(target),
        tolerance=settings.webhook_tolerance_seconds,
        poll_interval=settings.poll_interval_seconds,
        receive=receive,
        drain=drain,
        poll=poll,
    )
