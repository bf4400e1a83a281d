"""Who owns each synced field, where its value flows, and how a conflict is settled."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from crmsync.domain.customer import SYNCED_FIELDS

__all__ = ["SYSTEMS", "TARGETS", "FieldRule", "OwnershipMatrix"]

System = Literal["canonical", "crm", "billing", "support"]
Target = Literal["crm", "billing", "support"]
SYSTEMS: tuple[System, ...] = ("canonical", "crm", "billing", "support")
TARGETS: tuple[Target, ...] = ("crm", "billing", "support")


class FieldRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: System | Literal["shared"]
    flows_to: tuple[Target, ...]
    conflict: Literal["owner_wins", "shared_rules"]

    @model_validator(mode="after")
    def _owner_is_not_a_destination(self) -> FieldRule:
        if self.owner in self.flows_to:
            raise ValueError(f"owner {self.owner!r} cannot also be in flows_to")
        return self


class OwnershipMatrix(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fields: dict[str, FieldRule]

    @model_validator(mode="after")
    def _known_fields(self) -> OwnershipMatrix:
        unknown = sorted(set(self.fields) - SYNCED_FIELDS)
        if unknown:
            raise ValueError(f"not customer fields: {', '.join(unknown)}")
        return self

    def owner_of(self, field: str) -> str | None:
        rule = self.fields.get(field)
        return rule.owner if rule else None

    def fields_flowing_to(self, target: str) -> frozenset[str]:
        return frozenset(name for name, rule in self.fields.items() if target in rule.flows_to)
