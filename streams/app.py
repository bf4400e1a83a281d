"""The Faust app (`faust -A streams.app worker`): the agents and the per-customer state table.

- `stage` reads the staging mirrors' CDC records (changes made in a target), finds each
  record's customer and routes it onto `crmsync.inbound`, keyed like the customers topic so
  that both land on the same partition as the customer's state.
- `ingest` folds canonical changes and inbound ones into the customer's state with the pure
  `crmsync.domain.decide.apply`, and sends the resulting commands, write-back and change
  event; refused changes and conflicts go to `sync.audit_log` and `sync.review_queue`. It
  first claims the emails a batch gives customers (crmsync.domain.collisions): a customer
  given an email another holds is merged or reviewed before any target hears of it, and a
  timer (`settle_emails`) hands an email given up to a waiting customer once the targets
  have let it go.
- `identify` keeps the identity index (`sync.identity_index`) from the customers' changes and
  finds duplicates as they arrive: a confident one is merged into the customer created first
  (crmsync.identity), a doubtful one goes to the review queue. `stage` matches a record made
  by hand in a target to a customer with the same index: it is linked, reviewed or made a
  new customer.
- `write_back` writes golden values into `public.customers`; `audit` records every applied
  change from the change feed in `sync.audit_log`.

A record that cannot be parsed is dead-lettered (to `sync.dead_letters`, which Debezium
mirrors onto the dead-letter topic) and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import faust
import orjson
import psycopg
from faust.types import Message
from prometheus_client import Counter, Gauge, start_http_server
from pydantic import ValidationError

from canonical_db.target_writes import ledger_of
from crmsync import identity
from crmsync.broker import STATE_TABLE, STREAMS_APP_ID, Topics, tail_last
from crmsync.dead_letters import DeadLetter, insert_dead_letter
from crmsync.domain.collisions import EmailClaim, Gate, email_claim, gated, reread
from crmsync.domain.customer import GoldenRecord
from crmsync.domain.decide import CustomerState, Decision, GoldenChange, WriteBack, apply
from crmsync.domain.events import CustomerChange, SourcePosition, parse_customer_event
from crmsync.domain.identity import Thresholds, person_of
from crmsync.domain.inbound import (
    STAGING_TABLES,
    InboundChange,
    Relinked,
    Resolution,
    StagedRecord,
    decode,
    parse_inbound,
    parse_staging_event,
)
from crmsync.domain.writes import Ledger
from crmsync.errors import ValidationFailed
from crmsync.journal import record_applied, record_attempts
from crmsync.logs import logging_config
from crmsync.rules import load_rules
from crmsync.settings import load_settings
from crmsync.writeback import write_back as write_rows_back
from streams.state import pack, unpack

__all__ = ["app"]

log = logging.getLogger("crmsync.streams")
T = TypeVar("T")

settings = load_settings()
rules = load_rules(settings.ownership_file, settings.mapping_file, {"crm": settings.crm_vendor})
topics = Topics(settings.topic_prefix)
thresholds = Thresholds(settings.identity_auto_link, settings.identity_review)
MERGE_FILL = identity.merge_fill(rules)

app = faust.App(
    STREAMS_APP_ID,
    broker=f"kafka://{settings.bootstrap}",
    store="memory://",
    datadir=str(settings.state_dir / "faust"),
    topic_partitions=settings.partitions,
    # Tansu rules (DESIGN.md, crmsync.broker): batches may be large as long as each burst ends
    # with a record alone; short sessions; no transactions.
    producer_max_batch_size=512 * 1024,
    producer_linger=0.002,
    broker_session_timeout=10,
    processing_guarantee="at_least_once",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    logging_config=logging_config(settings.log_level, "streams"),
)

#: Records the ingest agent decides before taking their effects together, and how long it
#: waits for a batch to fill: the most latency batching adds.
INGEST_BATCH, INGEST_WITHIN = 1000, 0.02

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


def _topic(*names: str) -> faust.TopicT:
    return app.topic(*names, partitions=settings.partitions, **RAW)


# Canonical changes and inbound ones share the ingest agent; both are keyed {"id": <customer>}.
changes_in = _topic(topics.customers_cdc, topics.inbound)
customers_cdc = _topic(topics.customers_cdc)
inbound = _topic(topics.inbound)
staged_systems = {topics.cdc(f"staging.{table}"): system
                  for system, table in STAGING_TABLES.items()
                  if system in rules.mappings}  # fmt: skip
staging_cdc = _topic(*staged_systems)
commands = {t: _topic(topics.commands(t)) for t in rules.mappings}
writebacks = _topic(topics.commands("canonical"))
changes = _topic(topics.changes)

# Keys use the app's default JSON codec; values are CustomerState packed (streams.state).
customers = app.Table(STATE_TABLE, default=None, partitions=settings.partitions, value_type=bytes)

EVENTS = Counter("crmsync_streams_events", "CDC records consumed", ["op"])
INBOUND = Counter("crmsync_streams_inbound", "Target records staged", ["system", "outcome"])
COMMANDS = Counter("crmsync_streams_commands", "Commands emitted", ["target", "action"])
CHANGES = Counter("crmsync_streams_changes", "Golden-record changes published")
REFUSED = Counter("crmsync_streams_refused", "Changes not applied", ["system", "outcome"])
WRITTEN_BACK = Counter("crmsync_streams_written_back", "Fields written to public.customers")
DEAD = Counter("crmsync_streams_dead_letters", "Records dead-lettered at ingest")
MATCHED = Counter("crmsync_identity_matched", "Target records matched", ["system", "outcome"])
DUPLICATES = Counter("crmsync_identity_duplicates", "Canonical duplicates found", ["outcome"])
COLLISIONS = Counter(
    "crmsync_identity_email_collisions", "Customers given an email another holds", ["outcome"]
)
IN_STATE = Gauge("crmsync_streams_customers_in_state", "Customers in this worker's state table")
IN_STATE.set_function(lambda: len(customers.data))


class Database:
    """One lazily opened connection, used by one agent at a time. While the database is
    unreachable, work waits and retries with backoff: an agent that gave up would have its
    records acknowledged, and so lost."""

    def __init__(self) -> None:
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        delay = 0.5
        while True:
            try:
                async with self._lock:
                    if self._conn is None or self._conn.closed:
                        self._conn = await psycopg.AsyncConnection.connect(
                            settings.dsn, autocommit=True
                        )
                    return await work(self._conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                if self._conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await self._conn.close()
                self._conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


ingest_db, stage_db, write_back_db, audit_db = Database(), Database(), Database(), Database()
identify_db, emails_db = Database(), Database()


@app.task
async def serve_metrics() -> None:
    start_http_server(settings.streams_metrics_port, addr="127.0.0.1")


async def dead_letter(message: Message, error: str, db: Database = ingest_db) -> None:
    letter = DeadLetter(
        stage="ingest",
        key=(message.key or b"").decode("utf-8", errors="replace"),
        payload=DeadLetter.payload_of(message.value),
        error=error,
        source={"topic": message.topic, "partition": message.partition,
                "offset": message.offset},
    )  # fmt: skip
    await db.run(lambda conn: insert_dead_letter(conn, letter))
    DEAD.inc()


def parse(message: Message) -> CustomerChange | InboundChange | Resolution | Relinked | None:
    if message.topic == topics.inbound:
        return parse_inbound(message.value)
    change = parse_customer_event(
        message.key,
        message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        policy=rules.ingest,
    )
    if change is not None:
        EVENTS.labels(change.op).inc()
    return change  # None: a tombstone; the delete before it did the work


class BatchStates:
    """The states one ingest batch works on: each customer's is read from the table once,
    and the batch's newest kept here until its effects are taken (`take_effects`)."""

    def __init__(self) -> None:
        self.stored: dict[str, CustomerState | None] = {}
        self.newest: dict[str, CustomerState | None] = {}

    def get(self, customer_id: str) -> CustomerState | None:
        if customer_id not in self.newest:
            packed = customers.get(customer_id)
            state = unpack(packed) if packed else None
            self.stored[customer_id] = self.newest[customer_id] = state
        return self.newest[customer_id]


