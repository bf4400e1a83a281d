"""Inspecting and replaying dead letters (`crmsync dlq list|show|replay`).

Replay re-sends what was dead-lettered once the cause is fixed (the data, the mapping, or the
record in the target), idempotently:
- a delivery letter becomes one fresh command per customer and target carrying the
  customer's whole current record (rebuilt from `public.customers`, as the pipeline would
  build it), published on `crmsync.commands.<target>` behind that customer's other commands.
  The adapter skips it if the target already holds exactly that (so replaying twice, or after
  the fix flowed through on its own, sends nothing);
- an ingest letter (a row the pipeline could not read) asks Debezium to re-read the row
  (an incremental snapshot filtered to it); a row still invalid is dead-lettered again.
Either way the letter is marked replayed, unless it failed again while the replay ran (its
count moved on): then it stays open. The same failure coming back after its letter was
replayed opens a new letter; the replayed one stays as it was (`crmsync.dead_letters`).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from confluent_kafka import Producer
from psycopg.rows import dict_row

from crmsync.broker import ONE_PER_BATCH, Topics
from crmsync.domain.decide import Command, fingerprint
from crmsync.domain.events import SourcePosition
from crmsync.resync import Desired, desired_states
from crmsync.rules import load_rules
from crmsync.settings import Settings

__all__ = ["ReplayReport", "list_letters", "parse_since", "replay", "show_letter"]

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str | None) -> dt.datetime | None:
    """`30m`, `2h`, `7d` (ago) or an ISO-8601 time."""
    if text is None:
        return None
    match = _DURATION.match(text.strip())
    if match:
        delta = dt.timedelta(**{_UNITS[match[2]]: int(match[1])})
        return dt.datetime.now(dt.UTC) - delta
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: expected e.g. 30m, 2h, 7d or an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


#: Rows per re-read signal: `sync.debezium_signal.data` is varchar(2048).
SIGNAL_ROWS = 40


def _row_id(key: str) -> str | None:
    """The customer id in an ingest letter's key: Debezium's `{"id": ...}` (or a bare id)."""
    try:
        parsed = orjson.loads(key)
    except orjson.JSONDecodeError:
        parsed = key
    if isinstance(parsed, dict):
        parsed = parsed.get("payload", parsed).get("id")
    try:
        return str(uuid.UUID(str(parsed)))
    except ValueError:
        return None


def _where(
    ids: list[int] | None, target: str | None, since: dt.datetime | None, everything: bool
) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if ids:
        clauses.append("id = any(%s)")
        params.append(ids)
    if target is not None:
        clauses.append("target = %s")
        params.append(target)
    if since is not None:  # seen since: a failure that keeps coming back is recent
        clauses.append("last_failed_at >= %s")
        params.append(since)
    if not everything:
        clauses.append("replayed_at is null")
    return (" where " + " and ".join(clauses)) if clauses else "", params


def list_letters(
    dsn: str,
    *,
    target: str | None = None,
    since: dt.datetime | None = None,
    everything: bool = False,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Letters, last seen first: with how many times each failure was seen (`occurrences`),
    first (`created_at`) and last (`last_failed_at`)."""
    where, params = _where(None, target, since, everything)
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "select id, created_at, last_failed_at, occurrences, stage, target, key, attempts,"
            f" error, replayed_at from sync.dead_letters{where}"
            " order by last_failed_at desc, id desc limit %s",
            [*params, limit],
        ).fetchall()


def show_letter(dsn: str, letter_id: int) -> dict[str, Any] | None:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "select * from sync.dead_letters where id = %s", (letter_id,)
        ).fetchone()


@dataclass
class ReplayReport:
    letters: int = 0
    commands: int = 0
    rows_reread: int = 0
    not_replayed: list[tuple[int, str]] = field(default_factory=list)


