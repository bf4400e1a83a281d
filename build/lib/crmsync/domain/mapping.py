"""How golden-record fields become a target's properties (vendor names, enum maps)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from crmsync.domain.customer import ENUM_VALUES, SYNCED_FIELDS, GoldenRecord

__all__ = ["FieldMapping", "TargetMapping"]


class FieldMapping(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    property: str
    values: dict[str, str] | None = None

    def to_target(self, value: Any) -> Any:
        if value is None:
            return ""  # HubSpot clears a property with an empty string
        if self.values is not None:
            return self.values[value]
        if isinstance(value, bool):
            return "true" if value else "false"
        return value


class TargetMapping(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vendor: str
    id_property: str
    fields: dict[str, FieldMapping]

    @field_validator("fields", mode="before")
    @classmethod
    def _shorthand(cls, fields: dict[str, Any]) -> dict[str, Any]:
        return {k: {"property": v} if isinstance(v, str) else v for k, v in fields.items()}

    @model_validator(mode="after")
    def _known_fields(self) -> TargetMapping:
        unknown = sorted(set(self.fields) - SYNCED_FIELDS)
        if unknown:
            raise ValueError(f"not customer fields: {', '.join(unknown)}")
        for name, field in self.fields.items():
            missing = sorted(ENUM_VALUES.get(name, set()) - set(field.values or {}))
            if field.values is not None and missing:
                raise ValueError(f"{name}: the enum map has no value for {', '.join(missing)}")
        return self

    def properties(self, record: GoldenRecord, fields: frozenset[str]) -> dict[str, Any]:
        """The target's view of `record`, limited to `fields`, plus the id property."""
        values = record.model_dump()
        props = {m.property: m.to_target(values[f]) for f, m in self.fields.items() if f in fields}
        props[self.id_property] = record.id
        return props
