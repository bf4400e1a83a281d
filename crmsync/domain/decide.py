"""What a change means: `apply(state, change) -> Decision(new state, commands, golden change)`.

Pure: no Faust, HTTP or database. The state is one customer's golden record and, per target,
a fingerprint of what was last commanded there, so a change that does not alter any mapped
property of a target sends that target nothing, and a replay of a known change sends nothing.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from crmsync.domain.customer import SYNCED_FIELDS, GoldenRecord
from crmsync.domain.events import CustomerChange, SourcePosition

if TYPE_CHECKING:  # crmsync.rules imports the domain: a runtime import would be circular
    from crmsync.rules import SyncRules

__all__ = [
    "ARCHIVED_HASH",
    "LANES",
    "Command",
    "CustomerState",
    "Decision",
    "GoldenChange",
    "Lane",
    "TargetPush",
    "apply",
    "fingerprint",
]


class TargetPush(BaseModel):
    """What we last told one target: a hash of the full property set, or that it was archived."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hash: str
    archived: bool = False


class CustomerState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    golden: GoldenRecord | None = None
    deleted: bool = False
    pushed: dict[str, TargetPush] = {}


#: Delivery priority, highest first: consent and do-not-contact changes, then new customers,
#: then updates, then activity. Per-customer order always comes before priority.
Lane = Literal["consent", "create", "update", "activity"]
LANES: tuple[Lane, ...] = ("consent", "create", "update", "activity")
CONSENT_FIELDS = frozenset({"consent_email", "consent_sms", "do_not_contact"})


class Command(BaseModel):
    """One write for one target, keyed by customer on `crmsync.commands.<target>`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    idempotency_key: str
    target: str
    customer_id: str
    action: Literal["upsert", "archive"]
    id_property: str
    properties: dict[str, Any]  # only what changed, plus the id property (all when `full`)
    full: bool = False  # `properties` is the target's whole desired state
    lane: Lane = "update"
    desired_hash: str  # fingerprint of the target's full desired state after this command
    source: SourcePosition


class GoldenChange(BaseModel):
    """One applied change, as published on `crmsync.customers.changes`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    customer_id: str
    op: Literal["created", "updated", "deleted", "restored"]
    changed: dict[str, dict[str, Any]]
    provenance: SourcePosition
    applied_at: str


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: CustomerState
    commands: list[Command]
    change: GoldenChange | None


def fingerprint(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


ARCHIVED_HASH = fingerprint("archived")


def _changed_fields(old: GoldenRecord | None, new: GoldenRecord | None) -> dict[str, Any]:
    before = old.model_dump() if old else {}
    after = new.model_dump() if new else {}
    return {
        field: {"before": before.get(field), "after": after.get(field)}
        for field in sorted(SYNCED_FIELDS | {"deleted_at"})
        if before.get(field) != after.get(field)
    }


def _op(state: CustomerState | None, change: CustomerChange, deleted: bool) -> str:
    if deleted:
        return "deleted"
    if state is None or state.golden is None:
        return "created"
    return "restored" if state.deleted else "updated"


def _command_key(change: CustomerChange, target: str) -> str:
    s = change.source
    return fingerprint([target, change.customer_id, s.lsn, s.tx_id, s.op, s.topic, s.offset])


def _target_command(
    state: CustomerState | None,
    change: CustomerChange,
    target: str,
    rules: SyncRules,
    deleted: bool,
) -> tuple[TargetPush | None, Command | None]:
    mapping = rules.mappings[target]
    pushed = state.pushed.get(target) if state else None

    def command(
        action: Literal["upsert", "archive"],
        props: dict[str, Any],
        h: str,
        full: bool = False,
        lane: Lane = "update",
    ) -> Command:
        return Command(
            idempotency_key=_command_key(change, target),
            target=target,
            customer_id=change.customer_id,
            action=action,
            id_property=mapping.id_property,
            properties={**props, mapping.id_property: change.customer_id},
            full=full,
            lane=lane,
            desired_hash=h,
            source=change.source,
        )

    if deleted:
        if pushed is not None and pushed.archived:
            return pushed, None
        return TargetPush(hash=ARCHIVED_HASH, archived=True), command("archive", {}, ARCHIVED_HASH)

    assert change.record is not None
    fields = rules.synced_fields(target)
    desired = mapping.properties(change.record, fields)
    desired_hash = fingerprint(desired)
    if pushed is not None and pushed.hash == desired_hash:
        return pushed, None
    previous: dict[str, Any] = {}
    old = state.golden if state else None
    if pushed is not None and not pushed.archived and old is not None:
        old_props = mapping.properties(old, fields)
        if fingerprint(old_props) == pushed.hash:  # we know exactly what the target holds
            previous = old_props
    delta = {k: v for k, v in desired.items() if previous.get(k, object()) != v}
    consent = {mapping.fields[f].property for f in CONSENT_FIELDS & set(mapping.fields)}
    lane: Lane = "create" if pushed is None or pushed.archived else "update"
    if previous and consent & set(delta):
        lane = "consent"
    full = not previous
    return TargetPush(hash=desired_hash), command("upsert", delta, desired_hash, full, lane)


def apply(
    state: CustomerState | None, change: CustomerChange, rules: SyncRules, now: str
) -> Decision:
    """Fold one canonical change into a customer's state; say what to send where."""
    deleted = change.record is None or change.record.deleted_at is not None
    pushed = dict(state.pushed) if state else {}
    commands = []
    for target in rules.mappings:
        push, command = _target_command(state, change, target, rules, deleted)
        if push is not None:
            pushed[target] = push
        if command is not None:
            commands.append(command)

    golden = change.record if change.record is not None else (state.golden if state else None)
    new_state = CustomerState(golden=golden, deleted=deleted, pushed=pushed)
    changed = _changed_fields(state.golden if state else None, change.record)
    if change.record is None:
        changed = {}
    was_deleted = state.deleted if state else False
    golden_change = None
    if changed or deleted != was_deleted or (deleted and state is None):
        golden_change = GoldenChange(
            event_id=fingerprint([change.customer_id, change.source.model_dump()]),
            customer_id=change.customer_id,
            op=_op(state, change, deleted),  # type: ignore[arg-type]
            changed=changed,
            provenance=change.source,
            applied_at=now,
        )
    return Decision(state=new_state, commands=commands, change=golden_change)
