"""Coalesce a batch of commands into as few API writes as possible, keeping per-customer order.

Consecutive upserts for one customer merge into one (later properties win); an archive ends a
run. The result is a list of waves: wave N holds each customer's N-th write, so customer
order holds while every wave can still go out in batch requests. Inside a wave, writes are
ordered by lane (consent first, then creates, updates, activity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmsync.domain.decide import LANES, Command, Lane, fingerprint

__all__ = ["Write", "plan_writes"]


@dataclass
class Write:
    customer_id: str
    action: str
    id_property: str
    properties: dict[str, Any]
    desired_hash: str
    full: bool
    lane: Lane
    force: bool = False
    commands: list[Command] = field(default_factory=list)
    #: False when what this write leaves in the target is not exactly `desired_hash` (it was
    #: sent without the whole record): the link then records the target's state as unknown.
    known: bool = True
    #: When its request was sent (epoch ms): the write ledger's time (crmsync.domain.writes).
    sent_at: int = 0

    @property
    def idempotency_key(self) -> str:
        """Stable for the same commands across redeliveries; never shared by two different
        writes (a customer returning to an earlier state is a new write)."""
        return fingerprint([self.action, [c.idempotency_key for c in self.commands]])

    def absorb(self, command: Command) -> None:
        self.properties.update(command.properties)
        self.desired_hash = command.desired_hash
        self.full = self.full or command.full
        self.force = self.force or command.force
        self.lane = min(self.lane, command.lane, key=LANES.index)
        self.commands.append(command)


def plan_writes(commands: list[Command]) -> list[list[Write]]:
    per_customer: dict[str, list[Write]] = {}
    for command in commands:
        writes = per_customer.setdefault(command.customer_id, [])
        last = writes[-1] if writes else None
        if last is not None and last.action == command.action:
            last.absorb(command)
        else:
            writes.append(
                Write(
                    customer_id=command.customer_id,
                    action=command.action,
                    id_property=command.id_property,
                    properties=dict(command.properties),
                    desired_hash=command.desired_hash,
                    full=command.full,
                    lane=command.lane,
                    force=command.force,
                    commands=[command],
                )
            )
    depth = max((len(w) for w in per_customer.values()), default=0)
    waves = [[ws[i] for ws in per_customer.values() if i < len(ws)] for i in range(depth)]
    return [sorted(wave, key=lambda w: LANES.index(w.lane)) for wave in waves]
