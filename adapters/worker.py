"""The adapter runtime, the same for every target: consumes `crmsync.commands.<target>` and
writes to the target through its vendor client (adapters.target.TargetClient).

Per batch of records: parse, coalesce per customer into waves (adapters.plan), skip what the
target already holds (`sync.identity_links.pushed_hash`), fill in the whole record where the
target holds nothing yet (crmsync.resync), then send lane by lane, in batches up to the API's
maximum and up to the plan's concurrency, each request through the circuit breaker and the
quota throttle, retried on 429/5xx/timeouts. What the target refuses is dead-lettered
(`sync.dead_letters`, mirrored onto the dead-letter topic by Debezium) without holding up the
rest; then the offsets are committed. Delivery is at-least-once; upserts by the external key
(Stripe: idempotency keys) make it effectively once. A record identity resolution linked to a
customer (made in the target, so without crmsync's id yet) is written by its own id until a
write to it is known to have landed (`Link.adopted`).

`run_adapter` also runs the target's inbound side (adapters.inbound) in the same process, so
its reads go through the same `TargetAdapter.call` and count against the same quota.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from adapters.breaker import CircuitBreaker
from adapters.clients import make_client
from adapters.inbound import build_inbound, run_all
from adapters.plan import Write, plan_writes
from adapters.ratelimit import RequestWindow, Throttle
from adapters.retry import RetryPolicy
from adapters.target import Archive, Outcome, TargetClient, Upsert
from canonical_db.target_writes import update_ledgers
from crmsync.broker import Topics
from crmsync.dead_letters import DeadLetter, insert_dead_letter
from crmsync.domain.decide import ARCHIVED_HASH, LANES, Command
from crmsync.domain.writes import Ledger, acknowledged, sending, withdrawn
from crmsync.errors import (
    PermanentError,
    RateLimited,
    RetriesExhausted,
    TargetError,
    TransientError,
)
from crmsync.resync import Desired, desired_states
from crmsync.rules import SyncRules, load_rules
from crmsync.settings import Settings
from crmsync.targets import DAY, TargetPlan, load_plan

__all__ = ["TargetAdapter", "consume_commands", "run_adapter", "throttle_for"]

log = logging.getLogger("crmsync.adapter")
T = TypeVar("T")

CONSUMED = Counter("crmsync_adapter_commands", "Commands consumed", ["target"])
API_CALLS = Counter("crmsync_adapter_api_calls", "API requests sent", ["target"])
RATE_LIMITED = Counter("crmsync_adapter_rate_limited", "429 responses", ["target"])
RETRIES = Counter("crmsync_adapter_retries", "Retried API requests", ["target"])
DELIVERED = Counter("crmsync_adapter_delivered", "Writes applied", ["target", "action"])
SKIPPED = Counter("crmsync_adapter_skipped", "Writes the target already held", ["target"])
DEAD = Counter("crmsync_adapter_dead_letters", "Commands dead-lettered", ["target"])
BREAKER = Gauge("crmsync_adapter_breaker_open", "1 while the circuit breaker is open", ["target"])
BREAKER_OPENED = Counter("crmsync_adapter_breaker_opened", "Times the breaker opened", ["target"])
QUOTA_LIMIT = Gauge("crmsync_adapter_quota_limit", "Requests allowed", ["target", "window"])
QUOTA_USED = Gauge("crmsync_adapter_quota_used", "Requests sent in window", ["target", "window"])

_LINKS_SQL = """
    select customer_id::text, external_id, pushed_hash, archived_at is not null, method
    from sync.identity_links where system = %s and customer_id = any(%s::uuid[])"""
_LINK_UPSERT_SQL = """
    insert into sync.identity_links
        (system, external_id, customer_id, method, confidence, pushed_hash, pushed_at)
    values (%s, %s, %s, 'created', 1.0, %s, now())
    on conflict (system, customer_id) do update
        set external_id = excluded.external_id, pushed_hash = excluded.pushed_hash,
            pushed_at = now(), archived_at = null"""
_LINK_UNKNOWN_SQL = """
    update sync.identity_links set pushed_hash = null
    where system = %s and customer_id = %s::uuid"""
_LINK_ARCHIVED_SQL = """
    update sync.identity_links set archived_at = now(), pushed_hash = %s, pushed_at = now()
    where system = %s and customer_id = %s::uuid"""


@dataclass(frozen=True)
class Link:
    external_id: str
    pushed_hash: str | None
    archived: bool
    #: How the link was made: "created" by this adapter, else by identity resolution
    #: ("email", "phone", "fuzzy", "review", "external_id") to a record made in the target.
    method: str

    @property
    def adopted(self) -> bool:
        """A record made in the target and not known to hold our write (none sent yet, or the
        last one refused): it may lack our id property, so it is written by its own id
        (adapters.target.Upsert.adopt)."""
        return self.method != "created" and self.pushed_hash is None and not self.archived


def _sending(ledger: Ledger, write: Write) -> Ledger:
    return sending(ledger, write.properties)


def _acknowledged(ledger: Ledger, write: Write) -> Ledger:
    return acknowledged(ledger, write.properties, write.sent_at)


def _dead_letter_reason(exc: TargetError, give_up_after: float) -> str:
    """`exc` as its dead letter states it: in the same words each time the same failure comes
    back, so that it stays one letter (crmsync.dead_letters). The tries are the letter's
    `attempts`; how long a 429 asked us to wait is no part of the failure."""
    if isinstance(exc, RetriesExhausted):
        last = _dead_letter_reason(exc.last, give_up_after)
        return f"gave up after {give_up_after:g} s of retries: {last}"
    if isinstance(exc, RateLimited):
        return f"rate limited: {exc.body[:200]}"
    return str(exc)


def _window_name(seconds: float) -> str:
    return "daily" if seconds >= DAY else f"{seconds:g}s"


def throttle_for(plan: TargetPlan) -> Throttle:
    windows = []
    if plan.limits.requests is not None and plan.limits.window_seconds is not None:
        windows.append(RequestWindow(plan.limits.requests, plan.limits.window_seconds))
    if plan.limits.daily is not None:
        windows.append(RequestWindow(plan.limits.daily, DAY))
    return Throttle(windows)


class TargetAdapter:
    def __init__(
        self,
        target: str,
        client: TargetClient,
        conn: psycopg.AsyncConnection[Any],
        rules: SyncRules,
        throttle: Throttle,
        policy: RetryPolicy,
        breaker: CircuitBreaker | None = None,
        concurrency: int = 1,
    ) -> None:
        self.target = target
        self.client = client
        self.conn = conn
        self.rules = rules
        self.throttle = throttle
        self.policy = policy
        self.breaker = breaker or CircuitBreaker()
        self._slots = asyncio.Semaphore(concurrency)
        client.pace = throttle.acquire  # the client's follow-up requests count too
        self._db = asyncio.Lock()  # concurrent requests share one connection: one writer at a time
        self.dead_letters: list[DeadLetter] = []  # this process's, newest last (for tests/logs)
        for window in throttle.windows:
            QUOTA_LIMIT.labels(target, _window_name(window.nominal_window)).set(window.limit)

    async def handle(self, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
        """Deliver one batch of command records (values, and their record keys when known);
        returns when each is applied or dead-lettered."""
        commands = []
        for value, key in zip(values, keys or [None] * len(values), strict=True):
            try:
                commands.append(Command.model_validate_json(value))
            except ValidationError as exc:
                customer = key.decode(errors="replace") if key else None
                await self.dead_letter(
                    customer, DeadLetter.payload_of(value), f"bad command: {exc}"
                )
        CONSUMED.labels(self.target).inc(len(values))
        for wave in plan_writes(commands):
            await self.deliver(wave)

    async def deliver(self, wave: list[Write]) -> None:
        links = await self.links([w.customer_id for w in wave])
        await self.complete_new_records(wave, links)
        upserts, archives = [], []
        for write in wave:
            link = links.get(write.customer_id)
            if link is not None and link.pushed_hash == write.desired_hash and not write.force:
                SKIPPED.labels(self.target).inc()
            elif write.action == "upsert":
                upserts.append(write)
            elif link is not None and not link.archived:
                archives.append((write, link))
            else:
                SKIPPED.labels(self.target).inc()  # nothing there to archive
        size = self.client.max_batch
        for lane in LANES:  # the wave is sorted by lane; each lane finishes before the next
            in_lane = [w for w in upserts if w.lane == lane]
            chunks = [in_lane[i : i + size] for i in range(0, len(in_lane), size)]
            sent = await asyncio.gather(*(self.send_upserts(chunk, links) for chunk in chunks))
            # What the lane's requests did, recorded in one transaction, not one per request.
            done = [result for result in sent if result is not None]
            if done:
                writes = [w for ws, _ in done for w in ws]
                await self.record(writes, [o for _, os in done for o in os], again=True)
        chunks = [archives[i : i + size] for i in range(0, len(archives), size)]
        await asyncio.gather(*(self.archive(chunk) for chunk in chunks))

    async def complete_new_records(self, wave: list[Write], links: dict[str, Link]) -> None:
        """A write carrying only changed properties to a target that holds nothing for the
        customer would create a partial record: send the whole current record instead."""
        partial = [
            w for w in wave
            if w.action == "upsert" and not w.full
            and (w.customer_id not in links or links[w.customer_id].archived
                 or links[w.customer_id].pushed_hash is None)
        ]  # fmt: skip
        if not partial:
            return
        states = await desired_states(
            self.conn, self.rules, self.target, [w.customer_id for w in partial]
        )
        for write in partial:
            state = states[write.customer_id]
            if isinstance(state, Desired) and state.action == "upsert":
                write.properties = state.properties
                write.desired_hash = state.desired_hash
                write.full = True
            else:
                # Deleted by now: send the command as it is, so its link is recorded and the
                # archive behind it applies (the target may hold a record from a crash). Or
                # invalid by now (the pipeline dead-letters that change): send the delta.
                # Either way the target's state stays unknown.
                write.known = False

    async def links(self, customer_ids: list[str]) -> dict[str, Link]:
        cursor = await self.conn.execute(_LINKS_SQL, (self.target, customer_ids))
        return {row[0]: Link(*row[1:]) for row in await cursor.fetchall()}

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """One API request through the breaker and the throttle, retried on 429/5xx/timeouts
        with backoff until the retry policy gives up (counted from the first failure, not
        from time spent waiting behind other requests)."""
        first_failure: float | None = None
        attempt = 0
        async with self._slots:
            while True:
                attempt += 1
                await self.breaker.permit()
                await self.throttle.acquire()
                API_CALLS.labels(self.target).inc()
                try:
                    result = await request()
                except RateLimited as exc:
                    RATE_LIMITED.labels(self.target).inc()
                    self.breaker_success()  # it answered: up, only busy
                    error: TargetError = exc
                    delay = self.policy.delay(attempt, exc.retry_after)
                    self.throttle.pause(delay)  # everyone waits, not just this request
                except TransientError as exc:
                    self.breaker_failure()
                    error, delay = exc, self.policy.delay(attempt)
                except PermanentError:
                    self.breaker_success()
                    self.observe_quotas()
                    raise
                except Exception as exc:  # a client bug or a body it cannot read: park it
                    log.exception("%s: unexpected error from the client", self.target)
                    raise PermanentError(0, f"{type(exc).__name__}: {exc}") from exc
                else:
                    self.breaker_success()
                    self.observe_quotas()
                    return result
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                if self.policy.exhausted(now - first_failure):
                    raise RetriesExhausted(attempt, error)
                RETRIES.labels(self.target).inc()
                log.info("%s: retrying in %.2fs after: %s", self.target, delay, error)
                await asyncio.sleep(delay)

    def breaker_success(self) -> None:
        self.breaker.success()
        BREAKER.labels(self.target).set(0)

    def breaker_failure(self) -> None:
        opened = self.breaker.opened
        self.breaker.failure()
        if self.breaker.opened > opened:
            BREAKER_OPENED.labels(self.target).inc()
            log.warning("%s: circuit breaker open", self.target)
        BREAKER.labels(self.target).set(1 if self.breaker.state != "closed" else 0)

    def observe_quotas(self) -> None:
        self.throttle.observe(self.client.quotas())
        for window in self.throttle.windows:
            QUOTA_USED.labels(self.target, _window_name(window.nominal_window)).set(window.used())

    async def upsert(self, writes: list[Write], links: dict[str, Link], again: bool = True) -> None:
        sent = await self.send_upserts(writes, links, again)
        if sent is not None:
            await self.record(*sent, again)

    async def send_upserts(
        self, writes: list[Write], links: dict[str, Link], again: bool = True
    ) -> tuple[list[Write], list[Outcome]] | None:
        """One upsert request; the outcomes, for `record`. None: nothing left to record (the
        writes were isolated and recorded one by one, or dead-lettered)."""

        def item(write: Write) -> Upsert:
            link = links.get(write.customer_id)
            if link is None:
                return Upsert(write.customer_id, write.properties, None, write.idempotency_key)
            if link.archived:
                return Upsert(write.customer_id, write.properties, None, write.idempotency_key,
                              archived_external_id=link.external_id)  # fmt: skip
            return Upsert(
                write.customer_id, write.properties, link.external_id, write.idempotency_key,
                adopt=link.adopted,
            )  # fmt: skip

        sent_at = int(time.time() * 1000)
        for write in writes:
            write.sent_at = sent_at
        await self.remember(writes, _sending)
        try:
            outcomes = await self.call(lambda: self.client.upsert([item(w) for w in writes]))
        except PermanentError as exc:
            if len(writes) > 1:  # isolate the record the API refuses; deliver the rest
                for write in writes:
                    await self.upsert([write], links, again)
                return None
            await self.dead_letter_write(writes[0], str(exc), 1)
            return None
        except RetriesExhausted as exc:
            for write in writes:
                await self.dead_letter_write(write, self.reason(exc), exc.attempts)
            return None
        taken = {o.customer_id for o in outcomes if o.error is None and o.external_id}
        await self.remember([w for w in writes if w.customer_id in taken], _acknowledged)
        return writes, outcomes

    async def record(self, writes: list[Write], outcomes: list[Outcome], again: bool) -> None:
        """Store what each write did. A write the vendor matched to another customer's record
        (an upsert by our id finding a record whose link moved, Zendesk matching by email)
        has its owner written back over it and is tried once more, then dead-lettered."""
        by_customer = {w.customer_id: w for w in writes}
        delivered: list[tuple[str, str, str, str | None]] = []
        for outcome in outcomes:
            write = by_customer.pop(outcome.customer_id, None)
            if write is None:
                continue
            if outcome.error is not None or outcome.external_id is None:
                await self.dead_letter_write(write, outcome.error or "no id in the response", 1)
            else:
                pushed = write.desired_hash if write.known else None
                delivered.append((self.target, outcome.external_id, write.customer_id, pushed))
        for write in by_customer.values():
            await self.dead_letter_write(write, "the target returned no result for it", 1)
        claimed = []
        async with self._db:
            try:
                async with self.conn.transaction(), self.conn.cursor() as cursor:
                    await cursor.executemany(_LINK_UPSERT_SQL, delivered)
            except psycopg.errors.UniqueViolation:
                for row in delivered:  # one external record claimed by two customers: find it
                    try:
                        await self.conn.execute(_LINK_UPSERT_SQL, row)
                    except psycopg.errors.UniqueViolation:
                        claimed.append(row)
        DELIVERED.labels(self.target, "upsert").inc(len(delivered) - len(claimed))
        if not claimed:
            return
        await self.restore_owners([external_id for _, external_id, _, _ in claimed])
        retry = []
        for _, external_id, customer_id, _ in claimed:
            write = next(w for w in writes if w.customer_id == customer_id)
            if again:  # its owner holds the record again: a second try makes its own
                retry.append(write)
                continue
            error = f"{self.target} record {external_id} is already linked to another customer"
            await self.dead_letter_write(write, error, 1)
        if retry:
            async with self._db:
                links = await self.links([w.customer_id for w in retry])
            await self.upsert(retry, links, again=False)

    async def remember(
        self, writes: list[Write], change: Callable[[Ledger, Write], Ledger]
    ) -> None:
        """Record in the target's ledger (`sync.target_writes`) that `writes` are in flight or
        landed: their copies coming back are then known for our own writes."""
        changes = {w.customer_id: partial(change, write=w) for w in writes}
        async with self._db:
            await update_ledgers(self.conn, self.target, changes)

    async def restore_owners(self, external_ids: list[str]) -> None:
        """A vendor that matches writes by email (Zendesk) wrote another customer over these
        records (a duplicate, about to be merged): write their owners back over them."""
        async with self._db:
            cursor = await self.conn.execute(
                "select customer_id::text from sync.identity_links where system = %s"
                " and external_id = any(%s) and archived_at is null",
                (self.target, external_ids),
            )
            owners = [row[0] for row in await cursor.fetchall()]
            states = await desired_states(self.conn, self.rules, self.target, owners)
            links = await self.links(owners)
        id_property = self.rules.mappings[self.target].id_property
        writes = [
            Write(owner, "upsert", id_property, state.properties, state.desired_hash,
                  full=True, lane="update", force=True)
            for owner, state in states.items()
            if isinstance(state, Desired) and state.action == "upsert"
        ]  # fmt: skip
        if writes:
            log.warning("%s: writing %d records back to their owners", self.target, len(writes))
            await self.upsert(writes, links, again=False)

    async def archive(self, writes: list[tuple[Write, Link]]) -> None:
        items = [Archive(w.customer_id, link.external_id, w.idempotency_key) for w, link in writes]
        try:
            outcomes = await self.call(lambda: self.client.archive(items))
        except (PermanentError, RetriesExhausted) as exc:
            for write, _ in writes:
                await self.dead_letter_write(write, self.reason(exc), getattr(exc, "attempts", 1))
            return
        failed = {o.customer_id: o.error for o in outcomes if o.error is not None}
        for write, _ in writes:
            if write.customer_id in failed:
                await self.dead_letter_write(write, failed[write.customer_id] or "", 1)
        done = [w for w, _ in writes if w.customer_id not in failed]
        async with self._db, self.conn.cursor() as cursor:
            await cursor.executemany(
                _LINK_ARCHIVED_SQL, [(ARCHIVED_HASH, self.target, w.customer_id) for w in done]
            )
        DELIVERED.labels(self.target, "archive").inc(len(done))

    def reason(self, exc: TargetError) -> str:
        return _dead_letter_reason(exc, self.policy.give_up_after)

    async def dead_letter_write(self, write: Write, error: str, attempts: int) -> None:
        """Park the write's commands; what the target holds is unknown from now on, so the
        customer's next write (or the replay) sends the whole record."""
        async with self._db:
            await self.conn.execute(_LINK_UNKNOWN_SQL, (self.target, write.customer_id))
            await update_ledgers(self.conn, self.target, {write.customer_id: withdrawn})
            cursor = await self.conn.execute(
                "select merged_into::text from public.customers where id = %s",
                (write.customer_id,),
            )
            merged = await cursor.fetchone()
        if merged is not None and merged[0] is not None:  # a duplicate, gone into its survivor
            log.info("%s: write for %s dropped (merged into %s): %s", self.target,
                     write.customer_id, merged[0], error[:300])  # fmt: skip
            SKIPPED.labels(self.target).inc()
            return
        for command in write.commands:
            await self.dead_letter(
                command.customer_id, command.model_dump(mode="json"), error, attempts
            )

    async def dead_letter(
        self, key: str | None, payload: Any, error: str, attempts: int = 1
    ) -> None:
        letter = DeadLetter(
            stage="deliver", target=self.target, key=key, payload=payload, error=error,
            attempts=attempts,
        )  # fmt: skip
        log.warning("%s: dead-lettered command for %s: %s", self.target, key, error[:300])
        async with self._db:
            await insert_dead_letter(self.conn, letter)
        self.dead_letters.append(letter)
        DEAD.labels(self.target).inc()


