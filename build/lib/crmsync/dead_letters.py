"""Dead letters: what could not be processed or delivered, with the reason, kept in
`sync.dead_letters`. Debezium captures that table, so the dead-letter topic
(`crmsync.sync.dead_letters`) mirrors it without a second write that could disagree."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict

__all__ = ["DeadLetter", "insert_dead_letter"]


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str  # ingest | deliver
    target: str | None = None
    key: str | None = None
    payload: Any = None
    error: str
    attempts: int = 1
    source: dict[str, Any] | None = None

    @staticmethod
    def payload_of(raw: bytes | None) -> Any:
        """A payload as JSON when it parses, else as text, so bad input is kept verbatim."""
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {"raw": raw.decode("utf-8", errors="replace")}


async def insert_dead_letter(conn: AsyncConnection[Any], letter: DeadLetter) -> int:
    cursor = await conn.execute(
        """insert into sync.dead_letters (stage, target, key, payload, error, attempts, source)
           values (%s, %s, %s, %s, %s, %s, %s) returning id""",
        (
            letter.stage,
            letter.target,
            letter.key,
            Jsonb(letter.payload),
            letter.error,
            letter.attempts,
            Jsonb(letter.source),
        ),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
