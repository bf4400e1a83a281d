"""What the pipeline records in the database besides dead letters: `sync.audit_log` (every
applied change, every refused one) and `sync.review_queue` (conflicts for a person).

Rows are keyed by source event and field, so an event processed twice (at-least-once
delivery) is recorded once.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from crmsync.domain.decide import Attempt, GoldenChange, fingerprint

__all__ = ["audit_rows", "record_applied", "record_attempts"]

_AUDIT_SQL = """
    insert into sync.audit_log
        (customer_id, system, field, before, after, cause, correlation_id, outcome, reason, key)
    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    on conflict (key) do nothing"""
_REVIEW_SQL = """
    insert into sync.review_queue (kind, customer_id, system, proposed, reason, key)
    values ('field_conflict', %s, %s, %s, %s, %s)
    on conflict (key) do nothing"""


def audit_rows(change: GoldenChange) -> list[tuple[Any, ...]]:
    """One audit row per field an applied change touched. A snapshot read is the initial load
    of a customer, not a change: it is not audited."""
    if change.provenance.snapshot and change.op == "created":
        return []
    cause = Jsonb(change.provenance.model_dump(exclude_none=True))
    reason = None if change.op == "updated" else change.op
    rows = []
    for field, values in sorted(change.changed.items()):
        before, after = Jsonb(values["before"]), Jsonb(values["after"])
        key = fingerprint([change.event_id, field])
        rows.append(
            (change.customer_id, change.provenance.system, field, before, after, cause,
             change.event_id, "applied", reason, key)
        )  # fmt: skip
    return rows


async def record_applied(conn: AsyncConnection[Any], changes: list[GoldenChange]) -> int:
    rows = [row for change in changes for row in audit_rows(change)]
    if rows:
        async with conn.transaction(), conn.cursor() as cursor:
            await cursor.executemany(_AUDIT_SQL, rows)
    return len(rows)


async def record_attempts(conn: AsyncConnection[Any], attempts: list[Attempt]) -> None:
    """Refused changes into the audit log; conflicts also into the review queue."""
    async with conn.transaction(), conn.cursor() as cursor:
        for a in attempts:
            cause = Jsonb(a.cause.model_dump(exclude_none=True))
            await cursor.execute(
                _AUDIT_SQL,
                (a.customer_id, a.system, a.field, Jsonb(a.current), Jsonb(a.proposed), cause,
                 a.correlation_id, a.outcome, a.reason, a.key),
            )  # fmt: skip
            if a.outcome == "review":
                holder, since = a.current_source
                proposed = {
                    "field": a.field,
                    "current": {"system": holder, "value": a.current, "at_ms": since},
                    "incoming": {"system": a.system, "value": a.proposed, "at_ms": a.cause.ts_ms},
                    "correlation_id": a.correlation_id,
                }
                await cursor.execute(
                    _REVIEW_SQL, (a.customer_id, a.system, Jsonb(proposed), a.reason, a.key)
                )
