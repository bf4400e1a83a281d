"""`sync.target_writes`: what crmsync wrote to each target's record of a customer, per property
(crmsync.domain.writes). The adapters keep it around every request; the stream router reads it
with each copy of a record that comes back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter

from crmsync.domain.writes import Ledger

__all__ = ["ledger_of", "update_ledgers"]

_LEDGER: TypeAdapter[Ledger] = TypeAdapter(Ledger)

_READ_FOR_UPDATE = """
    select customer_id::text, written from sync.target_writes
    where system = %s and customer_id = any(%s::uuid[]) for update"""
_STORE = """
    insert into sync.target_writes (system, customer_id, written) values (%s, %s, %s)
    on conflict (system, customer_id) do update set written = excluded.written"""
_READ = "select written from sync.target_writes where system = %s and customer_id = %s"


async def update_ledgers(
    conn: psycopg.AsyncConnection[Any],
    system: str,
    changes: dict[str, Callable[[Ledger], Ledger]],
) -> None:
    """Apply each customer's change to its ledger for `system`, in one transaction."""
    if not changes:
        return
    async with conn.transaction():
        cursor = await conn.execute(_READ_FOR_UPDATE, (system, list(changes)))
        current = {
            cid: _LEDGER.validate_python(written) for cid, written in await cursor.fetchall()
        }
        rows = [
            (system, cid, Jsonb(_LEDGER.dump_python(change(current.get(cid, {})), mode="json")))
            for cid, change in changes.items()
        ]
        async with conn.cursor() as many:
            await many.executemany(_STORE, rows)


async def ledger_of(conn: psycopg.AsyncConnection[Any], system: str, customer_id: str) -> Ledger:
    cursor = await conn.execute(_READ, (system, customer_id))
    row = await cursor.fetchone()
    return _LEDGER.validate_python(row[0]) if row else {}
