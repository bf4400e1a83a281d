"""The review queue for people (`crmsync review list|show|resolve`).

Conflicts the rules cannot settle (two systems changed one shared field within the conflict
window) wait in `sync.review_queue` with both values; nothing is overwritten meanwhile. A
resolution is published on `crmsync.inbound` as a `Resolution`: the pipeline makes the chosen
value golden and writes it to every system that maps the field, and the change is audited
like any other, with `review` as its system.

Identity decisions wait here too: a record made in a target that may be an existing customer
(`identity`: link it to one, or make it a new customer) and two canonical customers that may
be one person (`duplicate`: merge them, or keep them apart). Merges and links stay
reversible (`unmerge`, `unlink`), and every such decision is audited with who made it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal

import orjson
import psycopg
from confluent_kafka import Producer
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from crmsync.broker import ONE_PER_BATCH, Topics
from crmsync.domain.customer import normalise_value
from crmsync.domain.events import SourcePosition
from crmsync.domain.inbound import (
    STAGING_TABLES,
    InboundChange,
    Relinked,
    Resolution,
    mapped_properties,
)
from crmsync.errors import ValidationFailed
from crmsync.identity import MERGE_SQL, Merged, email_recheck, merge_fill, new_customer_sql
from crmsync.rules import SyncRules, load_rules
from crmsync.settings import Settings

__all__ = [
    "ReviewError",
    "list_items",
    "list_merges",
    "resolve",
    "resolve_duplicate",
    "resolve_identity",
    "show_item",
    "unlink",
    "unmerge",
]

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
        item = _open_item(conn, item_id, "field_conflict")
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


def _publish(settings: Settings, *messages: Resolution | InboundChange | Relinked) -> None:
    """Onto `crmsync.inbound`, keyed and partitioned as the customers topic (murmur2)."""
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap, "partitioner": "murmur2_random",
         **ONE_PER_BATCH}
    )  # fmt: skip
    for message in messages:
        producer.produce(
            Topics(settings.topic_prefix).inbound,
            key=orjson.dumps({"id": message.customer_id}),
            value=message.model_dump_json().encode(),
        )
    if producer.flush(30) > 0:
        raise ReviewError("the broker did not acknowledge the decision; nothing was changed")


#: Links a person may undo: the matcher's and a person's. (A record crmsync created, or one
#: a merge moved, is undone by `unmerge`; a record that made a customer is that customer.)
UNLINKABLE = frozenset({"email", "phone", "fuzzy", "review"})
_NOT_UNLINKABLE = {
    "created": "crmsync created it for this customer",
    "merge": "a merge moved it here: undo the merge (`review unmerge`)",
    "new": "the customer was made from it",
}


def _source(system: str, offset: int) -> SourcePosition:
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    return SourcePosition(system=system, topic="crmsync.review", partition=0, offset=offset,
                          op="u", tx_id=now, ts_ms=now)  # fmt: skip


def _rules(settings: Settings) -> SyncRules:
    return load_rules(settings.ownership_file, settings.mapping_file, {"crm": settings.crm_vendor})


def _open_item(conn: psycopg.Connection[Any], item_id: int, kind: str) -> dict[str, Any]:
    item = conn.execute(
        "select * from sync.review_queue where id = %s for update", (item_id,)
    ).fetchone()
    if item is None:
        raise ReviewError(f"no review item {item_id}")
    if item["resolved_at"] is not None:
        raise ReviewError(f"review item {item_id} was resolved at {item['resolved_at']}")
    if item["kind"] != kind:
        raise ReviewError(f"review item {item_id} is of kind {item['kind']}, not {kind}")
    return item


def _audit(
    conn: psycopg.Connection[Any], customer_id: str, outcome: str, reason: str, key: str,
    cause: dict[str, Any], after: Any = None, before: Any = None,
) -> None:  # fmt: skip
    conn.execute(
        "insert into sync.audit_log (customer_id, system, field, before, after, cause,"
        " correlation_id, outcome, reason, key) values (%s, 'identity', '*', %s, %s, %s, %s,"
        " %s, %s, %s) on conflict (key) do nothing",
        (customer_id, Jsonb(before), Jsonb(after), Jsonb(cause), key, outcome, reason, key),
    )


def _staged_change(
    settings: Settings, conn: psycopg.Connection[Any], system: str, external_id: str,
    customer_id: str, method: str, offset: int,
) -> InboundChange:  # fmt: skip
    """The record as staged, for the pipeline to link (it fills the customer's gaps and is
    written whole with the golden record)."""
    row = conn.execute(
        f"select payload from staging.{STAGING_TABLES[system]} where external_id = %s",
        (external_id,),
    ).fetchone()
    if row is None:
        raise ReviewError(f"{system} record {external_id} is not in staging")
    rules = _rules(settings)
    properties = mapped_properties(settings.vendor(system), rules.mappings[system], row["payload"])
    return InboundChange(
        customer_id=customer_id, system=system, properties=properties, previous=None,
        deleted=False, source=_source(system, offset).model_copy(
            update={"external_id": external_id}), link=method,
    )  # fmt: skip


def _live(conn: psycopg.Connection[Any], customer_id: str) -> None:
    row = conn.execute(
        "select deleted_at from public.customers where id = %s", (customer_id,)
    ).fetchone()
    if row is None or row["deleted_at"] is not None:
        raise ReviewError(f"customer {customer_id} does not exist or is deleted")


def resolve_identity(
    settings: Settings, item_id: int, *, link_to: str | None, new: bool, by: str
) -> str:
    """A record made in a target: link it to customer `link_to`, or make it a new customer.
    Returns the customer it now belongs to."""
    if (link_to is None) == (not new):
        raise ReviewError("give either a customer to link to or --new, not both")
    with psycopg.connect(settings.dsn, row_factory=dict_row) as conn, conn.transaction():
        item = _open_item(conn, item_id, "identity")
        system, external_id = item["system"], item["proposed"]["external_id"]
        message = None
        if link_to is not None:
            _live(conn, link_to)
            held = conn.execute(
                "select external_id from sync.identity_links where system = %s and"
                " customer_id = %s and archived_at is null", (system, link_to),
            ).fetchone()  # fmt: skip
            if held is not None:
                raise ReviewError(
                    f"customer {link_to} already has {system} record {held['external_id']}"
                )
            customer_id = link_to
            message = _staged_change(settings, conn, system, external_id, link_to, "review",
                                     item_id)  # fmt: skip
        else:
            customer_id = str(uuid.uuid4())
            conn.execute(*new_customer_sql(customer_id, item["proposed"]["record"]))
        conn.execute(
            "insert into sync.identity_links (system, external_id, customer_id, method,"
            " confidence, matched) values (%s, %s, %s, %s, 1.0, %s)",
            (system, external_id, customer_id, "review" if link_to else "new",
             Jsonb(item["proposed"]["record"])),
        )  # fmt: skip
        decision = {"link": link_to} if link_to else {"new": customer_id}
        conn.execute(
            "update sync.review_queue set resolved_at = now(), decision = %s, resolved_by = %s"
            " where id = %s", (Jsonb(decision), by, item_id),
        )  # fmt: skip
        _audit(conn, customer_id, "linked" if link_to else "new",
               f"{system} record {external_id} {'linked to' if link_to else 'made'} customer"
               f" {customer_id} by {by}", f"review:{item_id}",
               {"review": item_id, "by": by}, after=[system, external_id])  # fmt: skip
    if message is not None:  # after the commit: the adapter writes the record by its link
        _publish(settings, message)
    return customer_id


def resolve_duplicate(settings: Settings, item_id: int, *, merge: bool, by: str) -> str:
    """Two customers that may be one person: merge them (as the pipeline does, the one created
    first survives), or keep them apart for good.

    When one was given an email the other holds (an email collision), that customer waits:
    merged, the survivor's records carry the email once the other's are archived; kept apart,
    the holder keeps the email in the targets and the other is synced without it (a new
    customer gets records with no email, a known one keeps the email its records had) until
    an app gives it an email of its own or the holder gives this one up."""
    merged = None
    with psycopg.connect(settings.dsn, row_factory=dict_row) as conn, conn.transaction():
        item = _open_item(conn, item_id, "duplicate")
        proposed = item["proposed"]
        pair = tuple(proposed["customers"])
        decision: dict[str, Any] = {}
        if merge:
            fill = merge_fill(_rules(settings))
            row = conn.execute(MERGE_SQL, (*pair, "review", 1.0, by, fill)).fetchone()
            if row is None:
                raise ReviewError("one of them is deleted or merged already")
            merged = Merged(row["merge_id"], row["survivor_id"], row["loser_id"],
                            list(row["moved_systems"]))  # fmt: skip
            outcome = f"merged {merged.loser} into {merged.survivor} (merge {merged.merge_id})"
        else:
            outcome = "kept apart"
            conn.execute(
                "insert into sync.kept_apart (customer_a, customer_b, decided_by, reason)"
                " values (%s, %s, %s, %s) on conflict do nothing",
                (min(pair), max(pair), by, f"review item {item_id}"),
            )
            reason = f"{pair[0]} and {pair[1]} kept apart by {by}"
            if proposed.get("email"):
                decision["email"] = {"address": proposed["email"], "kept_by": proposed["held_by"],
                                     "withheld_from": proposed["given_to"]}  # fmt: skip
                reason += (f": {proposed['email']} stays {proposed['held_by']}'s in the targets,"
                           f" {proposed['given_to']} is synced without it")  # fmt: skip
            cause = {"review": item_id, "by": by}
            _audit(conn, pair[0], "kept apart", reason, f"review:{item_id}", cause, list(pair))
        waiting = [row["customer_id"] for row in conn.execute(
            "select customer_id::text from sync.email_waiting where customer_id = any(%s::uuid[])",
            (list(pair),),
        )]  # fmt: skip
        conn.execute(
            "update sync.review_queue set resolved_at = now(), decision = %s, resolved_by = %s"
            " where id = %s", (Jsonb({"outcome": outcome, **decision}), by, item_id),
        )  # fmt: skip
    # After the commit: the adapters read the links a merge moved, and the pipeline reads a
    # customer waiting for an email again (a merged one's wait ends with the other's archive).
    messages: list[Relinked] = []
    if merged is not None:
        messages.append(merged.relinked(list(_rules(settings).mappings)))
    messages.extend(email_recheck(cid, f"review item {item_id}: {outcome}") for cid in waiting)
    if messages:
        _publish(settings, *messages)
    return outcome


def list_merges(dsn: str, limit: int = 100) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "select id, merged_at, survivor_id::text, loser_id::text, method, confidence,"
            " moved_links, archived, filled, merged_by, undone_at, undone_by"
            " from sync.merges order by id desc limit %s", (limit,),
        ).fetchall()  # fmt: skip


def unmerge(settings: Settings, merge_id: int, *, by: str) -> tuple[str, str]:
    """Undo a merge: (survivor, loser), both customers of their own again everywhere."""
    with psycopg.connect(settings.dsn, row_factory=dict_row) as conn, conn.transaction():
        merge = conn.execute(
            "select survivor_id::text, loser_id::text from sync.merges where id = %s",
            (merge_id,),
        ).fetchone()
        if merge is None:
            raise ReviewError(f"no merge {merge_id}")
        try:
            moved = conn.execute(
                "select sync.unmerge_customers(%s, %s) as s", (merge_id, by)
            ).fetchone()
        except psycopg.errors.RaiseException as exc:
            raise ReviewError(str(exc.diag.message_primary)) from None
        survivor, loser = merge["survivor_id"], merge["loser_id"]
    if moved and moved["s"]:  # after the commit: the survivor needs records of its own there
        _publish(settings, Relinked(customer_id=survivor, systems=moved["s"],
                                    reason=f"merge {merge_id} undone",
                                    source=_source("identity", merge_id)))  # fmt: skip
    return survivor, loser


def unlink(settings: Settings, system: str, external_id: str, *, by: str) -> tuple[str, str]:
    """A record wrongly linked to a customer: it becomes a customer of its own again, with
    the values it had when it was linked (written back over it), the two are never merged
    by the matcher, and the customer it was linked to gets a new record in that system.
    Returns (old customer, new customer)."""
    if system not in STAGING_TABLES:
        raise ReviewError(f"{system!r} is not one of {', '.join(STAGING_TABLES)}")
    with psycopg.connect(settings.dsn, row_factory=dict_row) as conn, conn.transaction():
        link = conn.execute(
            "select customer_id::text, method, matched from sync.identity_links"
            " where system = %s and external_id = %s and archived_at is null for update",
            (system, external_id),
        ).fetchone()
        if link is None:
            raise ReviewError(f"{system} record {external_id} is linked to no customer")
        if link["method"] not in UNLINKABLE or link["matched"] is None:
            raise ReviewError(
                f"{system} record {external_id} was not matched to its customer (link:"
                f" {link['method']}): {_NOT_UNLINKABLE.get(link['method'], 'nothing to undo')}"
            )
        old, new = link["customer_id"], str(uuid.uuid4())
        conn.execute(*new_customer_sql(new, link["matched"]))
        conn.execute(
            "update sync.identity_links set customer_id = %s, method = 'review',"
            " pushed_hash = null where system = %s and external_id = %s",
            (new, system, external_id),
        )
        conn.execute(
            "insert into sync.kept_apart (customer_a, customer_b, decided_by, reason)"
            " values (least(%s::uuid, %s::uuid), greatest(%s::uuid, %s::uuid), %s, %s)"
            " on conflict do nothing",
            (old, new, old, new, by, f"{system} record {external_id} unlinked"),
        )
        _audit(conn, old, "unlinked",
               f"{system} record {external_id} unlinked from {old} by {by}: now customer {new}",
               f"unlink:{system}:{external_id}:{new}", {"unlink": [system, external_id],
               "by": by}, after=new, before=old)  # fmt: skip
    # After the commit: the new customer's insert reaches the targets the usual way, and the
    # old one gets a record of its own there.
    _publish(settings, Relinked(customer_id=old, systems=[system],
                                reason=f"{system} record {external_id} unlinked",
                                source=_source("identity", 0)))  # fmt: skip
    return old, new
