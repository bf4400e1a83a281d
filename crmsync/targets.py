"""Each target's vendor (config/targets.toml): its plan's quota, batch limit and concurrency,
and the published limits on the properties crmsync writes (checked at ingest, see
crmsync.domain.limits)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crmsync.domain.limits import PropertyLimit
from crmsync.errors import ConfigError
from crmsync.settings import PROJECT_ROOT, Settings

__all__ = ["TARGETS_FILE", "TargetPlan", "Vendor", "load_plan", "load_vendors"]

TARGETS_FILE = PROJECT_ROOT / "config" / "targets.toml"
DAY = 86_400.0


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int | None = Field(default=None, gt=0)
    window_seconds: float | None = Field(default=None, gt=0)
    daily: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _window_with_requests(self) -> Limits:
        if (self.requests is None) != (self.window_seconds is None):
            raise ValueError("requests and window_seconds go together")
        return self


class Vendor(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    default_plan: str
    max_batch: int = Field(gt=0)
    concurrency: int = Field(gt=0)
    plans: dict[str, Limits]
    #: The longest value any text property takes, unless `properties` names it.
    text_max_length: int | None = Field(default=None, gt=0)
    #: Published limits per property (the vendor's property names, dotted when nested).
    properties: dict[str, PropertyLimit] = {}

    @model_validator(mode="after")
    def _default_exists(self) -> Vendor:
        if self.default_plan not in self.plans:
            raise ValueError(f"default_plan {self.default_plan!r} is not among the plans")
        return self


class TargetPlan(BaseModel):
    """What one target's adapter (and its emulator) works with."""

    model_config = ConfigDict(frozen=True)

    target: str
    vendor: str
    plan: str
    limits: Limits
    max_batch: int
    concurrency: int


def _default_plan(settings: Settings, target: str, vendor: Vendor) -> str:
    if target == "billing" and settings.billing_token.get_secret_value().startswith("sk_live_"):
        return "live"  # Stripe's limits follow the key's mode
    return vendor.default_plan


def load_vendors(path: Path = TARGETS_FILE) -> dict[str, Vendor]:
    """Every vendor in the file, validated (unknown keys are refused)."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    vendors = {}
    for name, table in document.items():
        try:
            vendors[name] = Vendor.model_validate(table)
        except ValidationError as exc:
            raise ConfigError(f"{path}: [{name}]: {exc}") from exc
    return vendors


def load_plan(settings: Settings, target: str, path: Path = TARGETS_FILE) -> TargetPlan:
    vendor_name = settings.vendor(target)
    try:
        document = tomllib.loads(path.read_text())
        vendor = Vendor.model_validate(document[vendor_name])
    except (OSError, tomllib.TOMLDecodeError, KeyError, ValidationError) as exc:
        raise ConfigError(f"{path}: [{vendor_name}]: {exc}") from exc
    plan = getattr(settings, f"{target}_plan") or _default_plan(settings, target, vendor)
    if plan not in vendor.plans:
        known = ", ".join(sorted(vendor.plans))
        raise ConfigError(f"{target}: {vendor_name} has no plan {plan!r} (known: {known})")
    limits = vendor.plans[plan]
    requests = getattr(settings, f"{target}_requests_per_window")
    window = getattr(settings, f"{target}_window_seconds")
    if requests is not None or window is not None:
        if (requests or limits.requests) is None or (window or limits.window_seconds) is None:
            raise ConfigError(
                f"{target}: the {plan} plan has no per-window limit; set both"
                f" CRMSYNC_{target.upper()}_REQUESTS_PER_WINDOW and _WINDOW_SECONDS"
            )
        try:
            limits = Limits.model_validate(
                {
                    **limits.model_dump(),
                    "requests": requests if requests is not None else limits.requests,
                    "window_seconds": window if window is not None else limits.window_seconds,
                }
            )
        except ValidationError as exc:
            raise ConfigError(f"{target}: quota override: {exc}") from exc
    return TargetPlan(
        target=target,
        vendor=vendor_name,
        plan=plan,
        limits=limits,
        max_batch=vendor.max_batch,
        concurrency=vendor.concurrency,
    )
