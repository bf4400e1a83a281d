"""What a change means: `apply(state, change) -> Decision(new state, commands, golden change)`.

Pure: no Faust, HTTP or database. The state is one customer's golden record, where each
field's current value came from (system and source time, for values changed after creation)
and, per target, a fingerprint of what was last commanded there, so a change that does not
alter any mapped property of a target sends that target nothing, and a replay of a known
change sends nothing.

A change comes from the canonical database (a CDC record of `public.customers`) or from a
target (its staging mirror, `crmsync.domain.inbound`). Each changed field is judged by the
ownership matrix (`judge`): applied to the golden record, written back to every other system
(the canonical row included) and published; or rejected, with the golden value written back
to the system that changed it; or parked for a person in the review queue. A value equal to
the golden one (an echo of our own write) is no change at all, and crmsync's own write-backs
into `public.customers` are recognised by their `sync_origin` and dropped. A target's copy is
judged only where it holds an edit made there: values our own writes explain, by the write
ledger routed with it (crmsync.domain.writes), are never taken for edits, however late or
often the copy comes back.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict

from crmsync.domain.customer import SYNCED_FIELDS, GoldenRecord
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.domain.inbound import InboundChange, Relinked, Resolution, decode
from crmsync.domain.mapping import TargetMapping

if TYPE_CHECKING:  # crmsync.rules imports the domain: a runtime import would be circular
    from crmsync.rules import SyncRules

__all__ = [
    "ARCHIVED_HASH",
    "LANES",
    "Attempt",
    "Command",
    "CustomerState",
    "Decision",
    "GoldenChange",
    "Lane",
    "TargetPush",
    "WriteBack",
    "apply",
    "fingerprint",
    "judge",
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
    #: Per field changed since the customer was created: the system its value came from and
    #: that system's time of the change (epoch ms). Absent: seeded by the canonical insert.
    sources: dict[str, tuple[str, int]] = {}
    #: The last canonical change applied (its WAL position): an older one is a redelivery.
    lsn: int | None = None
    #: When the canonical row was last read whole (its insert, or a snapshot): the time of
    #: every value not in `sources`.
    since: int = 0


#: Delivery priority, highest first: consent and do-not-contact changes, then new customers,
#: then updates, then activity. Per-customer order always comes before priority.
Lane = Literal["consent", "create", "update", "activity"]
LANES: tuple[Lane, ...] = ("consent", "create", "update", "activity")
CONSENT_FIELDS = frozenset({"consent_email", "consent_sms", "do_not_contact"})
#: Who a customer is and how to reach them: what a record linked to a customer may add.
CONTACT_FIELDS = frozenset({
    "email", "phone", "first_name", "last_name", "company_name", "street", "city",
    "postal_code", "region", "country", "birth_date",
})  # fmt: skip


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
    # The target reported values other than what we last pushed (an edit we reverted, or a
    # record deleted there): deliver even when its link says it already holds `desired_hash`.
    force: bool = False
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


class Attempt(BaseModel):
    """A change that was not applied: rejected (the golden value is written back to the
    system that made it) or parked in the review queue. Recorded in `sync.audit_log`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str  # stable per source event and field: a replay records nothing twice
    customer_id: str
    system: str
    field: str
    current: Any  # the golden value, which stays
    proposed: Any
    current_source: tuple[str, int]
    outcome: Literal["rejected", "review"]
    reason: str
    correlation_id: str
    cause: SourcePosition


