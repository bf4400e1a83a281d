"""What crmsync wrote to a target's record of a customer: the ledger that tells our own writes,
coming back in the target's copies of the record, from edits people made there.

A target stamps a copy with the time it stored it. Our write lands there whenever the adapter
gets to it, which under a backlog is long after the golden record moved on, and a copy can be
read again at any later time (a redelivery, a re-snapshot of the staging mirror). So a copy's
time says nothing about whether a value in it is an edit. What does is the ledger, kept by the
adapters beside every request (`sync.target_writes`) and read when a copy is routed, so it
survives replays, restarts and a lost stream state:

- a value in flight, or one of the last values the target acknowledged, is our own write;
- a copy from before the second in which we sent our last acknowledged write of a property
  shows a state that write replaced;
- any other copy holding another value reports an edit made there.

The moment is when the request was sent: a copy taken after it holds either the state our
write replaced (our previous write, which the values recognise, or an edit judged already)
or our write, or a later edit, which must not be missed. Whole seconds, because Stripe and
Zendesk stamp copies with whole seconds (a copy of an edit made just after our write carries
the second our write was sent in); a copy from that second is judged, and its values ours
are recognised as such.

Pure: values are the target's properties as the command carried them; `crmsync.domain.decide`
decodes them like any copy, so a vendor's reformatting never looks like an edit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["REMEMBERED", "Ledger", "Written", "acknowledged", "sending", "withdrawn"]

#: How many acknowledged values per property are recognised (a target may keep reporting an
#: older one: Zendesk keeps a user's first email as the primary identity).
REMEMBERED = 3


class Written(BaseModel):
    """One property of one target's record, as we wrote it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: tuple[Any, ...] = ()  # the last acknowledged values, newest last
    at: int | None = None  # when the newest was sent (epoch ms)
    pending: tuple[Any, ...] = ()  # (value,) while a write of it is in flight

    def covers(self, copied_at: int) -> bool:
        """Whether a copy stamped `copied_at` is from before the second our last acknowledged
        write was sent in, so cannot show an edit made after it. (A write in flight covers
        nothing: the copy may hold a person's edit made before it lands, judged like any.)"""
        return self.at is not None and copied_at // 1000 < self.at // 1000


#: By target property name.
Ledger = dict[str, Written]


def sending(ledger: Ledger, properties: dict[str, Any]) -> Ledger:
    """Before the request: `properties` are in flight."""
    updated = dict(ledger)
    for prop, value in properties.items():
        entry = ledger.get(prop, Written())
        updated[prop] = entry.model_copy(update={"pending": (value,)})
    return updated


def acknowledged(ledger: Ledger, properties: dict[str, Any], sent_at: int) -> Ledger:
    """The target took `properties`, sent at `sent_at` (epoch ms)."""
    updated = dict(ledger)
    for prop, value in properties.items():
        entry = ledger.get(prop, Written())
        values = [v for v in entry.values if v != value] + [value]
        updated[prop] = Written(values=tuple(values[-REMEMBERED:]), at=sent_at)
    return updated


def withdrawn(ledger: Ledger) -> Ledger:
    """The requests in flight failed: the target holds what it held before them."""
    return {prop: entry.model_copy(update={"pending": ()}) for prop, entry in ledger.items()}
