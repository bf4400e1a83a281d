"""Coalesce a batch of commands into as few API writes as possible, keeping per-customer order.

Consecutive upserts for one customer merge into one (later properties win); an archive ends a
run. The result is a list of waves: wave N holds each customer's N-th write, so customer
order holds while every wave can still go out in batch requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmsync.domain.decide import Command

__all__ = ["Write", "plan_writes"]


@dataclass
class Write:
    customer_id: str
    action: str
    id_property: str
    properties: dict[str, Any]
    desired_hash: str
    commands: list[Command] = field(default_factory=list)


def plan_writes(commands: list[Command]) -> list[list[Write]]:
    per_customer: dict[str, list[Write]] = {}
    for command in commands:
        writes = per_customer.setdefault(command.customer_id, [])
        last = writes[-1] if writes else None
        if last is not None and last.action == command.action == "upsert":
            last.properties.update(command.properties)
            last.desired_hash = command.desired_hash
            last.commands.append(command)
        elif last is not None and last.action == command.action == "archive":
            last.commands.append(command)
        else:
            writes.append(
                Write(
                    customer_id=command.customer_id,
                    action=command.action,
                    id_property=command.id_property,
                    properties=dict(command.properties),
                    desired_hash=command.desired_hash,
                    commands=[command],
                )
            )
    depth = max((len(w) for w in per_customer.values()), default=0)
    return [[ws[i] for ws in per_customer.values() if i < len(ws)] for i in range(depth)]