class WriteBack(BaseModel):
    """Golden values to write into `public.customers` (on `crmsync.commands.canonical`): an
    applied change from a target, or the owner's value over a change an app may not make.
    A field is written only while the row still holds `expected` (or already the value):
    a newer app write is never overwritten, it is judged on its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    idempotency_key: str
    customer_id: str
    values: dict[str, Any]
    expected: dict[str, Any]  # a field missing here is written whatever the row holds
    origin: str  # "<system>:<correlation id>", stored in public.customers.sync_origin


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: CustomerState
    commands: list[Command]
    change: GoldenChange | None
    writeback: WriteBack | None = None
    attempts: list[Attempt] = []
    #: Values a target sent that cannot be read (the rest of its change is judged): the
    #: record is dead-lettered with these reasons.
    invalid: list[str] = []


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


def _correlation_id(customer_id: str, source: SourcePosition) -> str:
    return fingerprint([customer_id, source.model_dump()])


def _command_key(customer_id: str, source: SourcePosition, target: str) -> str:
    s = source
    return fingerprint([target, customer_id, s.lsn, s.tx_id, s.op, s.topic, s.offset])


def _desired(record: GoldenRecord, target: str, rules: SyncRules) -> dict[str, Any]:
    return rules.mappings[target].properties(record, rules.synced_fields(target))


def _target_command(
    state: CustomerState | None,
    record: GoldenRecord | None,
    source: SourcePosition,
    customer_id: str,
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
            idempotency_key=_command_key(customer_id, source, target),
            target=target,
            customer_id=customer_id,
            action=action,
            id_property=mapping.id_property,
            properties={**props, mapping.id_property: customer_id},
            full=full,
            lane=lane,
            desired_hash=h,
            source=source,
        )

    if deleted:
        if pushed is not None and pushed.archived:
            return pushed, None
        return TargetPush(hash=ARCHIVED_HASH, archived=True), command("archive", {}, ARCHIVED_HASH)

    assert record is not None
    desired = _desired(record, target, rules)
    desired_hash = fingerprint(desired)
    if pushed is not None and pushed.hash == desired_hash:
        return pushed, None
    previous: dict[str, Any] = {}
    old = state.golden if state else None
    if pushed is not None and not pushed.archived and old is not None:
        old_props = _desired(old, target, rules)
        if fingerprint(old_props) == pushed.hash:  # we know exactly what the target holds
            previous = old_props
    delta = {k: v for k, v in desired.items() if previous.get(k, object()) != v}
    consent = {mapping.fields[f].property for f in CONSENT_FIELDS & set(mapping.fields)}
    lane: Lane = "create" if pushed is None or pushed.archived else "update"
    if previous and consent & set(delta):
        lane = "consent"
    full = not previous
    return TargetPush(hash=desired_hash), command("upsert", delta, desired_hash, full, lane)


def _commands(
    state: CustomerState | None,
    record: GoldenRecord | None,
    source: SourcePosition,
    customer_id: str,
    rules: SyncRules,
    deleted: bool,
    skip: str | None = None,
) -> tuple[dict[str, TargetPush], list[Command]]:
    """What every target (but `skip`) needs to hold `record`, and the pushes that records."""
    pushed = dict(state.pushed) if state else {}
    commands = []
    for target in rules.mappings:
        if target == skip:
            continue
        push, command = _target_command(state, record, source, customer_id, target, rules, deleted)
        if push is not None:
            pushed[target] = push
        if command is not None:
            commands.append(command)
    return pushed, commands


def _golden_change(
    customer_id: str,
    op: str,
    changed: dict[str, Any],
    source: SourcePosition,
    now: str,
) -> GoldenChange:
    return GoldenChange(
        event_id=_correlation_id(customer_id, source),
        customer_id=customer_id,
        op=op,  # type: ignore[arg-type]
        changed=changed,
        provenance=source,
        applied_at=now,
    )


Verdict = Literal["apply", "reject", "review", "older", "stale"]


def judge(
    rules: SyncRules,
    field: str,
    system: str,
    at_ms: int,
    current: tuple[str, int],
    seeded: bool = False,
) -> tuple[Verdict, str]:
    """May `system`'s change of `field` at `at_ms` replace the value `current` says came
    from (system, time)? The ownership matrix and its conflict rules decide (DESIGN.md):
    "older" is a change made before the current value's (the later one wins), "stale" an
    out-of-order change from the system the current value came from. A `seeded` value (from
    the row read whole, not a change since) competes in time only, never as a conflict."""
    ownership = rules.ownership
    rule = ownership.fields.get(field)
    if rule is None or not ownership.may_change(system, field):
        owner = rule.owner if rule else "nobody: it is not synced"
        return "reject", f"{system} may not change {field} (owner: {owner})"
    holder, since = current
    if holder == system and not seeded:
        if at_ms >= since:
            return "apply", "its own later change"
        return "stale", f"older than {system}'s change already applied"
    if rule.owner == system:
        return "apply", "a change from its owner"
    if seeded:
        if at_ms >= since:
            return "apply", "a change since the record was read"
        return "older", "older than the record as last read: the later value stays"
    window_s = ownership.conflicts.window_seconds
    window = int(window_s * 1000)
    if at_ms >= since + window:
        return "apply", f"a later change than {holder}'s"
    if at_ms <= since - window:
        return "older", f"older than {holder}'s change: the later change wins"
    precedence = ownership.winner(field, system, holder)
    if precedence is not None:
        return ("apply" if precedence.system == system else "reject"), precedence.reason
    return "review", f"{holder} and {system} changed {field} within {window_s:g} s"


def _lsn(state: CustomerState | None, change: CustomerChange) -> int | None:
    known = [x for x in (state.lsn if state else None, change.source.lsn) if x is not None]
    return max(known, default=None)


def _redelivered(state: CustomerState | None, change: CustomerChange) -> bool:
    """A canonical change at or before the last one applied (WAL order): at-least-once
    delivery brought it again, and what it said is already in the state."""
    lsn = change.source.lsn
    return state is not None and state.lsn is not None and lsn is not None and lsn <= state.lsn


def _replace(
    state: CustomerState | None, change: CustomerChange, rules: SyncRules, now: str
) -> Decision:
    """The row is the whole truth: a new customer, a snapshot, a delete or a restore."""
    deleted = change.record is None or change.record.deleted_at is not None
    record = change.record if not deleted else None
    pushed, commands = _commands(state, record, change.source, change.customer_id, rules, deleted)
    golden = change.record if change.record is not None else (state.golden if state else None)
    changed = _changed_fields(state.golden if state else None, change.record)
    if change.record is None:
        changed = {}
    sources = {f: s for f, s in (state.sources if state else {}).items() if f not in changed}
    new_state = CustomerState(
        golden=golden, deleted=deleted, pushed=pushed, sources=sources, lsn=_lsn(state, change),
        since=change.source.ts_ms or (state.since if state else 0),
    )  # fmt: skip
    was_deleted = state.deleted if state else False
    golden_change = None
    if changed or deleted != was_deleted or (deleted and state is None):
        if deleted:
            op = "deleted"
        elif state is None or state.golden is None:
            op = "created"
        else:
            op = "restored" if state.deleted else "updated"
        golden_change = _golden_change(change.customer_id, op, changed, change.source, now)
    return Decision(state=new_state, commands=commands, change=golden_change)


def _settle(
    state: CustomerState,
    system: str,
    proposed: dict[str, Any],
    source: SourcePosition,
    customer_id: str,
    rules: SyncRules,
    in_sync: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], list[Attempt], dict[str, tuple[str, int]]]:
    """Judge each proposed field value: (applied, rejected, attempts, new sources). An older
    change is recorded; it is written back over (`rejected`) unless the system was sent the
    current golden record already (`in_sync`): that write is on its way."""
    assert state.golden is not None
    at = source.ts_ms or 0
    correlation = _correlation_id(customer_id, source)
    applied: dict[str, Any] = {}
    rejected: dict[str, Any] = {}
    attempts: list[Attempt] = []
    sources = dict(state.sources)
    for field in sorted(proposed):
        value, current = proposed[field], getattr(state.golden, field)
        if value == current:
            continue
        seeded = field not in state.sources
        holder = state.sources.get(field, ("canonical", state.since))
        verdict, reason = judge(rules, field, system, at, holder, seeded)
        if verdict == "apply":
            applied[field] = value
            sources[field] = (system, at)
        elif verdict in ("reject", "older", "review"):
            if verdict == "reject" or (verdict == "older" and not in_sync):
                rejected[field] = value
            attempts.append(
                Attempt(
                    key=fingerprint([correlation, field]),
                    customer_id=customer_id,
                    system=system,
                    field=field,
                    current=current,
                    proposed=value,
                    current_source=holder,
                    outcome="review" if verdict == "review" else "rejected",
                    reason=reason,
                    correlation_id=correlation,
                    cause=source,
                )
            )
    return applied, rejected, attempts, sources


def _apply_canonical(
    state: CustomerState | None, change: CustomerChange, rules: SyncRules, now: str
) -> Decision:
    if _redelivered(state, change):
        assert state is not None
        return Decision(state=state, commands=[], change=None)
    live = state is not None and state.golden is not None and not state.deleted
    if not live or change.op != "u" or change.record is None or change.record.deleted_at:
        return _replace(state, change, rules, now)
    assert state is not None and state.golden is not None
    if change.origin is not None:  # our own write-back: its values are already golden
        return Decision(state=state.model_copy(update={"lsn": _lsn(state, change)}),
                        commands=[], change=None)  # fmt: skip
    record, golden = change.record, state.golden
    base = change.before or golden  # what the app changed: its row before, if Debezium sent it
    proposed = {
        f: getattr(record, f) for f in SYNCED_FIELDS if getattr(record, f) != getattr(base, f)
    }
    applied, rejected, attempts, sources = _settle(
        state, "canonical", proposed, change.source, change.customer_id, rules
    )
    new_golden = golden.model_copy(update={**applied, "updated_at": record.updated_at})
    pushed, commands = _commands(
        state, new_golden, change.source, change.customer_id, rules, deleted=False
    )
    writeback = None
    if rejected:  # the owner's value goes back into the row the app wrote
        writeback = _writeback(
            change.customer_id, change.source, "canonical",
            {f: getattr(golden, f) for f in rejected}, rejected,
        )  # fmt: skip
    new_state = state.model_copy(
        update={"golden": new_golden, "pushed": pushed, "sources": sources,
                "lsn": _lsn(state, change)}
    )  # fmt: skip
    return _updated(state, new_state, commands, change.source, now, writeback, attempts)


def _updated(
    state: CustomerState,
    new_state: CustomerState,
    commands: list[Command],
    source: SourcePosition,
    now: str,
    writeback: WriteBack | None,
    attempts: list[Attempt] | None = None,
) -> Decision:
    """The decision for a change to a live customer's fields, published if any changed."""
    assert new_state.golden is not None
    changed = _changed_fields(state.golden, new_state.golden)
    change = None
    if changed:
        customer_id = new_state.golden.id
        change = _golden_change(customer_id, "updated", changed, source, now)
    return Decision(
        state=new_state, commands=commands, change=change, writeback=writeback,
        attempts=attempts or [],
    )  # fmt: skip