Change = CustomerChange | InboundChange | Resolution | Relinked


@dataclass
class Parsed:
    message: Message
    change: Change


def _live(state: CustomerState | None) -> GoldenRecord | None:
    """The customer's golden record while it is live (what its records were last given)."""
    return state.golden if state is not None and not state.deleted else None


def _is_recheck(change: Change) -> bool:
    return isinstance(change, Relinked) and change.source.topic == identity.EMAIL_RECHECK


async def parse_batch(batch: list[Any], states: BatchStates) -> list[Parsed]:
    """Parse a batch's records (dead-lettering what cannot be read). An email recheck becomes
    its customer's row, read now, as a change that claims the row's email again."""
    parsed = []
    for event in batch:
        message = event.message
        try:
            change = parse(message)
        except (ValidationFailed, ValidationError) as exc:
            log.warning("dead-lettered %s@%s: %s", message.topic, message.offset, exc)
            await dead_letter(message, str(exc))
            continue
        except Exception as exc:  # a bug must not stop the stream: park the record, go on
            log.exception("failed on %s@%s; dead-lettered", message.topic, message.offset)
            await dead_letter(message, f"internal error: {type(exc).__name__}: {exc}")
            continue
        if change is not None:
            parsed.append(Parsed(message, change))
    rechecked = [p.change.customer_id for p in parsed if _is_recheck(p.change)]
    if not rechecked:
        return parsed
    rows = await ingest_db.run(
        partial(identity.current_records, ids=rechecked, policy=rules.ingest)
    )
    kept = []
    for one in parsed:
        if _is_recheck(one.change):
            record = rows.get(one.change.customer_id)
            if record is None:  # deleted, merged or invalid by now: its own event says so
                continue
            m, at = one.message, one.change.source
            source = SourcePosition(topic=m.topic, partition=m.partition, offset=m.offset,
                                    op="u", tx_id=at.tx_id, ts_ms=at.ts_ms)  # fmt: skip
            one.change = reread(_live(states.get(record.id)), record, source)
        kept.append(one)
    return kept


