"""One settings object per process, read once from the environment at the entry point.

Every variable is prefixed `CRMSYNC_`; unknown `CRMSYNC_*` variables fail loudly so that a typo
never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PROJECT_ROOT", "Settings", "load_settings"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "CRMSYNC_"


class Settings(BaseSettings):
    """Where every component lives and how it is tuned."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Set these to use an existing database / Kafka; left empty, `crmsync up` runs its own.
    database_url: SecretStr | None = None
    kafka_bootstrap: str | None = None

    state_dir: Path = PROJECT_ROOT / ".crmsync"
    pg_port: int = 55432
    broker_port: int = 19092
    partitions: int = Field(default=4, ge=1, le=64)
    topic_prefix: str = "crmsync"
    # Above this resident size the embedded broker is rebased (topics recreated, rows
    # re-snapshotted from Postgres).
    broker_memory_limit_mb: int = 2048

    # The targets. Left without a base URL, `crmsync up` runs each vendor's local emulator.
    # A plan (config/targets.toml) sets each target's quota; `*_requests_per_window` and
    # `*_window_seconds` override it (e.g. for an account with a raised limit).
    crm_vendor: Literal["hubspot", "salesforce"] = "hubspot"
    crm_base_url: str | None = None
    crm_token: SecretStr = SecretStr("local-dev-token")
    crm_plan: str | None = None
    crm_requests_per_window: int | None = None
    crm_window_seconds: float | None = None
    emulator_port: int = 18080
    billing_base_url: str | None = None
    billing_token: SecretStr = SecretStr("sk_test_crmsync_local")
    billing_plan: str | None = None
    billing_requests_per_window: int | None = None
    billing_window_seconds: float | None = None
    billing_emulator_port: int = 18081
    support_base_url: str | None = None
    support_email: str = "crmsync@example.com"
    support_token: SecretStr = SecretStr("local-dev-token")
    support_plan: str | None = None
    support_requests_per_window: int | None = None
    support_window_seconds: float | None = None
    support_emulator_port: int = 18082
    # A write that keeps failing transiently (target down, 5xx) is retried with backoff, behind
    # the circuit breaker, for this long before it is dead-lettered for `crmsync dlq replay`.
    retry_give_up_seconds: float = Field(default=600.0, gt=0)

    # The inbound side (in each adapter process): a webhook receiver per target on loopback
    # (put a TLS proxy in front for real vendors), and incremental polling as its backstop.
    crm_webhook_port: int = 19201
    billing_webhook_port: int = 19202
    support_webhook_port: int = 19203
    # Each vendor's webhook signing secret (HubSpot: the app's client secret; Stripe: the
    # endpoint's `whsec_...`; Zendesk: the webhook's signing secret). Never logged.
    crm_webhook_secret: SecretStr = SecretStr("local-dev-webhook-secret")
    billing_webhook_secret: SecretStr = SecretStr("whsec_crmsync_local_dev")
    support_webhook_secret: SecretStr = SecretStr("local-dev-webhook-secret")
    # A delivery signed further than this from now is refused as stale (and replays are
    # remembered only this long).
    webhook_tolerance_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=30.0, gt=0)
    # Identity resolution (crmsync.domain.identity): a match at or above `identity_auto_link`
    # links a record (or merges a canonical duplicate); one in [identity_review, auto_link)
    # goes to the review queue; below, the record is a new customer.
    identity_auto_link: float = Field(default=0.95, gt=0, le=1)
    identity_review: float = Field(default=0.6, gt=0, le=1)

    ownership_file: Path = PROJECT_ROOT / "config" / "ownership.toml"
    mapping_file: Path = PROJECT_ROOT / "config" / "mapping.toml"
    connector_file: Path = PROJECT_ROOT / "connect" / "crmsync-postgres.json"

    capture_poll_interval_ms: int = 50
    # Each process serves Prometheus metrics on loopback; `crmsync status` reads them.
    capture_metrics_port: int = 19101
    streams_metrics_port: int = 19102
    adapter_metrics_port: int = 19103  # the crm adapter's
    billing_adapter_metrics_port: int = 19104
    support_adapter_metrics_port: int = 19105
    log_level: str = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_env(cls, values: dict[str, object]) -> dict[str, object]:
        # Case-insensitive, as pydantic-settings reads them: `crmsync_partitons` is a typo too.
        known = {ENV_PREFIX + name.upper() for name in cls.model_fields}
        unknown = sorted(
            k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
        )
        if unknown:
            raise ValueError(f"unknown settings in the environment: {', '.join(unknown)}")
        return values

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def dsn(self) -> str:
        """The libpq connection string (contains the password: never log it)."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"postgresql://crmsync@127.0.0.1:{self.pg_port}/crmsync"

    @property
    def dsn_redacted(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(self.dsn)
        user = quote(str(parts.get("user", "")))
        secret = ":***" if parts.get("password") else ""
        host, port, db = parts.get("host", ""), parts.get("port", "5432"), parts.get("dbname", "")
        return f"postgresql://{user}{secret}@{host}:{port}/{db}"

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    def vendor(self, target: str) -> str:
        return {"crm": self.crm_vendor, "billing": "stripe", "support": "zendesk"}[target]

    def target_url(self, target: str) -> str:
        base: str | None = getattr(self, f"{target}_base_url")
        return base or f"http://127.0.0.1:{self.emulator_port_of(target)}"

    def emulated(self, target: str) -> bool:
        return getattr(self, f"{target}_base_url") is None

    def emulator_port_of(self, target: str) -> int:
        return {
            "crm": self.emulator_port,
            "billing": self.billing_emulator_port,
            "support": self.support_emulator_port,
        }[target]

    def adapter_metrics_port_of(self, target: str) -> int:
        return {
            "crm": self.adapter_metrics_port,
            "billing": self.billing_adapter_metrics_port,
            "support": self.support_adapter_metrics_port,
        }[target]

    def webhook_port_of(self, target: str) -> int:
        port: int = getattr(self, f"{target}_webhook_port")
        return port

    def webhook_secret_of(self, target: str) -> SecretStr:
        secret: SecretStr = getattr(self, f"{target}_webhook_secret")
        return secret

    def webhook_url_of(self, target: str) -> str:
        """Where the target's receiver listens (what an emulator is subscribed to)."""
        return f"http://127.0.0.1:{self.webhook_port_of(target)}/webhooks/{self.vendor(target)}"

    @property
    def crm_url(self) -> str:
        return self.target_url("crm")


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