def _forced_write(
    customer_id: str,
    source: SourcePosition,
    target: str,
    rules: SyncRules,
    record: GoldenRecord,
    fields: set[str],
) -> Command:
    """Write `record`'s `fields` to `target` whatever it was last told: it holds otherwise."""
    mapping = rules.mappings[target]
    desired = _desired(record, target, rules)
    props = {
        m.property: desired[m.property]
        for name, m in mapping.fields.items()
        if set(mapping.sources(name)) & fields and m.property in desired
    }
    return Command(
        idempotency_key=_command_key(customer_id, source, target),
        target=target, customer_id=customer_id, action="upsert",
        id_property=mapping.id_property, properties={**props, mapping.id_property: customer_id},
        desired_hash=fingerprint(desired), force=True, source=source,
    )  # fmt: skip


def _writeback(
    customer_id: str,
    source: SourcePosition,
    system: str,
    values: dict[str, Any],
    expected: dict[str, Any],
) -> WriteBack:
    correlation = _correlation_id(customer_id, source)
    return WriteBack(
        idempotency_key=_command_key(customer_id, source, "canonical"),
        customer_id=customer_id,
        values=values,
        expected=expected,
        origin=f"{system}:{correlation}",
    )


def _apply_inbound(
    state: CustomerState | None, change: InboundChange, rules: SyncRules, now: str
) -> Decision | None:
    """A target's record changed: judge what it changed; None when there is nothing to judge
    against (the customer is unknown here or deleted)."""
    system, mapping = change.system, rules.mappings.get(change.system)
    if state is None or state.golden is None or state.deleted or mapping is None:
        return None
    golden, source, customer_id = state.golden, change.source, change.customer_id
    desired = _desired(golden, system, rules)
    if change.deleted:  # canonical owns a customer's existence: the record is recreated
        correlation = _correlation_id(customer_id, source)
        attempt = Attempt(
            key=fingerprint([correlation, "*"]), customer_id=customer_id, system=system,
            field="*", current="exists", proposed="deleted",
            current_source=("canonical", state.since), outcome="rejected",
            reason=f"{system} may not delete a customer: the canonical database owns its "
            "existence, so the record is created again",
            correlation_id=correlation, cause=source,
        )  # fmt: skip
        command = Command(
            idempotency_key=_command_key(customer_id, source, system),
            target=system, customer_id=customer_id, action="upsert",
            id_property=mapping.id_property, properties=desired, full=True, lane="create",
            desired_hash=fingerprint(desired), force=True, source=source,
        )  # fmt: skip
        pushed = {**state.pushed, system: TargetPush(hash=command.desired_hash)}
        new_state = state.model_copy(update={"pushed": pushed})
        return Decision(state=new_state, commands=[command], change=None, attempts=[attempt])

    incoming, problems = decode(mapping, change.properties, golden)
    if change.link is not None:
        return _apply_link(state, change, incoming, rules, now)
    if change.previous is None:
        # The first copy of a record (our create coming back, maybe already edited there).
        # Where we sent no value, what it holds is its own default (Zendesk's time zone and
        # locale), not an edit.
        proposed = {f: v for f, v in incoming.items() if getattr(golden, f) is not None}
    else:
        before, _ = decode(mapping, change.previous, golden)
        # A value the record already held before this change is not a change the system
        # made now: the system is behind (our write to it is on its way), not disagreeing.
        proposed = {f: v for f, v in incoming.items() if f not in before or before[f] != v}
    # Our own writes coming back, late or replayed, are not edits made there.
    ours = _our_writes(mapping, change, incoming, golden)
    proposed = {f: v for f, v in proposed.items() if f not in ours}
    own = state.pushed.get(system)
    changed_now = {
        name for name, m in mapping.fields.items()
        if change.previous is None
        or change.properties.get(m.property) != change.previous.get(m.property)
    }  # fmt: skip
    invalid = [
        f"{system} {field}: {why}" for field, why in problems.items() if field in changed_now
    ]
    in_sync = own is not None and own.hash == fingerprint(desired)
    applied, rejected, attempts, sources = _settle(
        state, system, proposed, source, customer_id, rules, in_sync
    )
    new_golden = golden.model_copy(update=applied)
    pushed, commands = _commands(
        state, new_golden, source, customer_id, rules, deleted=False, skip=system
    )
    if in_sync:  # it held the golden record, and now holds it with its change:
        pushed[system] = TargetPush(hash=fingerprint(_desired(new_golden, system, rules)))
    if rejected:  # the golden value goes back to the system that changed it
        revert = _forced_write(customer_id, source, system, rules, new_golden, set(rejected))
        commands.append(revert)
        pushed[system] = TargetPush(hash=revert.desired_hash)
    writeback = None
    if applied:
        writeback = _writeback(
            customer_id, source, system, applied, {f: getattr(golden, f) for f in applied}
        )
    new_state = state.model_copy(
        update={"golden": new_golden, "pushed": pushed, "sources": sources}
    )
    decision = _updated(state, new_state, commands, source, now, writeback, attempts)
    return decision.model_copy(update={"invalid": invalid}) if invalid else decision