class EmailGate:
    """One batch's email claims (crmsync.domain.collisions), made together before the batch
    is decided: who got the email each change claims, and for a collision the identity
    decision (a merge, a review, or a pair a person kept apart). A batch without new or
    changed emails costs nothing here."""

    def __init__(self) -> None:
        #: Per (customer, email): (position in the batch, gate), in batch order.
        self.answers: dict[tuple[str, str | None], list[tuple[int, Gate]]] = {}
        #: Customers whose rows are to be read again (a claim the batch did not make).
        self.rechecks: set[str] = set()

    def gate(self, index: int, claim: EmailClaim) -> Gate:
        """What the claim of the change at `index` came to (the latest answer for the same
        customer and email at or before it). A claim the batch did not make (the customer's
        state moved within the batch) is held, and the row read again in a later batch."""
        answers = self.answers.get((claim.customer_id, claim.email), [])
        before = [gate for at, gate in answers if at <= index]
        if before:
            return before[-1]
        self.rechecks.add(claim.customer_id)
        return "held"


async def claim_emails(parsed: list[Parsed], states: BatchStates) -> EmailGate:
    """Claim every email the batch's canonical changes give their customers, in one round
    trip, and decide each collision before any target is written. The claims are made as
    though every change got its email; `EmailGate.gate` covers a change whose customer's
    state moved otherwise within the batch."""
    gate = EmailGate()
    claims: list[tuple[int, EmailClaim]] = []
    simulated: dict[str, GoldenRecord | None] = {}
    for index, one in enumerate(parsed):
        change = one.change
        if not isinstance(change, CustomerChange):
            continue
        cid = change.customer_id
        if cid not in simulated:
            simulated[cid] = _live(states.get(cid))
        claim = email_claim(simulated[cid], change)
        if claim is not None:
            claims.append((index, claim))
        record = change.record
        simulated[cid] = record if record is not None and record.deleted_at is None else None
    if not claims:
        return gate
    answers = await ingest_db.run(
        partial(identity.claim_emails, claims=[claim for _, claim in claims])
    )
    collisions: dict[tuple[str, str | None, str], Gate] = {}
    for (index, claim), answer in zip(claims, answers, strict=True):
        verdict: Gate = "granted"
        if answer.releasing:  # the holder is letting it go: it is handed over, no question
            verdict = "held"
        elif answer.holder is not None and answer.holder != claim.customer_id:
            key = (claim.customer_id, claim.email, answer.holder)
            if key not in collisions:
                change = parsed[index].change
                assert isinstance(change, CustomerChange) and change.record is not None
                collisions[key] = await decide_collision(change.record, answer.holder)
            verdict = collisions[key]
        gate.answers.setdefault((claim.customer_id, claim.email), []).append((index, verdict))
    return gate


