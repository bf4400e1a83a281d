"""load_plan: each target's vendor plan from config/targets.toml, picked and overridden by the
settings (Stripe's plan follows the key's mode)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crmsync.errors import ConfigError
from crmsync.settings import ENV_PREFIX, Settings
from crmsync.targets import DAY, TARGETS_FILE, load_plan


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]


def test_the_shipped_file_is_the_default() -> None:
    assert TARGETS_FILE.name == "targets.toml"
    assert TARGETS_FILE.parent.name == "config"
    assert TARGETS_FILE.is_file()
    assert DAY == 86_400


# --- defaults per vendor ----------------------------------------------------------------------


def test_crm_defaults_to_hubspot_free() -> None:
    plan = load_plan(settings(), "crm")
    assert (plan.target, plan.vendor, plan.plan) == ("crm", "hubspot", "free")
    assert (plan.limits.requests, plan.limits.window_seconds) == (100, 10)
    assert plan.limits.daily == 250_000
    assert (plan.max_batch, plan.concurrency) == (100, 2)


def test_billing_is_stripe_in_test_mode_by_default() -> None:
    plan = load_plan(settings(), "billing")
    assert (plan.target, plan.vendor, plan.plan) == ("billing", "stripe", "test")
    assert (plan.limits.requests, plan.limits.window_seconds) == (25, 1)
    assert plan.limits.daily is None
    assert (plan.max_batch, plan.concurrency) == (1, 16)  # no batch API: parallel requests


def test_support_defaults_to_zendesk_team() -> None:
    plan = load_plan(settings(), "support")
    assert (plan.target, plan.vendor, plan.plan) == ("support", "zendesk", "team")
    assert (plan.limits.requests, plan.limits.window_seconds) == (200, 60)
    assert plan.limits.daily is None
    assert (plan.max_batch, plan.concurrency) == (100, 2)


def test_salesforce_selected_has_only_a_daily_allowance() -> None:
    plan = load_plan(settings(crm_vendor="salesforce"), "crm")
    assert (plan.target, plan.vendor, plan.plan) == ("crm", "salesforce", "developer")
    assert plan.limits.requests is None
    assert plan.limits.window_seconds is None
    assert plan.limits.daily == 15_000
    assert (plan.max_batch, plan.concurrency) == (200, 2)


def test_the_crm_vendor_does_not_change_the_other_targets() -> None:
    s = settings(crm_vendor="salesforce")
    assert load_plan(s, "billing").vendor == "stripe"
    assert load_plan(s, "support").vendor == "zendesk"


# --- choosing a plan --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "target", "plan", "requests", "window", "daily"),
    [
        ({"crm_plan": "professional"}, "crm", "professional", 190, 10, 650_000),
        ({"crm_plan": "enterprise"}, "crm", "enterprise", 190, 10, 1_000_000),
        (
            {"crm_vendor": "salesforce", "crm_plan": "enterprise"},
            "crm",
            "enterprise",
            None,
            None,
            100_000,
        ),
        ({"support_plan": "enterprise_plus"}, "support", "enterprise_plus", 2500, 60, None),
        ({"billing_plan": "live"}, "billing", "live", 100, 1, None),
    ],
)
def test_a_named_plan_is_used(
    overrides: dict[str, object],
    target: str,
    plan: str,
    requests: int | None,
    window: float | None,
    daily: int | None,
) -> None:
    loaded = load_plan(settings(**overrides), target)
    assert loaded.plan == plan
    assert (loaded.limits.requests, loaded.limits.window_seconds) == (requests, window)
    assert loaded.limits.daily == daily


def test_an_unknown_plan_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_plan(settings(crm_plan="platinum"), "crm")
    message = str(info.value)
    assert "'platinum'" in message
    assert "hubspot" in message
    assert "known: enterprise, free, professional, starter" in message


def test_a_plan_of_another_vendor_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"salesforce has no plan 'free' \(known: developer, "):
        load_plan(settings(crm_vendor="salesforce", crm_plan="free"), "crm")


def test_an_unknown_stripe_plan_names_test_and_live() -> None:
    with pytest.raises(ConfigError, match=r"known: live, test"):
        load_plan(settings(billing_plan="sandbox"), "billing")


# --- Stripe follows the key's mode ------------------------------------------------------------


def test_a_stripe_live_key_selects_the_live_plan() -> None:
    plan = load_plan(settings(billing_token="sk_live_51HxYz"), "billing")
    assert plan.plan == "live"
    assert (plan.limits.requests, plan.limits.window_seconds) == (100, 1)


@pytest.mark.parametrize("token", ["sk_test_51HxYz", "crmsync-local", "xsk_live_1"])
def test_any_other_stripe_key_selects_the_test_plan(token: str) -> None:
    assert load_plan(settings(billing_token=token), "billing").plan == "test"


def test_an_explicit_billing_plan_wins_over_the_key() -> None:
    plan = load_plan(settings(billing_token="sk_live_51HxYz", billing_plan="test"), "billing")
    assert plan.plan == "test"
    assert plan.limits.requests == 25


def test_a_live_stripe_key_changes_only_the_billing_plan() -> None:
    s = settings(billing_token="sk_live_51HxYz")
    assert load_plan(s, "crm").plan == "free"
    assert load_plan(s, "support").plan == "team"
    assert load_plan(settings(billing_token="sk_live_1", crm_vendor="salesforce"), "crm").plan == (
        "developer"
    )


def test_a_live_looking_token_of_another_target_changes_nothing() -> None:
    s = settings(crm_token="sk_live_51HxYz", support_token="sk_live_51HxYz")
    assert load_plan(s, "crm").plan == "free"
    assert load_plan(s, "support").plan == "team"
    assert load_plan(s, "billing").plan == "test"


def test_the_key_mode_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_BILLING_TOKEN", "sk_live_51HxYz")
    assert load_plan(Settings(), "billing").plan == "live"


# --- overrides --------------------------------------------------------------------------------


def test_overriding_requests_and_window() -> None:
    plan = load_plan(settings(crm_requests_per_window=500, crm_window_seconds=5.0), "crm")
    assert (plan.limits.requests, plan.limits.window_seconds) == (500, 5.0)
    assert plan.limits.daily == 250_000  # the daily allowance stays the plan's
    assert plan.plan == "free"


def test_overriding_requests_alone_keeps_the_plans_window() -> None:
    plan = load_plan(settings(support_requests_per_window=1000), "support")
    assert (plan.limits.requests, plan.limits.window_seconds) == (1000, 60)


def test_overriding_the_window_alone_keeps_the_plans_requests() -> None:
    plan = load_plan(settings(billing_window_seconds=2.0), "billing")
    assert (plan.limits.requests, plan.limits.window_seconds) == (25, 2.0)


def test_overrides_apply_on_top_of_the_chosen_plan() -> None:
    plan = load_plan(settings(crm_plan="enterprise", crm_window_seconds=1.0), "crm")
    assert (plan.limits.requests, plan.limits.window_seconds) == (190, 1.0)
    assert plan.limits.daily == 1_000_000


def test_an_override_adds_a_window_to_a_daily_only_plan() -> None:
    plan = load_plan(
        settings(crm_vendor="salesforce", crm_requests_per_window=25, crm_window_seconds=20.0),
        "crm",
    )
    assert (plan.limits.requests, plan.limits.window_seconds) == (25, 20.0)
    assert plan.limits.daily == 15_000


def test_overrides_of_one_target_leave_the_others_alone() -> None:
    s = settings(crm_requests_per_window=500, crm_window_seconds=5.0)
    assert load_plan(s, "billing").limits.requests == 25
    assert load_plan(s, "support").limits.window_seconds == 60


def test_overrides_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_SUPPORT_REQUESTS_PER_WINDOW", "700")
    monkeypatch.setenv("CRMSYNC_SUPPORT_WINDOW_SECONDS", "30")
    plan = load_plan(Settings(), "support")
    assert (plan.limits.requests, plan.limits.window_seconds) == (700, 30.0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"crm_requests_per_window": -1},
        {"crm_requests_per_window": 0},
        {"crm_window_seconds": -10.0},
        {"crm_window_seconds": 0.0},
    ],
)
def test_a_non_positive_override_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises((ConfigError, ValueError)):
        load_plan(settings(**overrides), "crm")


# --- the file ---------------------------------------------------------------------------------


def write_targets(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    return path


HUBSPOT_ONLY = """
[hubspot]
default_plan = "basic"
max_batch = 10
concurrency = 1
[hubspot.plans]
basic = { requests = 5, window_seconds = 2 }
"""


def test_another_file_can_be_given(tmp_path: Path) -> None:
    plan = load_plan(settings(), "crm", write_targets(tmp_path, HUBSPOT_ONLY))
    assert (plan.plan, plan.limits.requests, plan.limits.window_seconds) == ("basic", 5, 2)
    assert (plan.max_batch, plan.concurrency) == (10, 1)


def test_a_vendor_missing_from_the_file_is_a_config_error(tmp_path: Path) -> None:
    path = write_targets(tmp_path, HUBSPOT_ONLY)
    with pytest.raises(ConfigError, match=r"\[zendesk\]"):
        load_plan(settings(), "support", path)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_plan(settings(), "crm", tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text",
    [
        "[hubspot\n",  # not TOML
        HUBSPOT_ONLY.replace('default_plan = "basic"', 'default_plan = "gold"'),
        HUBSPOT_ONLY.replace("requests = 5, window_seconds = 2", "requests = 5"),
        HUBSPOT_ONLY.replace("requests = 5", "requests = 0"),
        HUBSPOT_ONLY.replace("max_batch = 10", "max_batch = 10\nbatch = 3"),
    ],
    ids=["syntax", "unknown-default", "requests-without-window", "zero-requests", "unknown-key"],
)
def test_an_invalid_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"targets\.toml"):
        load_plan(settings(), "crm", write_targets(tmp_path, text))
