"""Dead letters: what could not be processed or delivered, with the reason, kept in
`sync.dead_letters`. Debezium captures that table, so the dead-letter topic
(`crmsync.sync.dead_letters`) mirrors it without a second write that could disagree.

A failure seen again (the same stage, target, key and error: a retry, a redelivery, a
re-snapshot) is counted on its open letter rather than written as another one, so callers must
state the same failure in the same words: attempt counts, waits and request ids belong
elsewhere (`attempts`, the logs), not in `error`."""

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


#: The open letter of the same failure (migration 0009's `dead_letters_open_failure`) takes
#: the occurrence; it keeps the payload and source it was first seen with.
_UPSERT_SQL = """
insert into sync.dead_letters as letter (stage, target, key, payload, error, attempts, source)
values (%s, %s, %s, %s, %s, %s, %s)
on conflict ((sync.dead_letter_identity(stage, target, key, payload, error)))
    where replayed_at is null
do update set occurrences = letter.occurrences + 1,
              attempts = letter.attempts + excluded.attempts,
              last_failed_at = clock_timestamp()
returning id"""


async def insert_dead_letter(conn: AsyncConnection[Any], letter: DeadLetter) -> int:
    """Record `letter`: a new open letter, or one more occurrence of the same failure's open
    letter. Returns the letter's id."""
    cursor = await conn.execute(
        _UPSERT_SQL,
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