async def decide_collision(record: GoldenRecord, holder: str) -> Gate:
    """The identity decision on a customer given the email `holder` holds: merged (the
    survivor is written whole), reviewed, or kept apart by a person. Until a merge or a
    person's decision is through, the customer's change is held."""
    collision = await ingest_db.run(
        partial(identity.decide_collision, record=record, holder=holder,
                thresholds=thresholds, fill=MERGE_FILL)
    )  # fmt: skip
    COLLISIONS.labels(collision.outcome).inc()
    log.info("customer %s was given %s, held by %s: %s", record.id, record.email, holder,
             collision.outcome)  # fmt: skip
    if collision.outcome == "review":
        DUPLICATES.labels("review").inc()
    merged = collision.merged
    if merged is not None:
        DUPLICATES.labels("merged").inc()
        log.info("merged %s into %s (merge %d, same email)", merged.loser, merged.survivor,
                 merged.merge_id)  # fmt: skip
        await route(merged.survivor, merged.relinked(list(rules.mappings)))
    return "apart" if collision.outcome == "apart" else "held"


def decide(
    one: Parsed, index: int, states: BatchStates, gate: EmailGate
) -> tuple[str, Decision] | None:
    """Fold one record into its customer's state (None: nothing to do), once its email
    claim, if it makes one, is answered. The new state is kept in `states`, not stored: see
    `take_effects` for when it may be."""
    change: Change | None = one.change
    state = states.get(one.change.customer_id)
    if isinstance(change, CustomerChange):
        golden = _live(state)
        claim = email_claim(golden, change)
        if claim is not None:
            decided = gated(golden, change, gate.gate(index, claim))
            if decided is not None and decided is not change and decided.record is not None:
                rules.ingest.check(decided.record)  # without the email, can every target take it?
            change = decided
    if change is None:  # a new customer waits for the decision on its email
        return None
    decision = apply(state, change, rules, dt.datetime.now(dt.UTC).isoformat())
    if decision is None:
        INBOUND.labels(change.source.system, "unknown customer").inc()
        return None
    return change.customer_id, decision


@dataclass
class Decided:
    message: Message
    customer_id: str
    decision: Decision  # its state is the customer's after this record


@app.agent(changes_in)
async def ingest(stream: faust.StreamT[bytes]) -> None:
    """Decide a batch of records in order, then take all their effects at once: one wait for
    the broker's acknowledgements per batch instead of one per record. The emails the batch
    gives customers are claimed first (`claim_emails`), so a collision is decided before any
    target hears of it."""
    async for batch in stream.take_events(INGEST_BATCH, within=INGEST_WITHIN):
        states = BatchStates()
        parsed = await parse_batch(batch, states)
        gate = await claim_emails(parsed, states)
        decided: list[Decided] = []
        for index, one in enumerate(parsed):
            message = one.message
            try:
                outcome = decide(one, index, states, gate)
            except (ValidationFailed, ValidationError) as exc:
                log.warning("dead-lettered %s@%s: %s", message.topic, message.offset, exc)
                await dead_letter(message, str(exc))
                continue
            except Exception as exc:  # a bug must not stop the stream: park the record, go on
                log.exception("failed on %s@%s; dead-lettered", message.topic, message.offset)
                await dead_letter(message, f"internal error: {type(exc).__name__}: {exc}")
                continue
            if outcome is None:
                continue
            customer_id, decision = outcome
            if decision.invalid:  # judged without them; kept with the reasons
                log.warning("dead-lettered values of %s@%s", message.topic, message.offset)
                await dead_letter(message, "; ".join(decision.invalid))
            states.newest[customer_id] = decision.state
            decided.append(Decided(message, customer_id, decision))
        try:
            await take_effects(decided, states)
        except Exception:  # a bug must not stop the stream: one by one, park what fails
            log.exception("effects of a batch failed; taking them one by one")
            for one_decided in decided:
                try:
                    await take_effects([one_decided], states)
                except Exception as exc:
                    m = one_decided.message
                    log.exception("effects of %s@%s failed; dead-lettered", m.topic, m.offset)
                    await dead_letter(m, f"internal error: {type(exc).__name__}: {exc}")
        await recheck(gate.rechecks, "its email claim was not made with its batch")


