"""Identity resolution's database edge: the index of who every customer is, links, merges.

`sync.identity_index` holds each live customer's `Person` and blocking keys, and
`sync.identity_keys` (kept from it by a trigger) finds the customers sharing a key with a
record. The matcher itself is pure (`crmsync.domain.identity`); here are the reads it needs
and the writes its verdicts make: an identity link, a review item, a new customer, or a merge
(`sync.merge_customers`).

Email collisions are decided here too, before any target is written: `claim_emails` gives
each email to one customer's records (`sync.email_holders`), and a customer given an email
another holds waits (`sync.email_waiting`) for `decide_collision`: merged when the two are one
person, else reviewed once per pair. When a person decides, or the holder's records in the
targets have let the email go and it is handed over (`settle_emails`), the waiting customer's
row is read again (`email_recheck`).

Survivor rule for a merge: the customer created first survives (then the lower id), so the
record apps and targets have known longest keeps its id (`sync.merge_customers`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from crmsync.domain.collisions import EmailClaim
from crmsync.domain.customer import SYNCED_FIELDS, GoldenRecord, normalise_customer
from crmsync.domain.events import SourcePosition
from crmsync.domain.identity import (
    Candidate,
    Match,
    Person,
    Thresholds,
    blocking_keys,
    email_collision,
    match,
    person_of,
)
from crmsync.domain.inbound import Relinked
from crmsync.domain.limits import IngestPolicy
from crmsync.errors import ValidationFailed
from crmsync.rules import SyncRules

__all__ = [
    "CANDIDATE_LIMIT",
    "EMAIL_RECHECK",
    "MERGE_SQL",
    "Claimed",
    "Collision",
    "Merged",
    "Resolved",
    "candidates",
    "claim_emails",
    "current_records",
    "decide_collision",
    "email_recheck",
    "find_duplicate",
    "index_customers",
    "merge",
    "merge_fill",
    "new_customer_sql",
    "resolve_record",
    "review_duplicate",
    "settle_emails",
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


#: The topic named by an email recheck (a `Relinked` for no system): the customer's row is to
#: be read again, its email claimed again (crmsync.domain.collisions.reread).
EMAIL_RECHECK = "sync.email_holders"
_CLAIM_SQL = """
    select ord, holder::text, releasing
    from sync.claim_emails(%s::uuid[], %s::text[]) order by ord"""
_ROWS_SQL = """
    select id::text, to_jsonb(c) from public.customers c
    where id = any(%s::uuid[]) and deleted_at is null and merged_into is null"""
#: A pair a person kept apart stays apart from the customer that absorbed either by a merge.
_APART_SQL = """
    select 1 from sync.kept_apart k
    join (select %(holder)s::uuid as id
          union all select id from public.customers where merged_into = %(holder)s) h on true
    where k.customer_a = least(%(id)s::uuid, h.id) and k.customer_b = greatest(%(id)s::uuid, h.id)
    limit 1"""
_COLLISION_REVIEW_SQL = """
    insert into sync.review_queue (kind, customer_id, system, proposed, reason, key)
    values ('duplicate', %s, 'canonical', %s, %s, %s)
    on conflict (key) do update
        set proposed = sync.review_queue.proposed || excluded.proposed, reason = excluded.reason
        where sync.review_queue.resolved_at is null and not sync.review_queue.proposed ? 'email'"""


def email_recheck(customer_id: str, reason: str) -> Relinked:
    """The message (on `crmsync.inbound`) that has the pipeline read a waiting customer's row
    again: the email it waits for is free, or a person decided."""
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    source = SourcePosition(system="identity", topic=EMAIL_RECHECK, partition=0, offset=0,
                            op="u", tx_id=now, ts_ms=now)  # fmt: skip
    return Relinked(customer_id=customer_id, systems=[], reason=reason, source=source)


@dataclass(frozen=True)
class Claimed:
    """Who holds a claimed email after the claim: its claimant (it got the email), another
    customer, or nobody (the claim gave one up); and whether that holder is giving it up (the
    claimant waits for it to be handed over, `settle_emails`, with no decision to make)."""

    holder: str | None
    releasing: bool = False


async def claim_emails(conn: AsyncConnection[Any], claims: list[EmailClaim]) -> list[Claimed]:
    """Claim, in order, the email each change gives its customer (`sync.claim_emails`): one
    round trip per batch of changes."""
    if not claims:
        return []
    params = ([c.customer_id for c in claims], [c.email for c in claims])
    cursor = await conn.execute(_CLAIM_SQL, params)
    return [Claimed(holder, releasing) for _, holder, releasing in await cursor.fetchall()]


async def settle_emails(conn: AsyncConnection[Any]) -> list[str]:
    """Hand each email given up to a waiting customer once the targets have the records of
    the customer giving it up without it (`sync.settle_emails`); returns the customers whose
    rows are to be read again."""
    cursor = await conn.execute("select customer_id::text from sync.settle_emails() customer_id")
    return [row[0] for row in await cursor.fetchall()]


async def current_records(
    conn: AsyncConnection[Any], ids: list[str], policy: IngestPolicy | None = None
) -> dict[str, GoldenRecord]:
    """The live customers' rows as golden records, read as ingest reads them (`policy`); a
    deleted, merged or refused row is left out: its own change event says what became of it."""
    cursor = await conn.execute(_ROWS_SQL, (ids,))
    records = {}
    for customer_id, row in await cursor.fetchall():
        try:
            records[customer_id] = normalise_customer(row, policy)
        except ValidationFailed:
            continue
    return records


@dataclass(frozen=True)
class Collision:
    """The decision on a customer given the email `holder` holds: `merged` (one person; the
    survivor is written whole), `review` (a person decides), `apart` (a person said they are
    two: the customer is synced without the email) or `wait` (the holder is gone or merged
    already, and giving the email up)."""

    outcome: Literal["merged", "review", "apart", "wait"]
    holder: str
    merged: Merged | None = None


async def decide_collision(
    conn: AsyncConnection[Any],
    record: GoldenRecord,
    holder: str,
    thresholds: Thresholds,
    fill: list[str],
) -> Collision:
    """`record`'s customer was given the email `holder` holds in the targets: merge the two
    when the matcher says they are one person (`email_collision`), else ask a person, once
    per pair (the item a duplicate check made for the pair, if any, learns of the email)."""
    pair = sorted((record.id, holder))
    async with conn.transaction():
        cursor = await conn.execute(_APART_SQL, {"id": record.id, "holder": holder})
        if await cursor.fetchone() is not None:
            return Collision("apart", holder)
        cursor = await conn.execute(_ROWS_SQL, ([holder],))
        row = await cursor.fetchone()
        if row is None:
            return Collision("wait", holder)
        try:
            held_by = person_of(normalise_customer(row[1]))
        except ValidationFailed:
            held_by = None  # nothing to compare with: a person decides
        verdict = Match("review")
        if held_by is not None:
            verdict = email_collision(person_of(record), Candidate(holder, held_by), thresholds)
        if verdict.outcome == "link":
            merged = await merge(conn, (record.id, holder), verdict.method or "email",
                                 verdict.confidence, "crmsync", fill)  # fmt: skip
            return Collision("merged", holder, merged) if merged else Collision("wait", holder)
        email = record.email
        proposed = {
            "customers": pair, "confidence": verdict.confidence,
            "candidates": [{"customer_id": holder, "confidence": verdict.confidence}],
            "email": email, "held_by": holder, "given_to": record.id,
        }  # fmt: skip
        reason = (
            f"customer {record.id} was given {email}, which customer {holder} holds"
            f" (confidence {verdict.confidence:.2f} that they are one person): merge them, or"
            f" keep them apart ({record.id} is then synced without {email})"
        )
        await conn.execute(
            _COLLISION_REVIEW_SQL,
            (record.id, Jsonb(proposed), reason, f"duplicate:{pair[0]}:{pair[1]}"),
        )
        return Collision("review", holder)
