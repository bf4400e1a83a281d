"""The vendor client for a target, from settings: the one place that knows which class
speaks to which vendor."""

from __future__ import annotations

from adapters.target import TargetClient
from crmsync.settings import Settings
from crmsync.targets import TargetPlan

__all__ = ["make_client"]


def make_client(settings: Settings, target: str, plan: TargetPlan) -> TargetClient:
    url = settings.target_url(target)
    token = getattr(settings, f"{target}_token").get_secret_value()
    if plan.vendor == "hubspot":
        from adapters.hubspot import HubSpotClient

        return HubSpotClient(url, token)
    if plan.vendor == "salesforce":
        from adapters.salesforce import SalesforceClient

        return SalesforceClient(url, token)
    if plan.vendor == "stripe":
        from adapters.stripe import StripeClient

        return StripeClient(url, token)
    if plan.vendor == "zendesk":
        from adapters.zendesk import ZendeskClient

        return ZendeskClient(url, settings.support_email, token)
    raise ValueError(f"no client for vendor {plan.vendor!r}")