async def recheck(customer_ids: Iterable[str], reason: str) -> None:
    """Have customers' rows read again by ingest, their emails claimed again."""
    sent = []
    for customer_id in customer_ids:
        message = identity.email_recheck(customer_id, reason)
        key, value = orjson.dumps({"id": customer_id}), message.model_dump_json().encode()
        sent.append(await inbound.send(key=key, value=value, force=True))
    await asyncio.gather(*sent)


#: How often emails given up are checked for being out of the targets, and how long a
#: customer handed one is not asked to be read again (its recheck is on its way).
SETTLE_EVERY, RECHECK_AGAIN_AFTER = 1.0, 30.0
_rechecked: dict[str, float] = {}


@app.timer(SETTLE_EVERY)
async def settle_emails() -> None:
    """Hand each email a customer gave up to a customer waiting for it, once the targets have
    the first one's records without it (archived, or written since), and have the waiting
    customers' rows read again: one record lets an email go before another takes it."""
    try:
        waiting = await emails_db.run(identity.settle_emails)
    except Exception:  # a bug must not stop the timer: it tries again
        log.exception("settling emails failed")
        return
    now = asyncio.get_running_loop().time()
    for cid, at in list(_rechecked.items()):
        if now - at > RECHECK_AGAIN_AFTER:
            del _rechecked[cid]
    due = [cid for cid in dict.fromkeys(waiting) if cid not in _rechecked]
    if due:
        await recheck(due, "the email it waits for was handed over")
        _rechecked.update(dict.fromkeys(due, now))


def _send(topic: faust.TopicT, key: str, model: Any) -> Awaitable[Any]:
    return topic.send(key=key.encode(), value=model.model_dump_json().encode(), force=True)


async def take_effects(decided: list[Decided], states: BatchStates) -> None:
    """Send the decisions' commands, write-backs and change events and record their refused
    attempts, all acknowledged, and only then store the new states. The state records what
    was commanded and its changelog is written at once, while sends inside an agent would
    wait for the offset commit; a crash in between replays the records, and every effect is
    idempotent (the adapters, the write-back and the journal drop what they already did)."""
    sent = []
    attempts = []
    for one in decided:
        decision = one.decision
        for c in decision.commands:
            sent.append(await _send(commands[c.target], c.customer_id, c))
        if decision.writeback is not None:
            sent.append(await _send(writebacks, one.customer_id, decision.writeback))
        if decision.change is not None:
            sent.append(await _send(changes, one.customer_id, decision.change))
        attempts.extend(decision.attempts)
    if attempts:
        await ingest_db.run(partial(record_attempts, attempts=attempts))
    await asyncio.gather(*sent)
    await store_states(decided, states)
    for one in decided:
        for attempt in one.decision.attempts:
            REFUSED.labels(attempt.system, attempt.outcome).inc()
        for command in one.decision.commands:
            COMMANDS.labels(command.target, command.action).inc()
        if one.decision.change is not None:
            CHANGES.inc()


async def store_states(decided: list[Decided], states: BatchStates) -> None:
    """Each customer's newest state, where the batch changed it (an echo dropped changes
    nothing), into the table and its changelog, on the partition of the records that carried
    it. Each partition's last write goes out alone, after the rest are acknowledged, so that
    the changelog's end offsets (which recovery reads up to) are exact on Tansu
    (crmsync.broker.tail_last)."""
    newest = {one.customer_id: (one.message.partition, one.decision.state) for one in decided}
    changed = {cid: (partition, state) for cid, (partition, state) in newest.items()
               if state != states.stored[cid]}  # fmt: skip
    changelog = customers.changelog_topic.get_topic_name()
    placed = [(changelog, partition, (cid, partition, pack(state)))
              for cid, (partition, state) in changed.items()]  # fmt: skip
    for part in tail_last(placed):
        futures = []
        for customer_id, partition, packed in part:
            customers.data[customer_id] = packed
            futures.append(customers.send_changelog(partition, customer_id, packed))
        await asyncio.gather(*futures)
    for customer_id, (_, state) in changed.items():
        states.stored[customer_id] = state


