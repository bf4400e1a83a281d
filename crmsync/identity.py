"""Identity resolution's database edge: the index of who every customer is, links, merges.

`sync.identity_index` holds each live customer's `Person` and blocking keys, and
`sync.identity_keys` (kept from it by a trigger) finds the customers sharing a key with a
record. The matcher itself is pure (`crmsync.domain.identity`); here are the reads it needs
and the writes its verdicts make: an identity link, a review item, a new customer, or a merge
(`sync.merge_customers`).

Survivor rule for a merge: the customer created first survives (then the lower id), so the
record apps and targets have known longest keeps its id (`sync.merge_customers`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from crmsync.domain.customer import SYNCED_FIELDS, GoldenRecord
from crmsync.domain.events import SourcePosition
from crmsync.domain.identity import (
    Candidate,
    Match,
    Person,
    Thresholds,
    blocking_keys,
    match,
    person_of,
)
from crmsync.domain.inbound import Relinked
from crmsync.rules import SyncRules

__all__ = [
    "CANDIDATE_LIMIT",
    "MERGE_SQL",
    "Merged",
    "Resolved",
    "candidates",
    "find_duplicate",
    "index_customers",
    "merge",
    "merge_fill",
    "new_customer_sql",
    "resolve_record",
    "review_duplicate",
]

#: The most customers one record is scored against: blocks stay small, and a key shared by
#: more (a switchboard phone, a generic address) says little anyway.
CANDIDATE_LIMIT = 50

_PERSON_COLUMNS = (
    "email, phone, first_name, last_name, company, street, postal_code, city, birth_date"
)
_INDEX_SQL = f"""
    insert into sync.identity_index (customer_id, {_PERSON_COLUMNS}, keys, updated_at)
    values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
    on conflict (customer_id) do update set
        email = excluded.email, phone = excluded.phone, first_name = excluded.first_name,
        last_name = excluded.last_name, company = excluded.company, street = excluded.street,
        postal_code = excluded.postal_code, city = excluded.city,
        birth_date = excluded.birth_date, keys = excluded.keys, updated_at = now()"""
#: Each key's block (at most CANDIDATE_LIMIT of it), ranked by how many keys a customer
#: shares with the record: a big block (a common surname at one postcode) cannot crowd out
#: the customer with the same email.
_CANDIDATES_SQL = f"""
    select i.customer_id::text, {_PERSON_COLUMNS}
    from (select hit.customer_id, count(*) as shared
          from unnest(%s::text[]) as q(key)
          cross join lateral (
              select customer_id from sync.identity_keys
              where key = q.key and customer_id <> all(%s::uuid[]) limit {CANDIDATE_LIMIT}
          ) hit
          group by hit.customer_id order by shared desc limit {CANDIDATE_LIMIT}) top
    join sync.identity_index i on i.customer_id = top.customer_id
    order by top.shared desc"""
_LINK_SQL = """
    insert into sync.identity_links
        (system, external_id, customer_id, method, confidence, matched)
    values (%s, %s, %s, %s, %s, %s) on conflict do nothing"""
_KEPT_APART_SQL = """
    select case when customer_a = %(id)s then customer_b else customer_a end::text
    from sync.kept_apart where customer_a = %(id)s or customer_b = %(id)s"""
_REVIEW_SQL = """
    insert into sync.review_queue (kind, customer_id, system, proposed, reason, key)
    values (%s, %s, %s, %s, %s, %s) on conflict (key) do nothing"""


async def index_customers(
    conn: AsyncConnection[Any], records: list[tuple[str, GoldenRecord | None]]
) -> None:
    """Index each customer as it now is (None: deleted or merged, so no longer matched)."""
    gone = [cid for cid, record in records if record is None]
    rows = []
    for customer_id, record in records:
        if record is not None:
            person = person_of(record)
            rows.append((customer_id, *person.row(), blocking_keys(person)))
    async with conn.transaction(), conn.cursor() as cursor:
        if rows:
            await cursor.executemany(_INDEX_SQL, rows)
        if gone:
            await cursor.execute(
                "delete from sync.identity_index where customer_id = any(%s::uuid[])", (gone,)
            )


async def candidates(
    conn: AsyncConnection[Any], person: Person, exclude: list[str] | None = None
) -> list[Candidate]:
    """The customers that share a blocking key with `person` (at most CANDIDATE_LIMIT)."""
    keys = blocking_keys(person)
    if not keys:
        return []
    cursor = await conn.execute(_CANDIDATES_SQL, (keys, exclude or []))
    return [Candidate(row[0], Person(*row[1:])) for row in await cursor.fetchall()]


@dataclass(frozen=True)
class Resolved:
    """What became of an external record: linked to `customer_id` (by `method`), parked for a
    person (`review`), or made a new customer (`new`, whose insert carries its values)."""

    outcome: str  # "link" | "review" | "new"
    customer_id: str | None
    method: str | None = None
    confidence: float = 0.0


def _proposed(match_: Match, record: dict[str, Any], external_id: str) -> Jsonb:
    return Jsonb({
        "external_id": external_id,
        "record": record,
        "candidates": [{"customer_id": c, "confidence": s} for c, s in match_.candidates],
    })  # fmt: skip


async def resolve_record(
    conn: AsyncConnection[Any],
    system: str,
    external_id: str,
    values: dict[str, Any],
    thresholds: Thresholds,
) -> Resolved:
    """Match a record made in `system` (its values decoded into golden fields) and act on
    the verdict, in one transaction."""
    person = person_of(values)
    async with conn.transaction():
        found = await candidates(conn, person)
        verdict = match(person, found, thresholds)
        if verdict.outcome == "link":
            assert verdict.customer_id is not None
            cursor = await conn.execute(
                "select external_id from sync.identity_links"
                " where system = %s and customer_id = %s and external_id <> %s",
                (system, verdict.customer_id, external_id),
            )
            held = await cursor.fetchone()
            if held is None:
                await conn.execute(
                    _LINK_SQL,
                    (system, external_id, verdict.customer_id, verdict.method,
                     verdict.confidence, Jsonb(values)),
                )  # fmt: skip
                return Resolved("link", verdict.customer_id, verdict.method, verdict.confidence)
            reason = (
                f"{system} record {external_id} matches customer {verdict.customer_id}"
                f" ({verdict.method}, {verdict.confidence:.2f}), whose {system} record is"
                f" {held[0]}: a duplicate in {system}"
            )
        elif verdict.outcome == "review":
            reason = (
                f"{system} record {external_id} may be an existing customer"
                f" (best {verdict.confidence:.2f}): link it or make it a new customer"
            )
        elif not (person.email or person.phone or person.last_name):
            reason = f"{system} record {external_id} has no email, phone or name to match by"
        else:
            customer_id = str(uuid.uuid4())
            await conn.execute(*new_customer_sql(customer_id, values))
            await conn.execute(
                _LINK_SQL, (system, external_id, customer_id, "new", 1.0, Jsonb(values))
            )
            return Resolved("new", customer_id, "new", 1.0)
        await conn.execute(
            _REVIEW_SQL,
            ("identity", None, system, _proposed(verdict, values, external_id), reason,
             f"identity:{system}:{external_id}"),
        )  # fmt: skip
        return Resolved("review", None)


def new_customer_sql(customer_id: str, values: dict[str, Any]) -> tuple[sql.Composed, tuple]:
    """The insert of a new canonical customer with these (golden-record) values."""
    columns = [f for f, v in values.items() if v is not None]
    insert = sql.SQL("insert into public.customers ({}) values ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, ["id", *columns])),
        sql.SQL(", ").join(sql.Placeholder() * (len(columns) + 1)),
    )
    return insert, (customer_id, *(values[c] for c in columns))


async def find_duplicate(
    conn: AsyncConnection[Any], record: GoldenRecord, thresholds: Thresholds
) -> Match:
    """The verdict on a canonical customer against every other live one, but those a
    person said are someone else (`sync.kept_apart`)."""
    person = person_of(record)
    cursor = await conn.execute(_KEPT_APART_SQL, {"id": record.id})
    apart = [row[0] for row in await cursor.fetchall()]
    found = await candidates(conn, person, exclude=[record.id, *apart])
    return match(person, found, thresholds)


#: The survivor rule and everything a merge does live in `sync.merge_customers` (0007).
MERGE_SQL = """
    select merge_id, survivor_id::text, loser_id::text, moved_systems
    from sync.merge_customers(%s::uuid, %s::uuid, %s, %s::real, %s, %s::text[])"""


def merge_fill(rules: SyncRules) -> list[str]:
    """What a merge may fill in the survivor from the loser: the fields apps may write."""
    return sorted(f for f in SYNCED_FIELDS if rules.ownership.may_change("canonical", f))


@dataclass(frozen=True)
class Merged:
    merge_id: int
    survivor: str
    loser: str
    moved: list[str]  # systems where the loser's record is the survivor's now

    def relinked(self, systems: list[str]) -> Relinked:
        """The survivor goes whole to every system: the records the loser had there are its
        own now (`moved`), and a vendor that matches by email (Zendesk) may have written the
        duplicate over the survivor's record before the merge."""
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        source = SourcePosition(system="identity", topic="sync.merges", partition=0,
                                offset=self.merge_id, op="u", tx_id=now, ts_ms=now)  # fmt: skip
        reason = f"merge {self.merge_id}, moved {self.moved}"
        return Relinked(customer_id=self.survivor, systems=sorted(systems), reason=reason,
                        source=source)  # fmt: skip


async def merge(
    conn: AsyncConnection[Any],
    pair: tuple[str, str],
    method: str,
    confidence: float,
    by: str,
    fill: list[str],
) -> Merged | None:
    """Merge two customers (None when one is gone or merged already)."""
    cursor = await conn.execute(MERGE_SQL, (*pair, method, confidence, by, fill))
    row = await cursor.fetchone()
    return None if row is None else Merged(row[0], row[1], row[2], list(row[3]))


async def review_duplicate(
    conn: AsyncConnection[Any], record: GoldenRecord, verdict: Match
) -> None:
    """Park a doubtful canonical duplicate for a person (once per pair)."""
    other = verdict.candidates[0][0]
    pair = sorted((record.id, other))
    await conn.execute(
        _REVIEW_SQL,
        ("duplicate", record.id, "canonical",
         Jsonb({"customers": pair, "confidence": verdict.confidence,
                "candidates": [{"customer_id": c, "confidence": s}
                               for c, s in verdict.candidates]}),
         f"customers {pair[0]} and {pair[1]} may be one person"
         f" (confidence {verdict.confidence:.2f}): merge them or keep them apart",
         f"duplicate:{pair[0]}:{pair[1]}"),
    )  # fmt: skip