async def replay(
    settings: Settings,
    *,
    ids: list[int] | None = None,
    target: str | None = None,
    since: dt.datetime | None = None,
) -> ReplayReport:
    rules = load_rules(settings.ownership_file, settings.mapping_file, {"crm": settings.crm_vendor})
    topics = Topics(settings.topic_prefix)
    report = ReplayReport()
    where, params = _where(ids, target, since, everything=False)
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            f"select id, stage, target, key, occurrences from sync.dead_letters{where} order by id",
            params,
        )
        letters = await cursor.fetchall()
        seen = {letter["id"]: letter["occurrences"] for letter in letters}
        deliver: dict[tuple[str, str], list[int]] = {}
        reread: dict[str, list[int]] = {}
        for letter in letters:
            if letter["key"] is None:
                report.not_replayed.append((letter["id"], "no customer key: nothing to replay"))
            elif letter["stage"] == "deliver" and letter["target"] in rules.mappings:
                deliver.setdefault((letter["target"], letter["key"]), []).append(letter["id"])
            elif letter["stage"] == "ingest" and (row_id := _row_id(letter["key"])) is not None:
                reread.setdefault(row_id, []).append(letter["id"])
            else:
                report.not_replayed.append((letter["id"], f"unknown stage/target {letter}"))
        replayed: list[int] = []
        producer = Producer(
            {"bootstrap.servers": settings.bootstrap, "partitioner": "murmur2_random",
             **ONE_PER_BATCH}
        )  # fmt: skip
        by_target: dict[str, list[str]] = {}
        for target_name, key in deliver:
            by_target.setdefault(target_name, []).append(key)
        for target_name, keys in by_target.items():
            states = await desired_states(conn, rules, target_name, keys)
            for key in keys:
                letter_ids = deliver[(target_name, key)]
                state = states[key]
                if not isinstance(state, Desired):
                    for letter_id in letter_ids:
                        report.not_replayed.append((letter_id, f"the row is invalid: {state}"))
                    continue
                command = Command(
                    idempotency_key=fingerprint(
                        ["replay", target_name, key, letter_ids, state.desired_hash]
                    ),
                    target=target_name,
                    customer_id=key,
                    action=state.action,
                    id_property=rules.mappings[target_name].id_property,
                    properties=state.properties,
                    full=True,
                    desired_hash=state.desired_hash,
                    # Provenance: the replay, at the first dead letter's id.
                    source=SourcePosition(
                        topic="crmsync.dlq.replay", partition=0, offset=min(letter_ids), op="r"
                    ),
                )
                producer.produce(
                    topics.commands(target_name), key=key.encode(),
                    value=command.model_dump_json().encode(),
                )  # fmt: skip
                report.commands += 1
                replayed.extend(letter_ids)
        if producer.flush(30) > 0:
            raise RuntimeError("the broker did not acknowledge the replayed commands")
        row_ids = sorted(reread)
        for start in range(0, len(row_ids), SIGNAL_ROWS):
            chunk = row_ids[start : start + SIGNAL_ROWS]
            quoted = ", ".join(f"'{row_id}'" for row_id in chunk)  # canonical UUIDs: no quoting
            data = {
                "data-collections": ["public.customers"],
                "type": "incremental",
                "additional-conditions": [
                    {"data-collection": "public.customers", "filter": f"id in ({quoted})"}
                ],
            }
            await conn.execute(
                "insert into sync.debezium_signal (id, type, data) values (%s, %s, %s)",
                (f"dlq-replay-{uuid.uuid4()}", "execute-snapshot", orjson.dumps(data).decode()),
            )
            replayed.extend(i for row_id in chunk for i in reread[row_id])
        report.rows_reread = len(row_ids)
        await _mark_replayed(conn, {letter_id: seen[letter_id] for letter_id in replayed}, report)
    return report


#: A letter seen again since the replay read it (the replayed command or re-read row failed
#: the same way, or a retry under way did) is left open: marking it would hide that failure.
_MARK_REPLAYED_SQL = """
update sync.dead_letters letter set replayed_at = now()
  from unnest(%s::bigint[], %s::integer[]) as taken(id, occurrences)
 where letter.id = taken.id and letter.occurrences = taken.occurrences
   and letter.replayed_at is null
returning letter.id"""

FAILED_AGAIN = "failed again the same way while replaying: still open"


async def _mark_replayed(
    conn: psycopg.AsyncConnection[Any], seen: dict[int, int], report: ReplayReport
) -> None:
    """Mark the letters replayed (`seen`: letter id -> occurrences when the replay read it)."""
    cursor = await conn.execute(_MARK_REPLAYED_SQL, (list(seen), list(seen.values())))
    marked = {row[0] for row in await cursor.fetchall()}
    report.not_replayed += [
        (letter_id, FAILED_AGAIN) for letter_id in seen if letter_id not in marked
    ]
    report.letters = len(marked)
