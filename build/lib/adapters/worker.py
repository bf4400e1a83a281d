"""The CRM adapter worker: consumes `crmsync.commands.crm`, writes to HubSpot, records links.

Per batch of records: parse, coalesce per customer (adapters.plan), skip what the target
already holds (`sync.identity_links.pushed_hash`), send batch upserts/archives through the
token bucket with retries, dead-letter what the target refuses (`sync.dead_letters`, mirrored
onto the dead-letter topic by Debezium), then commit the offsets.
Delivery is at-least-once; upserts by `crmsync_id` make it effectively once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError
from prometheus_client import Counter
from pydantic import ValidationError

from adapters.hubspot import BATCH_LIMIT, HubSpotClient
from adapters.plan import Write, plan_writes
from adapters.ratelimit import TokenBucket
from adapters.retry import RetryPolicy
from crmsync.broker import Topics
from crmsync.dead_letters import DeadLetter, insert_dead_letter
from crmsync.domain.decide import ARCHIVED_HASH, Command
from crmsync.errors import PermanentError, RateLimited, RetriesExhausted, TransientError
from crmsync.settings import Settings

__all__ = ["CrmAdapter", "run_crm_adapter"]

log = logging.getLogger("crmsync.adapter")
T = TypeVar("T")

CONSUMED = Counter("crmsync_adapter_commands", "Commands consumed", ["target"])
API_CALLS = Counter("crmsync_adapter_api_calls", "API requests sent", ["target"])
RATE_LIMITED = Counter("crmsync_adapter_rate_limited", "429 responses", ["target"])
RETRIES = Counter("crmsync_adapter_retries", "Retried API requests", ["target"])
DELIVERED = Counter("crmsync_adapter_delivered", "Writes applied", ["target", "action"])
SKIPPED = Counter("crmsync_adapter_skipped", "Writes the target already held", ["target"])
DEAD = Counter("crmsync_adapter_dead_letters", "Commands dead-lettered", ["target"])

TARGET = "crm"
_LINKS_SQL = """
    select customer_id::text, external_id, pushed_hash, archived_at is not null
    from sync.identity_links where system = %s and customer_id = any(%s::uuid[])"""
_LINK_UPSERT_SQL = """
    insert into sync.identity_links
        (system, external_id, customer_id, method, confidence, pushed_hash, pushed_at)
    values (%s, %s, %s, 'created', 1.0, %s, now())
    on conflict (system, customer_id) do update
        set external_id = excluded.external_id, pushed_hash = excluded.pushed_hash,
            pushed_at = now(), archived_at = null"""
_LINK_ARCHIVED_SQL = """
    update sync.identity_links set archived_at = now(), pushed_hash = %s, pushed_at = now()
    where system = %s and customer_id = %s::uuid"""


@dataclass(frozen=True)
class Link:
    external_id: str
    pushed_hash: str | None
    archived: bool


class CrmAdapter:
    def __init__(
        self,
        client: HubSpotClient,
        conn: psycopg.AsyncConnection[Any],
        bucket: TokenBucket,
        policy: RetryPolicy,
    ) -> None:
        self.client = client
        self.conn = conn
        self.bucket = bucket
        self.policy = policy
        self.dead_letters: list[DeadLetter] = []  # this process's, newest last (for tests/logs)

    async def handle(self, values: list[bytes]) -> None:
        """Deliver one batch of command records; returns when each is applied or dead-lettered."""
        commands = []
        for value in values:
            try:
                commands.append(Command.model_validate_json(value))
            except ValidationError as exc:
                await self.dead_letter(None, DeadLetter.payload_of(value), f"bad command: {exc}")
        CONSUMED.labels(TARGET).inc(len(values))
        for wave in plan_writes(commands):
            links = await self.links([w.customer_id for w in wave])
            upserts, archives = [], []
            for write in wave:
                link = links.get(write.customer_id)
                if link is not None and link.pushed_hash == write.desired_hash:
                    SKIPPED.labels(TARGET).inc()
                elif write.action == "upsert":
                    upserts.append(write)
                elif link is not None and not link.archived:
                    archives.append((write, link))
                else:
                    SKIPPED.labels(TARGET).inc()  # nothing there to archive
            for start in range(0, len(upserts), BATCH_LIMIT):
                await self.upsert(upserts[start : start + BATCH_LIMIT])
            for start in range(0, len(archives), BATCH_LIMIT):
                await self.archive(archives[start : start + BATCH_LIMIT])

    async def links(self, customer_ids: list[str]) -> dict[str, Link]:
        cursor = await self.conn.execute(_LINKS_SQL, (TARGET, customer_ids))
        return {row[0]: Link(*row[1:]) for row in await cursor.fetchall()}

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """One API request through the bucket, retried on 429/5xx/timeouts with backoff."""
        attempt = 0
        while True:
            attempt += 1
            await self.bucket.acquire()
            API_CALLS.labels(TARGET).inc()
            try:
                return await request()
            except RateLimited as exc:
                RATE_LIMITED.labels(TARGET).inc()
                error: RateLimited | TransientError = exc
                delay = self.policy.delay(attempt, exc.retry_after)
                self.bucket.pause(delay)  # everyone waits, not just this request
            except TransientError as exc:
                error, delay = exc, self.policy.delay(attempt)
            if self.policy.exhausted(attempt):
                raise RetriesExhausted(attempt, error)
            RETRIES.labels(TARGET).inc()
            log.info("retrying in %.2fs after: %s", delay, error)
            await asyncio.sleep(delay)

    async def upsert(self, writes: list[Write]) -> None:
        id_property = writes[0].id_property
        try:
            created, failed = await self.call(
                lambda: self.client.batch_upsert(id_property, [w.properties for w in writes])
            )
        except PermanentError as exc:
            if len(writes) > 1:  # isolate the input the API refuses; deliver the rest
                for write in writes:
                    await self.upsert([write])
                return
            await self.dead_letter_write(writes[0], str(exc), 1)
            return
        except RetriesExhausted as exc:
            for write in writes:
                await self.dead_letter_write(write, str(exc), exc.attempts)
            return
        by_customer = {w.customer_id: w for w in writes}
        async with self.conn.cursor() as cursor:
            await cursor.executemany(
                _LINK_UPSERT_SQL,
                [(TARGET, hs_id, cid, by_customer[cid].desired_hash)
                 for cid, hs_id in created.items() if cid in by_customer],
            )  # fmt: skip
        DELIVERED.labels(TARGET, "upsert").inc(len(created))
        for customer_id in failed:
            if len(writes) > 1:
                await self.upsert([by_customer[customer_id]])
            else:
                await self.dead_letter_write(by_customer[customer_id], "not in upsert results", 1)

    async def archive(self, writes: list[tuple[Write, Link]]) -> None:
        try:
            ids = [link.external_id for _, link in writes]
            await self.call(lambda: self.client.batch_archive(ids))
        except (PermanentError, RetriesExhausted) as exc:
            for write, _ in writes:
                await self.dead_letter_write(write, str(exc), getattr(exc, "attempts", 1))
            return
        async with self.conn.cursor() as cursor:
            await cursor.executemany(
                _LINK_ARCHIVED_SQL, [(ARCHIVED_HASH, TARGET, w.customer_id) for w, _ in writes]
            )
        DELIVERED.labels(TARGET, "archive").inc(len(writes))

    async def dead_letter_write(self, write: Write, error: str, attempts: int) -> None:
        for command in write.commands:
            await self.dead_letter(
                command.customer_id, command.model_dump(mode="json"), error, attempts
            )

    async def dead_letter(
        self, key: str | None, payload: Any, error: str, attempts: int = 1
    ) -> None:
        letter = DeadLetter(
            stage="deliver", target=TARGET, key=key, payload=payload, error=error, attempts=attempts
        )
        log.warning("dead-lettered command for %s: %s", key, error[:300])
        await insert_dead_letter(self.conn, letter)
        self.dead_letters.append(letter)
        DEAD.labels(TARGET).inc()


async def run_crm_adapter(settings: Settings, stop: asyncio.Event) -> None:
    topics = Topics(settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        topics.commands(TARGET),
        bootstrap_servers=settings.bootstrap,
        group_id=f"crmsync-adapter-{TARGET}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,  # Tansu holds a JoinGroup for half of it
        heartbeat_interval_ms=3_000,
    )
    client = HubSpotClient(settings.crm_url, settings.crm_token.get_secret_value())
    conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)

    adapter = CrmAdapter(
        client,
        conn,
        TokenBucket(settings.crm_requests_per_window, settings.crm_window_seconds),
        RetryPolicy(),
    )
    await consumer.start()
    log.info("crm adapter consuming %s -> %s", topics.commands(TARGET), settings.crm_url)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            values = [r.value for records in batches.values() for r in records if r.value]
            if values:
                await adapter.handle(values)
                try:
                    await consumer.commit()
                except CommitFailedError as exc:  # a rebalance: redelivery is idempotent
                    log.warning("offset commit failed, records will be redelivered: %s", exc)
    finally:
        await consumer.stop()
        await client.aclose()
        await conn.close()