def _our_writes(
    mapping: TargetMapping, change: InboundChange, incoming: dict[str, Any], golden: GoldenRecord
) -> set[str]:
    """The fields whose value in the copy our own writes explain (crmsync.domain.writes): a
    value we wrote there, or any value while the copy is not newer than our last write of it."""
    copied_at = change.source.ts_ms or 0
    ours = set()
    for name, entry in mapping.fields.items():
        written = change.written.get(entry.property)
        if written is None:
            continue
        fields = [f for f in mapping.sources(name) if f in incoming]
        if written.covers(copied_at):
            ours.update(fields)
            continue
        for value in (*written.pending, *written.values):
            ours.update(f for f in fields if _decoded(mapping, entry.property, value, golden, f)
                        == incoming[f])  # fmt: skip
    return ours


def _decoded(
    mapping: TargetMapping, prop: str, value: Any, golden: GoldenRecord, field: str
) -> Any:
    """`field` as a copy holding `value` in `prop` would read: the same decoding as the copy."""
    fields, _ = decode(mapping, {prop: value}, golden)
    return fields.get(field, _MISSING)


_MISSING = object()


def _full_write(
    customer_id: str, source: SourcePosition, target: str, rules: SyncRules, record: GoldenRecord
) -> Command:
    """The whole of `record` for `target`, whatever it was last told."""
    mapping = rules.mappings[target]
    desired = _desired(record, target, rules)
    return Command(
        idempotency_key=_command_key(customer_id, source, target),
        target=target, customer_id=customer_id, action="upsert",
        id_property=mapping.id_property, properties=desired, full=True,
        desired_hash=fingerprint(desired), force=True, source=source,
    )  # fmt: skip


