"""What every target can take, checked at ingest: a customer is in all the targets that map it,
or in none of them (dead-lettered once, with the reason), never in some and missing from others.

The limits are each vendor's published constraints on the properties crmsync writes
(config/targets.toml), read against the mapping actually used for each target: a value is
checked as the target will receive it (Stripe's and Zendesk's `name` is the joined full name).
Every target that maps a field applies, so the smallest limit wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crmsync.domain.customer import GoldenRecord
from crmsync.domain.mapping import TargetMapping
from crmsync.errors import ValidationFailed

__all__ = ["IngestPolicy", "PropertyLimit", "TargetLimits"]


class PropertyLimit(BaseModel):
    """One property's published constraint: the longest value the API takes (in characters),
    whether it takes only ASCII, and whether a record without it is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_length: int | None = Field(default=None, gt=0)
    ascii: bool = False
    required: bool = False


@dataclass(frozen=True)
class TargetLimits:
    """One target's vendor constraints, over the mapping and fields chosen for that target."""

    target: str
    vendor: str
    mapping: TargetMapping
    fields: frozenset[str]  # the customer fields that flow to the target
    properties: dict[str, PropertyLimit] = field(default_factory=dict)
    #: The vendor's limit on any text property not named in `properties` (HubSpot's 65,536).
    text_max_length: int | None = None

    def limit_of(self, prop: str) -> PropertyLimit:
        named = self.properties.get(prop)
        if named is not None:
            if named.max_length is None and self.text_max_length is not None:
                return named.model_copy(update={"max_length": self.text_max_length})
            return named
        return PropertyLimit(max_length=self.text_max_length)

    def sources_of(self, prop: str) -> tuple[str, ...]:
        """The customer fields written into the target property `prop`."""
        for name, mapping in self.mapping.fields.items():
            if mapping.property == prop:
                return self.mapping.sources(name)
        return ()

    def problems(self, record: GoldenRecord) -> list[tuple[tuple[str, ...], str]]:
        """Why the target cannot take `record` as written to it: (customer fields, reason)."""
        found: list[tuple[tuple[str, ...], str]] = []
        who = f"{self.target} ({self.vendor})"
        written = self.mapping.properties(record, self.fields)
        for prop, value in written.items():
            sources = self.sources_of(prop)
            if not sources:  # the id property: ours, never the customer's data
                continue
            limit = self.limit_of(prop)
            if value is None:
                if limit.required:
                    fields = " or ".join(sources)
                    found.append((sources, f"{who} requires {prop!r}: set {fields}"))
                continue
            found.extend((sources, why) for why in _refusals(who, prop, value, limit))
        return found


def _refusals(who: str, prop: str, value: Any, limit: PropertyLimit) -> list[str]:
    if not isinstance(value, str):
        return []
    why = []
    if limit.max_length is not None and len(value) > limit.max_length:
        why.append(
            f"{who} takes at most {limit.max_length:,} characters in {prop!r};"
            f" this is {len(value):,}"
        )
    if limit.ascii and not value.isascii():
        why.append(f"{who} takes only ASCII in {prop!r}: {value[:80]!r}")
    return why


@dataclass(frozen=True)
class IngestPolicy:
    """Every target's limits; `check` refuses a record that any of them cannot take."""

    targets: tuple[TargetLimits, ...] = ()

    def problems(self, record: GoldenRecord) -> list[tuple[tuple[str, ...], str]]:
        return [problem for target in self.targets for problem in target.problems(record)]

    def check(self, record: GoldenRecord) -> None:
        """ValidationFailed naming every limit `record` breaks. A deleted customer is not
        checked: its targets are only told to archive it, whatever its values."""
        if record.deleted_at is not None:
            return
        found = self.problems(record)
        if not found:
            return
        fields = list(dict.fromkeys(f for sources, _ in found for f in sources))
        raise ValidationFailed(", ".join(fields), "; ".join(reason for _, reason in found))
