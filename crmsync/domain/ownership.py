"""Who owns each synced field, where its value flows, and how a conflicting change is settled."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crmsync.domain.customer import SYNCED_FIELDS

__all__ = ["SYSTEMS", "TARGETS", "ConflictRules", "FieldRule", "OwnershipMatrix", "Precedence"]

System = Literal["canonical", "crm", "billing", "support"]
Target = Literal["crm", "billing", "support"]
SYSTEMS: tuple[System, ...] = ("canonical", "crm", "billing", "support")
TARGETS: tuple[Target, ...] = ("crm", "billing", "support")


class FieldRule(BaseModel):
    """`owner` is the field's system of record, or "shared" (every system that maps it may
    change it, settled by the conflict rules); `flows_to` is its direction: the targets that
    receive its value (canonical always does, as the golden record)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: System | Literal["shared"]
    flows_to: tuple[Target, ...]
    conflict: Literal["owner_wins", "shared_rules"]

    @model_validator(mode="after")
    def _consistent(self) -> FieldRule:
        if self.owner in self.flows_to:
            raise ValueError(f"owner {self.owner!r} cannot also be in flows_to")
        if (self.owner == "shared") != (self.conflict == "shared_rules"):
            raise ValueError("shared fields (and only they) are settled by shared_rules")
        return self


class Precedence(BaseModel):
    """In a conflict over one of `fields`, the change from `system` wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system: System
    fields: tuple[str, ...] | Literal["*"]
    reason: str

    def covers(self, field: str) -> bool:
        return self.fields == "*" or field in self.fields


class ConflictRules(BaseModel):
    """Two changes to a shared field conflict when the field's current value came from
    another system less than `window_seconds` before the incoming change (or after it).
    The first `precedence` rule naming either system for the field settles it; without one,
    changes inside the window go to the review queue and otherwise the later change wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_seconds: float = Field(default=5.0, ge=0)
    precedence: tuple[Precedence, ...] = ()


class OwnershipMatrix(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    conflicts: ConflictRules = ConflictRules()
    fields: dict[str, FieldRule]

    @model_validator(mode="after")
    def _known_fields(self) -> OwnershipMatrix:
        named = [f for p in self.conflicts.precedence if p.fields != "*" for f in p.fields]
        unknown = sorted((set(self.fields) | set(named)) - SYNCED_FIELDS)
        if unknown:
            raise ValueError(f"not customer fields: {', '.join(unknown)}")
        unshared = sorted(f for f in named if self.fields.get(f, None) is None
                          or self.fields[f].owner != "shared")  # fmt: skip
        if unshared:
            raise ValueError(f"precedence names fields that are not shared: {', '.join(unshared)}")
        return self

    def owner_of(self, field: str) -> str | None:
        rule = self.fields.get(field)
        return rule.owner if rule else None

    def fields_flowing_to(self, target: str) -> frozenset[str]:
        """The fields whose golden value `target` holds: those flowing to it and its own
        (a new customer's seeded values reach the owner too)."""
        return frozenset(
            name for name, rule in self.fields.items()
            if target in rule.flows_to or rule.owner == target
        )  # fmt: skip

    def may_change(self, system: str, field: str) -> bool:
        rule = self.fields.get(field)
        if rule is None:
            return False
        return rule.owner == system or (
            rule.owner == "shared" and (system == "canonical" or system in rule.flows_to)
        )

    def winner(self, field: str, incoming: str, current: str) -> Precedence | None:
        """The precedence rule that settles a conflict over `field` between two systems."""
        for rule in self.conflicts.precedence:
            if rule.covers(field) and rule.system in (incoming, current):
                return rule
        return None
