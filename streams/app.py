"""The Faust app (`faust -A streams.app worker`): the ingest agent and the per-customer state table.

The agent parses each CDC record, folds it into the customer's state with the pure
`crmsync.domain.decide.apply`, writes the state back and sends the resulting commands and change
event. A record that cannot be parsed is dead-lettered (to `sync.dead_letters`, which Debezium
mirrors onto the dead-letter topic) and the stream goes on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import faust
import psycopg
from faust.types import Message
from prometheus_client import Counter, start_http_server

from crmsync.broker import STATE_TABLE, STREAMS_APP_ID, Topics
from crmsync.dead_letters import DeadLetter, insert_dead_letter
from crmsync.domain.decide import CustomerState, Decision, apply
from crmsync.domain.events import parse_customer_event
from crmsync.errors import ValidationFailed
from crmsync.logs import logging_config
from crmsync.rules import load_rules
from crmsync.settings import load_settings

__all__ = ["app"]

log = logging.getLogger("crmsync.streams")

settings = load_settings()
rules = load_rules(settings.ownership_file, settings.mapping_file, {"crm": settings.crm_vendor})
topics = Topics(settings.topic_prefix)

app = faust.App(
    STREAMS_APP_ID,
    broker=f"kafka://{settings.bootstrap}",
    store="memory://",
    datadir=str(settings.state_dir / "faust"),
    topic_partitions=settings.partitions,
    # Tansu rules (DESIGN.md): one record per produce batch, short sessions, no transactions.
    producer_max_batch_size=1,
    broker_session_timeout=10,
    processing_guarantee="at_least_once",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    logging_config=logging_config(settings.log_level, "streams"),
)

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
customers_cdc = app.topic(topics.customers_cdc, partitions=settings.partitions, **RAW)
commands = {t: app.topic(topics.commands(t), partitions=settings.partitions, **RAW)
            for t in rules.mappings}  # fmt: skip
changes = app.topic(topics.changes, partitions=settings.partitions, **RAW)

# Keys and values use the app's default JSON codec; values are CustomerState dumps.
customers = app.Table(STATE_TABLE, default=None, partitions=settings.partitions)

EVENTS = Counter("crmsync_streams_events", "CDC records consumed", ["op"])
COMMANDS = Counter("crmsync_streams_commands", "Commands emitted", ["target", "action"])
CHANGES = Counter("crmsync_streams_changes", "Golden-record changes published")
DEAD = Counter("crmsync_streams_dead_letters", "Records dead-lettered at ingest")


class DeadLetterSink:
    """Writes ingest failures to `sync.dead_letters`; one connection per worker."""

    def __init__(self) -> None:
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def send(self, letter: DeadLetter) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        await insert_dead_letter(self._conn, letter)
        DEAD.inc()


sink = DeadLetterSink()


@app.task
async def serve_metrics() -> None:
    start_http_server(settings.streams_metrics_port, addr="127.0.0.1")


def decide(message: Message) -> tuple[str, Decision] | None:
    """Parse one CDC record and fold it into its customer's state (None for a tombstone).
    The new state is returned, not stored: see `ingest` for when it may be."""
    change = parse_customer_event(
        message.key,
        message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )
    if change is None:  # tombstone: the delete before it did the work
        return None
    EVENTS.labels(change.op).inc()
    raw_state = customers.get(change.customer_id)
    state = CustomerState.model_validate(raw_state) if raw_state else None
    return change.customer_id, apply(state, change, rules, dt.datetime.now(dt.UTC).isoformat())


async def dead_letter(message: Message, error: str) -> None:
    await sink.send(
        DeadLetter(
            stage="ingest",
            key=(message.key or b"").decode("utf-8", errors="replace"),
            payload=DeadLetter.payload_of(message.value),
            error=error,
            source={"topic": message.topic, "partition": message.partition,
                    "offset": message.offset},
        )
    )  # fmt: skip


@app.agent(customers_cdc)
async def ingest(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        message = event.message
        try:
            decided = decide(message)
        except ValidationFailed as exc:
            log.warning("dead-lettered %s@%s: %s", message.topic, message.offset, exc)
            await dead_letter(message, str(exc))
            continue
        except Exception as exc:  # a bug must not stop the stream: park the record, go on
            log.exception("failed on %s@%s; dead-lettered", message.topic, message.offset)
            await dead_letter(message, f"internal error: {type(exc).__name__}: {exc}")
            continue
        if decided is None:
            continue
        customer_id, decision = decided
        # The state records what was commanded, and its changelog is written at once, while
        # sends inside an agent wait for the offset commit. So commands go out first (force) and
        # are acknowledged before the state may say they were sent: a crash in between replays
        # the event, and the adapter drops the duplicate.
        sent = [
            await commands[command.target].send(
                key=command.customer_id.encode(),
                value=command.model_dump_json().encode(),
                force=True,
            )
            for command in decision.commands
        ]
        await asyncio.gather(*sent)
        customers[customer_id] = decision.state.model_dump(mode="json")
        for command in decision.commands:
            COMMANDS.labels(command.target, command.action).inc()
        if decision.change is not None:
            await changes.send(
                key=decision.change.customer_id.encode(),
                value=decision.change.model_dump_json().encode(),
            )
            CHANGES.inc()
