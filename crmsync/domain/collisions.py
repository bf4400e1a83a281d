"""An email two customers would hold: which canonical change claims an email for its customer,
and what a change becomes while its email is another customer's.

HubSpot and Zendesk hold one record per email, so the targets can give an email to one
customer only. Pure: the database edge (`crmsync.identity.claim_emails`) records who holds
each email and answers each claim; the identity decision (`crmsync.identity.decide_collision`,
`crmsync.domain.identity.email_collision`) says whether the two are one person (a merge) or a
person decides (the review queue). Until then no target learns of the collision: a new
customer is not written at all, a live one keeps the email its records have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crmsync.domain.customer import GoldenRecord
from crmsync.domain.events import CustomerChange, SourcePosition

__all__ = ["EmailClaim", "Gate", "email_claim", "gated", "reread"]

#: What a claim came to: the customer got the email (or gave one up); another holds it and a
#: person kept the two apart (the customer is written without it); another holds it and the
#: decision is pending (a review, a merge on its way, a holder that is giving it up).
Gate = Literal["granted", "apart", "held"]


@dataclass(frozen=True, slots=True)
class EmailClaim:
    customer_id: str
    #: The email the change gives the customer; None: deleted or no email any more, so the
    #: email it held is given up.
    email: str | None


def _live(record: GoldenRecord | None) -> GoldenRecord | None:
    return record if record is not None and record.deleted_at is None else None


def email_claim(golden: GoldenRecord | None, change: CustomerChange) -> EmailClaim | None:
    """The claim a canonical change makes (None: it gives its customer no other email).
    `golden` is the customer's live golden record (None: unknown or deleted).

    A row read whole (a new customer, a snapshot, a restore) claims its email, and a delete
    frees the customer's. An update claims one only when the app changed the email in it: an
    email withheld stays withheld, at no cost per update, until the row is read again
    (`reread`) after the decision."""
    record = _live(change.record)
    if record is None:
        return EmailClaim(change.customer_id, None)
    if golden is not None:
        if record.email == golden.email:
            return None
        before = _live(change.before)
        if change.op == "u" and before is not None and before.email == record.email:
            return None  # not the app's change now: withheld, or a target's change on its way
    if record.email is None and (golden is None or golden.email is None):
        return None
    return EmailClaim(change.customer_id, record.email)


def _without_email(record: GoldenRecord | None, email: str | None) -> GoldenRecord | None:
    return None if record is None else record.model_copy(update={"email": email})


def gated(golden: GoldenRecord | None, change: CustomerChange, gate: Gate) -> CustomerChange | None:
    """The change to decide after its claim (None: nothing to decide yet). Granted, it is
    decided as it is. While another customer holds the email, a live customer's change is
    decided with the email its records have (the rest of it flows: a consent change does not
    wait for a person), and a new customer is not written until the decision, or is written
    without the email when a person kept the two apart."""
    if gate == "granted":
        return change
    if golden is None and gate == "held":
        return None
    email = golden.email if golden is not None else None
    return change.model_copy(
        update={
            "record": _without_email(change.record, email),
            "before": _without_email(change.before, email),
        }
    )


def reread(
    golden: GoldenRecord | None, record: GoldenRecord, source: SourcePosition
) -> CustomerChange:
    """A customer's row read again after an email decision, as a change that claims the row's
    email: the whole row for a customer that is not live yet (as a snapshot reads it); for a
    live one only the email (its other values arrive as their own changes, and reading the
    row whole could undo a target's change on its way into it)."""
    if golden is None:
        return CustomerChange(
            customer_id=record.id,
            op="r",
            record=record,
            source=source.model_copy(update={"op": "r"}),
        )
    before = record.model_copy(update={"email": golden.email})
    return CustomerChange(
        customer_id=record.id,
        op="u",
        record=record,
        before=before,
        source=source.model_copy(update={"op": "u"}),
    )
