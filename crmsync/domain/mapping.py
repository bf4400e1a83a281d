"""How golden-record fields become a target's properties (vendor names, enum maps, joins).

Values stay canonical (None, bools, ISO dates as strings): each vendor's client encodes them
the way its API expects (HubSpot's "" to clear, Stripe's form encoding, ...).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from crmsync.domain.customer import ENUM_VALUES, SYNCED_FIELDS, GoldenRecord

__all__ = ["FieldMapping", "TargetMapping"]


class FieldMapping(BaseModel):
    """One target property: from one customer field (the mapping's key), optionally through
    an enum map, or from several fields joined with spaces (`join`, e.g. a full name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    property: str
    values: dict[str, str] | None = None
    join: tuple[str, ...] | None = None

    def to_target(self, value: Any) -> Any:
        if value is None or self.values is None:
            return value
        return self.values[value]


class TargetMapping(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id_property: str
    fields: dict[str, FieldMapping]

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return {k: {"property": v} if isinstance(v, str) else v for k, v in fields.items()}

    @model_validator(mode="after")
    def _known_fields(self) -> TargetMapping:
        sources = [f for name, m in self.fields.items() for f in (m.join or (name,))]
        unknown = sorted(set(sources) - SYNCED_FIELDS)
        if unknown:
            raise ValueError(f"not customer fields: {', '.join(unknown)}")
        for name, field in self.fields.items():
            if field.join is not None and field.values is not None:
                raise ValueError(f"{name}: a joined property cannot have an enum map")
            missing = sorted(ENUM_VALUES.get(name, set()) - set(field.values or {}))
            if field.values is not None and missing:
                raise ValueError(f"{name}: the enum map has no value for {', '.join(missing)}")
        properties = [m.property for m in self.fields.values()] + [self.id_property]
        duplicated = sorted({p for p in properties if properties.count(p) > 1})
        if duplicated:
            raise ValueError(f"properties written twice: {', '.join(duplicated)}")
        nested = sorted({p for p in properties for q in properties if q.startswith(p + ".")})
        if nested:  # `metadata` and `metadata.x` would overwrite each other
            raise ValueError(f"properties both set whole and nested into: {', '.join(nested)}")
        return self

    def sources(self, name: str) -> tuple[str, ...]:
        """The customer fields the mapping entry `name` reads."""
        return self.fields[name].join or (name,)

    def properties(self, record: GoldenRecord, fields: frozenset[str]) -> dict[str, Any]:
        """The target's view of `record`, limited to entries reading `fields`, plus the id."""
        values = record.model_dump()
        props: dict[str, Any] = {}
        for name, mapping in self.fields.items():
            sources = self.sources(name)
            if not any(f in fields for f in sources):
                continue
            if mapping.join is not None:
                parts = [values[f] for f in sources if f in fields and values[f]]
                props[mapping.property] = " ".join(parts) or None
            else:
                props[mapping.property] = mapping.to_target(values[name])
        props[self.id_property] = record.id
        return props