async def run_adapter(
    settings: Settings, target: str, stop: asyncio.Event, *, inbound: bool = True
) -> None:
    """The target's adapter process: the outbound consumer and, where the vendor has one, the
    inbound side (adapters.inbound: webhook receiver, inbox drain, poller), concurrently and
    through one breaker and throttle, so inbound reads and outbound writes share the quota.
    Returns when `stop` is set; if either side fails, the other is stopped and it raises."""
    topics = Topics(settings.topic_prefix)
    plan = load_plan(settings, target)
    rules = load_rules(settings.ownership_file, settings.mapping_file, {"crm": settings.crm_vendor})
    consumer = AIOKafkaConsumer(
        topics.commands(target),
        bootstrap_servers=settings.bootstrap,
        group_id=f"crmsync-adapter-{target}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,  # Tansu holds a JoinGroup for half of it
        heartbeat_interval_ms=3_000,
        # A batch may wait out a target outage (retry_give_up_seconds per write, and waves
        # run in turn): leaving the group mid-batch would redeliver it all.
        max_poll_interval_ms=6 * 3600 * 1000,
        max_poll_records=500,
    )
    client = make_client(settings, target, plan)
    conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
    adapter = TargetAdapter(
        target,
        client,
        conn,
        rules,
        throttle_for(plan),
        RetryPolicy(give_up_after=settings.retry_give_up_seconds),
        CircuitBreaker(),
        plan.concurrency,
    )
    side = build_inbound(settings, target, adapter.call, client, rules) if inbound else None
    log.info(
        "%s adapter consuming %s -> %s (%s, plan %s)",
        target, topics.commands(target), settings.target_url(target), plan.vendor, plan.plan,
    )  # fmt: skip
    try:
        loops = [consume_commands(consumer, adapter, stop)]
        if side is not None:
            loops.append(side.run(stop))
        await run_all(loops, stop)
    finally:
        await client.aclose()
        await conn.close()


async def consume_commands(
    consumer: AIOKafkaConsumer, adapter: TargetAdapter, stop: asyncio.Event
) -> None:
    """Join the group (the inbound side meanwhile already runs), then deliver each batch of
    commands and commit its offsets, until `stop`."""
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            records = [r for part in batches.values() for r in part if r.value]
            if records:
                await adapter.handle([r.value for r in records], [r.key for r in records])
                try:
                    await consumer.commit()
                except CommitFailedError as exc:  # a rebalance: redelivery is idempotent
                    log.warning("offset commit failed, records will be redelivered: %s", exc)
    finally:
        await consumer.stop()
