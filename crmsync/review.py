"""The review queue for people (`crmsync review list|show|resolve`).

Conflicts the rules cannot settle (two systems changed one shared field within the conflict
window) wait in `sync.review_queue` with both values; nothing is overwritten meanwhile. A
resolution is published on `crmsync.inbound` as a `Resolution`: the pipeline makes the chosen
value golden and writes it to every system that maps the field, and the change is audited
like any other, with `review` as its system.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import orjson
import psycopg
from confluent_kafka import Producer
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from crmsync.broker import PRODUCER_CONFIG, Topics
from crmsync.domain.customer import normalise_value
from crmsync.domain.events import SourcePosition
from crmsync.domain.inbound import Resolution
from crmsync.errors import ValidationFailed
from crmsync.settings import Settings

__all__ = ["ReviewError", "list_items", "resolve", "show_item"]

Choice = Literal["current", "incoming"]


class ReviewError(Exception):
    """A resolution that cannot be made (unknown or resolved item, invalid value)."""


def list_items(dsn: str, *, everything: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    where = "" if everything else " where resolved_at is null"
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "select id, created_at, kind, customer_id::text, system, proposed, reason,"
            f" resolved_at, decision, resolved_by from sync.review_queue{where}"
            " order by id limit %s",
            (limit,),
        ).fetchall()


def show_item(dsn: str, item_id: int) -> dict[str, Any] | None:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "select *, customer_id::text as customer_id from sync.review_queue where id = %s",
            (item_id,),
        ).fetchone()


def resolve(
    settings: Settings,
    item_id: int,
    *,
    choice: Choice | None = None,
    value: str | None = None,
    by: str,
) -> Resolution:
    """Settle one conflict with one side's value (`choice`) or a value of one's own."""
    if (choice is None) == (value is None):
        raise ReviewError("give either a side to keep or a value, not both")
    with psycopg.connect(settings.dsn, row_factory=dict_row) as conn, conn.transaction():
        item = conn.execute(
            "select * from sync.review_queue where id = %s for update", (item_id,)
        ).fetchone()
        if item is None:
            raise ReviewError(f"no review item {item_id}")
        if item["resolved_at"] is not None:
            raise ReviewError(f"review item {item_id} was resolved at {item['resolved_at']}")
        proposed = item["proposed"]
        field = proposed["field"]
        customer_id = str(item["customer_id"])
        if choice is not None:
            chosen = proposed[choice]["value"]
        else:
            row = conn.execute(
                "select country from public.customers where id = %s", (customer_id,)
            ).fetchone()
            try:
                country = normalise_value("country", row["country"] if row else None)
                chosen = normalise_value(field, value, country)
            except ValidationFailed as exc:
                raise ReviewError(str(exc)) from None
        now = dt.datetime.now(dt.UTC)
        resolution = Resolution(
            customer_id=customer_id,
            field=field,
            value=chosen,
            review_id=item_id,
            resolved_by=by,
            source=SourcePosition(
                system="review",
                topic="crmsync.review",
                partition=0,
                offset=item_id,
                op="u",
                # Another resolution of the same item (after a failed one) is another write.
                tx_id=int(now.timestamp() * 1000),
                ts_ms=int(now.timestamp() * 1000),
            ),
        )
        _publish(settings, resolution)
        conn.execute(
            "update sync.review_queue set resolved_at = %s, decision = %s, resolved_by = %s"
            " where id = %s",
            (now, Jsonb({"choice": choice or "value", "value": chosen}), by, item_id),
        )
    return resolution


def _publish(settings: Settings, resolution: Resolution) -> None:
    """Onto `crmsync.inbound`, keyed and partitioned as the customers topic (murmur2)."""
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap, "partitioner": "murmur2_random",
         **PRODUCER_CONFIG}
    )  # fmt: skip
    producer.produce(
        Topics(settings.topic_prefix).inbound,
        key=orjson.dumps({"id": resolution.customer_id}),
        value=resolution.model_dump_json().encode(),
    )
    if producer.flush(30) > 0:
        raise ReviewError("the broker did not acknowledge the resolution; nothing was changed")
