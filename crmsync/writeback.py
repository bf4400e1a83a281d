"""Write golden values back into `public.customers` (the `crmsync.commands.canonical` topic).

Each write-back names the value it replaces: a field is written only while the row still
holds that value (compared normalised, as the pipeline reads it) or already the new one, so a
newer write by an app is never overwritten; that write is judged on its own. The update sets
`sync_origin`, by which the pipeline knows the row change for its own and drops it.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from crmsync.domain.customer import SYNCED_FIELDS, normalise_value
from crmsync.domain.decide import WriteBack
from crmsync.errors import ValidationFailed

__all__ = ["write_back"]

_UNREADABLE = object()


def _normalised(row: dict[str, Any], field: str) -> Any:
    try:
        country = normalise_value("country", row.get("country"))
    except ValidationFailed:
        country = None
    value = row.get(field)
    if hasattr(value, "isoformat"):  # a date column
        value = value.isoformat()
    try:
        return normalise_value(field, value, country)
    except ValidationFailed:
        return _UNREADABLE


async def write_back(conn: AsyncConnection[Any], writebacks: list[WriteBack]) -> tuple[int, int]:
    """Apply write-backs in order, in one transaction. Returns (fields written, fields skipped
    because the row has changed since)."""
    written = skipped = 0
    ids = sorted({w.customer_id for w in writebacks})
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "select * from public.customers where id = any(%s::uuid[]) order by id for update",
            (ids,),
        )
        rows = {str(row["id"]): row for row in await cursor.fetchall()}
        for wb in writebacks:
            row = rows.get(wb.customer_id)
            if row is None:
                continue
            updates: dict[str, Any] = {}
            for field, value in wb.values.items():
                if field not in SYNCED_FIELDS:
                    continue
                current = _normalised(row, field)
                if current == value:
                    continue
                if field in wb.expected and current != wb.expected[field]:
                    skipped += 1
                    continue
                updates[field] = value
            if not updates:
                continue
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(
                    sql.Identifier(field),
                    sql.SQL("%s::date") if field == "birth_date" else sql.SQL("%s"),
                )
                for field in updates
            )
            await cursor.execute(
                sql.SQL(
                    "update public.customers set {}, sync_origin = %s where id = %s::uuid"
                ).format(assignments),
                (*updates.values(), wb.origin, wb.customer_id),
            )
            row.update(updates)
            written += len(updates)
    return written, skipped
