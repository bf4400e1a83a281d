"""A target's whole desired state for some customers, rebuilt from `public.customers`.

Commands normally carry only what changed. When the target holds nothing for a customer
(its create was dead-lettered, or it is being replayed), the adapter and `crmsync dlq replay`
need the full property set instead: the canonical row, normalised and mapped exactly as the
pipeline does it, so the hash matches what the pipeline computes for the same row; a row the
ingest policy refuses (some target cannot take it) is refused here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from crmsync.domain.customer import normalise_customer
from crmsync.domain.decide import ARCHIVED_HASH, fingerprint
from crmsync.errors import ValidationFailed
from crmsync.rules import SyncRules

__all__ = ["Desired", "desired_states"]


@dataclass(frozen=True)
class Desired:
    action: Literal["upsert", "archive"]
    properties: dict[str, Any]
    desired_hash: str


async def desired_states(
    conn: AsyncConnection[Any], rules: SyncRules, target: str, customer_ids: list[str]
) -> dict[str, Desired | ValidationFailed]:
    """Per customer id: its desired state in `target`, or why the row cannot be synced.
    A customer deleted (soft or hard) is to be archived."""
    mapping = rules.mappings[target]
    fields = rules.synced_fields(target)
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "select * from public.customers where id = any(%s::uuid[])", (customer_ids,)
        )
        rows = {str(row["id"]): row for row in await cursor.fetchall()}
    found: dict[str, Desired | ValidationFailed] = {}
    for customer_id in customer_ids:
        row = rows.get(customer_id)
        if row is None or row["deleted_at"] is not None:
            found[customer_id] = Desired(
                "archive", {mapping.id_property: customer_id}, ARCHIVED_HASH
            )
            continue
        try:
            record = normalise_customer(row, rules.ingest)
        except ValidationFailed as exc:
            found[customer_id] = exc
            continue
        properties = mapping.properties(record, fields)
        found[customer_id] = Desired("upsert", properties, fingerprint(properties))
    return found
