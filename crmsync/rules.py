"""Load and cross-check the ownership matrix, the target mappings and the targets' published
limits at start-up."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from crmsync.domain.limits import IngestPolicy, TargetLimits
from crmsync.domain.mapping import TargetMapping
from crmsync.domain.ownership import TARGETS, OwnershipMatrix
from crmsync.errors import ConfigError
from crmsync.targets import TARGETS_FILE, load_vendors

__all__ = ["SyncRules", "load_rules"]


#: The vendors each target can be, in mapping.toml as `[<target>.<vendor>]`.
VENDORS = {"crm": ("hubspot", "salesforce"), "billing": ("stripe",), "support": ("zendesk",)}


@dataclass(frozen=True)
class SyncRules:
    ownership: OwnershipMatrix
    mappings: dict[str, TargetMapping]  # per target, for the vendor chosen for it
    #: What every chosen target can take: a row one of them cannot take is refused at ingest.
    ingest: IngestPolicy = field(default_factory=IngestPolicy)

    def synced_fields(self, target: str) -> frozenset[str]:
        """Fields that flow to `target` and that its mapping knows how to write."""
        mapping = self.mappings.get(target)
        if mapping is None:
            return frozenset()
        sources = {f for name in mapping.fields for f in mapping.sources(name)}
        return self.ownership.fields_flowing_to(target) & frozenset(sources)


def _read(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_rules(
    ownership_file: Path,
    mapping_file: Path,
    vendors: dict[str, str] | None = None,
    targets_file: Path | None = TARGETS_FILE,
) -> SyncRules:
    """Load the files; every vendor's mapping is validated, `vendors` picks the one used per
    target (default: the first listed in VENDORS). The chosen vendors' limits in
    `targets_file` make the ingest policy (None: no limits)."""
    try:
        ownership = OwnershipMatrix.model_validate(_read(ownership_file))
    except ValidationError as exc:
        raise ConfigError(f"{ownership_file}: {exc}") from exc
    raw = _read(mapping_file)
    unknown = sorted(set(raw) - set(TARGETS))
    if unknown:
        raise ConfigError(f"{mapping_file}: unknown targets {', '.join(unknown)}")
    chosen = {t: v[0] for t, v in VENDORS.items() if t in raw} | (vendors or {})
    mappings = {}
    for target, by_vendor in raw.items():
        if not isinstance(by_vendor, dict):
            raise ConfigError(f"{mapping_file}: [{target}] must be a table of vendors")
        strange = sorted(set(by_vendor) - set(VENDORS[target]))
        if strange:
            raise ConfigError(f"{mapping_file}: [{target}] unknown vendors {', '.join(strange)}")
        for vendor, document in by_vendor.items():
            try:
                mapping = TargetMapping.model_validate(document)
            except ValidationError as exc:
                raise ConfigError(f"{mapping_file}: [{target}.{vendor}] {exc}") from exc
            sources = {f for name in mapping.fields for f in mapping.sources(name)}
            unowned = sorted(sources - set(ownership.fields))
            if unowned:
                raise ConfigError(
                    f"{mapping_file}: [{target}.{vendor}] maps fields with no ownership rule: "
                    + ", ".join(unowned)
                )
            if chosen.get(target) == vendor:
                mappings[target] = mapping
    missing = sorted(t for t, v in chosen.items() if t not in mappings)
    if missing:
        raise ConfigError(
            f"{mapping_file}: no mapping for " + ", ".join(f"[{t}.{chosen[t]}]" for t in missing)
        )
    rules = SyncRules(ownership, mappings)
    if targets_file is None:
        return rules
    return SyncRules(ownership, mappings, _ingest_policy(rules, chosen, targets_file))


def _ingest_policy(rules: SyncRules, chosen: dict[str, str], targets_file: Path) -> IngestPolicy:
    """Each chosen vendor's published limits over the mapping used for its target. A property
    the vendor requires must be written by that mapping, or the target could take no one."""
    published = load_vendors(targets_file)
    targets = []
    for target, mapping in rules.mappings.items():
        vendor = chosen[target]
        if vendor not in published:
            raise ConfigError(f"{targets_file}: no [{vendor}] table for {target}")
        limits = TargetLimits(
            target=target,
            vendor=vendor,
            mapping=mapping,
            fields=rules.synced_fields(target),
            properties=published[vendor].properties,
            text_max_length=published[vendor].text_max_length,
        )
        required = {p for p, limit in limits.properties.items() if limit.required}
        unwritten = sorted(p for p in required if not set(limits.sources_of(p)) & limits.fields)
        if unwritten:
            raise ConfigError(
                f"{targets_file}: [{vendor}] requires {', '.join(unwritten)}, which no field"
                f" synced to {target} is mapped to ([{target}.{vendor}] in the mapping)"
            )
        targets.append(limits)
    return IngestPolicy(tuple(targets))