def _apply_link(
    state: CustomerState,
    change: InboundChange,
    incoming: dict[str, Any],
    rules: SyncRules,
    now: str,
) -> Decision:
    """A record a person made in a target, just linked to this customer: it fills the
    golden record's empty contact details its system may change (not settings such as a
    time zone: a target fills those with its own defaults), and then holds the whole golden
    record (its other differing values are recorded as rejected: the target is overwritten
    there, so the audit says with what)."""
    assert state.golden is not None
    golden, source, customer_id, system = (
        state.golden,
        change.source,
        change.customer_id,
        change.system,
    )
    ownership = rules.ownership
    gaps = {
        f: v for f, v in incoming.items()
        if f in CONTACT_FIELDS and v is not None and getattr(golden, f) is None
        and ownership.may_change(system, f)
    }  # fmt: skip
    at = source.ts_ms or 0
    correlation = _correlation_id(customer_id, source)
    overwritten = {
        f: v for f, v in incoming.items()
        if f not in gaps and f in ownership.fields and v != getattr(golden, f)
    }  # fmt: skip
    attempts = []
    for field, value in sorted(overwritten.items()):
        attempt = Attempt(
            key=fingerprint([correlation, field]), customer_id=customer_id, system=system,
            field=field, current=getattr(golden, field), proposed=value,
            current_source=state.sources.get(field, ("canonical", state.since)),
            outcome="rejected", correlation_id=correlation, cause=source,
            reason=f"{system} record linked by {change.link}: the golden value stays",
        )  # fmt: skip
        attempts.append(attempt)
    new_golden = golden.model_copy(update=gaps)
    pushed, commands = _commands(
        state, new_golden, source, customer_id, rules, deleted=False, skip=system
    )
    write = _full_write(customer_id, source, system, rules, new_golden)
    commands.append(write)
    pushed[system] = TargetPush(hash=write.desired_hash)
    writeback = None
    if gaps:
        writeback = _writeback(customer_id, source, system, gaps, dict.fromkeys(gaps))
    sources = {**state.sources, **{f: (system, at) for f in gaps}}
    new_state = state.model_copy(
        update={"golden": new_golden, "pushed": pushed, "sources": sources}
    )
    return _updated(state, new_state, commands, source, now, writeback, attempts)


