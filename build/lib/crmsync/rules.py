"""Load and cross-check the ownership matrix and the target mappings at start-up."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from crmsync.domain.mapping import TargetMapping
from crmsync.domain.ownership import TARGETS, OwnershipMatrix
from crmsync.errors import ConfigError

__all__ = ["SyncRules", "load_rules"]


@dataclass(frozen=True)
class SyncRules:
    ownership: OwnershipMatrix
    mappings: dict[str, TargetMapping]

    def synced_fields(self, target: str) -> frozenset[str]:
        """Fields that flow to `target` and that its mapping knows how to write."""
        mapping = self.mappings.get(target)
        if mapping is None:
            return frozenset()
        return self.ownership.fields_flowing_to(target) & frozenset(mapping.fields)


def _read(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_rules(ownership_file: Path, mapping_file: Path) -> SyncRules:
    try:
        ownership = OwnershipMatrix.model_validate(_read(ownership_file))
    except ValidationError as exc:
        raise ConfigError(f"{ownership_file}: {exc}") from exc
    raw_mappings = _read(mapping_file)
    unknown = sorted(set(raw_mappings) - set(TARGETS))
    if unknown:
        raise ConfigError(f"{mapping_file}: unknown targets {', '.join(unknown)}")
    try:
        mappings = {t: TargetMapping.model_validate(m) for t, m in raw_mappings.items()}
    except ValidationError as exc:
        raise ConfigError(f"{mapping_file}: {exc}") from exc
    for target, mapping in mappings.items():
        unowned = sorted(set(mapping.fields) - set(ownership.fields))
        if unowned:
            raise ConfigError(
                f"{mapping_file}: [{target}] maps fields with no ownership rule: "
                + ", ".join(unowned)
            )
    return SyncRules(ownership, mappings)