async def customer_of(system: str, external_id: str) -> str | None:
    """The customer an external record is linked to, when it does not carry our id."""

    async def lookup(conn: psycopg.AsyncConnection[Any]) -> Any:
        cursor = await conn.execute(
            "select customer_id::text from sync.identity_links"
            " where system = %s and external_id = %s",
            (system, external_id),
        )
        return await cursor.fetchone()

    row = await stage_db.run(lookup)
    return row[0] if row else None


async def written_to(system: str, customer_id: str) -> Ledger:
    """What we have written to the customer's record in `system`, read as a copy of it is
    routed (not when it is judged): a copy can only show writes made before it is routed."""
    return await stage_db.run(partial(ledger_of, system=system, customer_id=customer_id))


@app.agent(staging_cdc)
async def stage(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        message = event.message
        if message.value is None:
            continue
        system = staged_systems[message.topic]
        try:
            staged = parse_staging_event(
                message.value,
                system=system,
                vendor=settings.vendor(system),
                mapping=rules.mappings[system],
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )
        except ValidationFailed as exc:
            log.warning("dead-lettered %s@%s: %s", message.topic, message.offset, exc)
            await dead_letter(message, str(exc), stage_db)
            continue
        if staged is None:
            continue
        link = None
        customer_id = staged.customer_id or await customer_of(system, staged.external_id)
        if customer_id is None:  # made in the target by hand: who is it?
            if staged.deleted:
                continue
            resolved = await match_record(system, staged)
            MATCHED.labels(system, resolved.outcome).inc()
            if resolved.outcome != "link":  # reviewed, or a new customer's insert carries it
                continue
            customer_id, link = resolved.customer_id, resolved.method
        change = InboundChange(
            customer_id=customer_id,
            system=system,
            properties=staged.properties,
            previous=None if link else staged.previous,
            deleted=staged.deleted,
            source=staged.source,
            link=link,
            written=await written_to(system, customer_id),
        )
        INBOUND.labels(system, "routed").inc()
        await route(customer_id, change)


async def route(customer_id: str, change: InboundChange | Relinked) -> None:
    """Onto `crmsync.inbound`, keyed like the customers topic: the customer's partition."""
    await inbound.send(
        key=orjson.dumps({"id": customer_id}), value=change.model_dump_json().encode()
    )


async def match_record(system: str, staged: StagedRecord) -> identity.Resolved:
    values, _ = decode(rules.mappings[system], staged.properties, GoldenRecord(id=""))
    resolved = await stage_db.run(
        partial(identity.resolve_record, system=system, external_id=staged.external_id,
                values=values, thresholds=thresholds)
    )  # fmt: skip
    log.info("%s record %s: %s %s (%s, %.2f)", system, staged.external_id, resolved.outcome,
             resolved.customer_id or "", resolved.method or "-", resolved.confidence)  # fmt: skip
    return resolved


@app.agent(customers_cdc)
async def identify(stream: faust.StreamT[bytes]) -> None:
    """Index every customer as it changes, and look for a duplicate of each one an app
    created or changed (a snapshot read is only indexed: it is the initial load)."""
    async for batch in stream.take_events(500, within=0.1):
        # Per customer: as it now is, whether to look for a duplicate, whether to re-index.
        current: dict[str, tuple[GoldenRecord | None, bool, bool]] = {}
        for event in batch:
            m = event.message
            try:
                change = parse_customer_event(
                    m.key,
                    m.value,
                    topic=m.topic,
                    partition=m.partition,
                    offset=m.offset,
                    policy=rules.ingest,
                )
            except (ValidationFailed, ValidationError):
                continue  # ingest dead-letters it with the reason
            if change is None:
                continue
            record = change.record if change.record and not change.record.deleted_at else None
            before = change.before if change.before and not change.before.deleted_at else None
            # Most updates change nothing about who someone is (a plan, a consent): skip them.
            moved = record is None or before is None or person_of(before) != person_of(record)
            _, check, index = current.get(change.customer_id, (None, False, False))
            check = check or (moved and record is not None and not change.source.snapshot)
            index = index or moved or change.source.snapshot
            current[change.customer_id] = (record, check, index)
        records = [(cid, rec) for cid, (rec, _, index) in current.items() if index]
        try:
            await identify_db.run(partial(identity.index_customers, records=records))
        except Exception as exc:  # a bug or a row the database refuses: park them, go on
            log.exception("identity index batch failed; dead-lettered")
            for cid, _ in records:
                await park("identify", orjson.dumps({"id": cid}), repr(exc), identify_db)
            continue
        for record, check, _ in current.values():
            if record is None or not check:
                continue
            try:
                await find_duplicate(record)
            except Exception as exc:  # a bug must not stop the index: park it, go on
                log.exception("duplicate check of %s failed; dead-lettered", record.id)
                payload = record.model_dump_json().encode()
                await park("identify", payload, f"{type(exc).__name__}: {exc}", identify_db)


async def find_duplicate(record: GoldenRecord) -> None:
    verdict = await identify_db.run(
        partial(identity.find_duplicate, record=record, thresholds=thresholds)
    )
    if verdict.outcome == "review":
        DUPLICATES.labels("review").inc()
        await identify_db.run(partial(identity.review_duplicate, record=record, verdict=verdict))
        return
    if verdict.outcome != "link":
        return
    assert verdict.customer_id is not None
    merged = await identify_db.run(
        partial(identity.merge, pair=(record.id, verdict.customer_id),
                method=verdict.method or "fuzzy", confidence=verdict.confidence,
                by="crmsync", fill=MERGE_FILL)
    )  # fmt: skip
    if merged is None:
        return
    DUPLICATES.labels("merged").inc()
    log.info("merged %s into %s (merge %d, %s %.2f)", merged.loser, merged.survivor,
             merged.merge_id, verdict.method, verdict.confidence)  # fmt: skip
    await route(merged.survivor, merged.relinked(list(rules.mappings)))


@app.agent(writebacks)
async def write_back(stream: faust.StreamT[bytes]) -> None:
    async for batch in stream.take(500, within=0.05):
        parsed = []
        for value in batch:
            try:
                parsed.append(WriteBack.model_validate_json(value))
            except ValidationError as exc:
                await park("write-back", value, f"unreadable write-back: {exc}", write_back_db)
        try:
            written, skipped = await write_back_db.run(partial(write_rows_back, writebacks=parsed))
        except Exception as exc:  # a bug or a row the database refuses: park them, go on
            log.exception("write-back batch failed; dead-lettered")
            for wb in parsed:
                await park("write-back", wb.model_dump_json().encode(), repr(exc), write_back_db)
            continue
        WRITTEN_BACK.inc(written)
        if skipped:
            log.info("%d write-back fields skipped: the row changed since", skipped)


@app.agent(changes)
async def audit(stream: faust.StreamT[bytes]) -> None:
    async for batch in stream.take(1000, within=0.2):
        parsed = []
        for value in batch:
            try:
                parsed.append(GoldenChange.model_validate_json(value))
            except ValidationError as exc:
                await park("audit", value, f"unreadable change event: {exc}", audit_db)
        try:
            await audit_db.run(partial(record_applied, changes=parsed))
        except Exception as exc:
            log.exception("audit batch failed; dead-lettered")
            for change in parsed:
                await park("audit", change.model_dump_json().encode(), repr(exc), audit_db)


async def park(stage: str, value: bytes, error: str, db: Database) -> None:
    """A record an agent could not use, kept with the reason (it is acknowledged after)."""
    letter = DeadLetter(stage=stage, payload=DeadLetter.payload_of(value), error=error)
    await db.run(lambda conn: insert_dead_letter(conn, letter))
    DEAD.inc()