def _apply_relinked(
    state: CustomerState | None, relinked: Relinked, rules: SyncRules, now: str
) -> Decision | None:
    """The customer's records in some systems changed hands: write it whole there."""
    if state is None or state.golden is None or state.deleted:
        return None
    pushed = dict(state.pushed)
    commands = []
    for system in relinked.systems:
        if system in rules.mappings:
            write = _full_write(relinked.customer_id, relinked.source, system, rules, state.golden)
            commands.append(write)
            pushed[system] = TargetPush(hash=write.desired_hash)
    return Decision(state=state.model_copy(update={"pushed": pushed}), commands=commands,
                    change=None)  # fmt: skip


def _apply_resolution(
    state: CustomerState | None, resolution: Resolution, rules: SyncRules, now: str
) -> Decision | None:
    """A person settled a conflict: the value goes to the golden record and to every system
    that maps the field, whatever each was last told (they disagreed)."""
    if state is None or state.golden is None or state.deleted:
        return None
    golden, source, customer_id = state.golden, resolution.source, resolution.customer_id
    field = resolution.field
    new_golden = golden.model_copy(update={field: resolution.value})
    pushed = dict(state.pushed)
    commands: list[Command] = []
    for target in rules.mappings:
        if field in rules.synced_fields(target):
            command = _forced_write(customer_id, source, target, rules, new_golden, {field})
            commands.append(command)
            pushed[target] = TargetPush(hash=command.desired_hash)
    sources = {**state.sources, field: ("review", source.ts_ms or 0)}
    # Only over the value it replaces: an app's write in flight is judged, not overwritten.
    expected = {field: getattr(golden, field)}
    writeback = _writeback(customer_id, source, "review", {field: resolution.value}, expected)
    new_state = state.model_copy(
        update={"golden": new_golden, "pushed": pushed, "sources": sources}
    )
    return _updated(state, new_state, commands, source, now, writeback)


def apply(
    state: CustomerState | None,
    change: CustomerChange | InboundChange | Resolution | Relinked,
    rules: SyncRules,
    now: str,
) -> Decision | None:
    """Fold one change into a customer's state; say what to send where. None: an inbound
    change for a customer this state does not hold (nothing to do)."""
    if isinstance(change, InboundChange):
        return _apply_inbound(state, change, rules, now)
    if isinstance(change, Resolution):
        return _apply_resolution(state, change, rules, now)
    if isinstance(change, Relinked):
        return _apply_relinked(state, change, rules, now)
    return _apply_canonical(state, change, rules, now)
