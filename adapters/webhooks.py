"""The vendors' webhook deliveries as pure functions: prove a delivery came from the vendor
(HMAC-SHA256 signature and timestamp), then read the events it carries. No I/O here;
adapters.inbound serves these over HTTP and stores what they accept.

Every verifier takes the request's headers, its raw body, the shared secret, the URL the
vendor called (only HubSpot signs it), the current time and the tolerance in seconds, and
returns the `Verified` delivery or raises:

    WebhookRejected(reason, status)    the answer to send
    ├── 401 missing_signature          a signature or timestamp header is absent
    ├── 401 bad_signature              the signature does not match (forged or tampered)
    └── 401 stale                      signed correctly, but outside ±tolerance of now
    UnreadableBody                     signed correctly, but not the vendor's event JSON: 400

Signatures are compared with `hmac.compare_digest`. The signature value that matched is the
delivery's identity for replay detection: a vendor's genuine retry is signed again with a new
timestamp, so the same value twice is always a replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

__all__ = [
    "PARSERS",
    "VERIFIERS",
    "InboundEvent",
    "UnreadableBody",
    "Verified",
    "WebhookRejected",
    "hubspot_events",
    "hubspot_signed_uri",
    "stripe_event",
    "stripe_events",
    "verify_hubspot",
    "verify_stripe",
    "verify_zendesk",
    "zendesk_events",
]

#: The Stripe event types that carry a customer object (others are acknowledged and ignored).
STRIPE_CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})
ZENDESK_USER_EVENT = "zen:event-type:user."


class WebhookRejected(Exception):
    """Raised when a delivery fails verification; `status` is the HTTP answer to send and
    `reason` (missing_signature, bad_signature, stale) names it in logs and metrics."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class UnreadableBody(Exception):
    """Raised when a correctly signed body is not the vendor's event JSON: answered 400 (a
    vendor retry would send the same bytes, so there is nothing to wait for)."""


@dataclass(frozen=True)
class Verified:
    """A delivery whose signature matched: the matching value, and when the vendor signed it."""

    signature: str
    signed_at: datetime


@dataclass(frozen=True)
class InboundEvent:
    """One event of a delivery, as the inbox stores it."""

    event_id: str
    event_type: str
    #: The external record it concerns (HubSpot contact id, Stripe customer id, Zendesk user
    #: id); None for events about records crmsync does not mirror.
    object_id: str | None
    payload: dict[str, Any]


class Verifier(Protocol):
    def __call__(
        self,
        headers: Mapping[str, str],
        body: bytes,
        secret: str,
        *,
        url: str,
        now: float,
        tolerance: float,
    ) -> Verified: ...


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, without case (aiohttp's headers already are; plain dicts are not)."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode(), message, hashlib.sha256).digest()


def _fresh(read_time: Callable[[], datetime], now: float, tolerance: float) -> datetime:
    """When the delivery was signed (an unreadable time is a bad signature); refused as
    stale when that is further than `tolerance` seconds from now, either way."""
    try:
        signed_at = read_time()
    except (ValueError, OverflowError, OSError):
        raise WebhookRejected("bad_signature") from None
    if signed_at.tzinfo is None:
        signed_at = signed_at.replace(tzinfo=UTC)
    if abs(now - signed_at.timestamp()) > tolerance:
        raise WebhookRejected("stale")
    return signed_at


# --------------------------------------------------------------------------------------------
# HubSpot: X-HubSpot-Signature-v3 over method, URI, body and a millisecond timestamp
# --------------------------------------------------------------------------------------------

#: HubSpot decodes these percent-escapes in the URI before signing it (its validation guide).
_HUBSPOT_DECODED = {
    "%3A": ":", "%2F": "/", "%3F": "?", "%40": "@", "%21": "!", "%24": "$", "%27": "'",
    "%28": "(", "%29": ")", "%2A": "*", "%2C": ",", "%3B": ";",
}  # fmt: skip
_HUBSPOT_ESCAPE = re.compile("|".join(_HUBSPOT_DECODED), re.IGNORECASE)


def hubspot_signed_uri(url: str) -> str:
    """The request URI as HubSpot signs it: the full URL with the listed escapes decoded."""
    return _HUBSPOT_ESCAPE.sub(lambda m: _HUBSPOT_DECODED[m.group(0).upper()], url)


def verify_hubspot(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    url: str,
    now: float,
    tolerance: float,
) -> Verified:
    """`url` is the URL HubSpot called: scheme, host as sent, path and query string."""
    signature = _header(headers, "X-HubSpot-Signature-v3")
    timestamp = _header(headers, "X-HubSpot-Request-Timestamp")
    if not signature or not timestamp:
        raise WebhookRejected("missing_signature")
    message = b"POST" + hubspot_signed_uri(url).encode() + body + timestamp.encode()
    expected = base64.b64encode(_hmac_sha256(secret, message)).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRejected("bad_signature")
    signed_at = _fresh(lambda: datetime.fromtimestamp(int(timestamp) / 1000, UTC), now, tolerance)
    return Verified(signature, signed_at)


# --------------------------------------------------------------------------------------------
# Stripe: Stripe-Signature: t=<unix>,v1=<hex HMAC of "t.body">[,v1=...]
# --------------------------------------------------------------------------------------------


def verify_stripe(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    url: str = "",
    now: float,
    tolerance: float,
) -> Verified:
    """Any of the header's v1 signatures may match (Stripe sends one per active secret while
    a secret is being rolled)."""
    header = _header(headers, "Stripe-Signature")
    if not header:
        raise WebhookRejected("missing_signature")
    timestamp, signatures = None, []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookRejected("bad_signature")
    expected = _hmac_sha256(secret, timestamp.encode() + b"." + body).hex()
    matched = next(
        (s for s in signatures if hmac.compare_digest(expected.encode(), s.encode())), None
    )
    if matched is None:
        raise WebhookRejected("bad_signature")
    signed_at = _fresh(lambda: datetime.fromtimestamp(int(timestamp), UTC), now, tolerance)
    return Verified(matched, signed_at)


# --------------------------------------------------------------------------------------------
# Zendesk: X-Zendesk-Webhook-Signature = base64(HMAC(secret, timestamp + body))
# --------------------------------------------------------------------------------------------


def verify_zendesk(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    url: str = "",
    now: float,
    tolerance: float,
) -> Verified:
    signature = _header(headers, "X-Zendesk-Webhook-Signature")
    timestamp = _header(headers, "X-Zendesk-Webhook-Signature-Timestamp")
    if not signature or not timestamp:
        raise WebhookRejected("missing_signature")
    expected = base64.b64encode(_hmac_sha256(secret, timestamp.encode() + body)).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRejected("bad_signature")
    signed_at = _fresh(lambda: datetime.fromisoformat(timestamp), now, tolerance)
    return Verified(signature, signed_at)


# --------------------------------------------------------------------------------------------
# Bodies
# --------------------------------------------------------------------------------------------


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UnreadableBody(f"not JSON: {exc}") from None


def hubspot_events(body: bytes) -> list[InboundEvent]:
    """HubSpot's JSON array of up to 100 events; contact events name the contact
    (`objectId`)."""
    document = _json(body)
    if not isinstance(document, list) or not document:
        raise UnreadableBody("expected a non-empty JSON array of events")
    events = []
    for item in document:
        if not isinstance(item, dict):
            raise UnreadableBody("an event is not a JSON object")
        event_id, kind, object_id = (
            item.get("eventId"), item.get("subscriptionType"), item.get("objectId"),
        )  # fmt: skip
        if not isinstance(event_id, int | str) or not isinstance(kind, str):
            raise UnreadableBody("an event has no eventId or subscriptionType")
        # Events without one object (association changes name two) are acknowledged, unused.
        names_one = isinstance(object_id, int | str) and not isinstance(object_id, bool)
        concerns = str(object_id) if names_one and kind.startswith("contact.") else None
        events.append(InboundEvent(str(event_id), kind, concerns, item))
    return events


def stripe_event(document: Any) -> InboundEvent:
    """One Stripe event (a webhook body, or an item of `GET /v1/events`)."""
    if not isinstance(document, dict):
        raise UnreadableBody("expected a Stripe event object")
    event_id, kind, data = document.get("id"), document.get("type"), document.get("data")
    if not isinstance(event_id, str) or not isinstance(kind, str) or not isinstance(data, dict):
        raise UnreadableBody("a Stripe event needs id, type and data")
    if kind not in STRIPE_CUSTOMER_EVENTS:
        return InboundEvent(event_id, kind, None, document)
    customer = data.get("object")
    if not isinstance(customer, dict) or not isinstance(customer.get("id"), str):
        raise UnreadableBody(f"{kind} event {event_id} carries no customer")
    if not isinstance(document.get("created"), int):
        raise UnreadableBody(f"event {event_id} has no created time")
    return InboundEvent(event_id, kind, customer["id"], document)


def stripe_events(body: bytes) -> list[InboundEvent]:
    return [stripe_event(_json(body))]


def zendesk_events(body: bytes) -> list[InboundEvent]:
    """One Zendesk event-subscribed webhook; user events name the user (`detail.id`)."""
    document = _json(body)
    if not isinstance(document, dict):
        raise UnreadableBody("expected a Zendesk event object")
    event_id, kind = document.get("id"), document.get("type")
    if not isinstance(event_id, str) or not isinstance(kind, str):
        raise UnreadableBody("a Zendesk event needs id and type")
    if not kind.startswith(ZENDESK_USER_EVENT):
        return [InboundEvent(event_id, kind, None, document)]
    detail = document.get("detail")
    user_id = detail.get("id") if isinstance(detail, dict) else None
    if not isinstance(user_id, int | str) or not str(user_id).isdigit():
        raise UnreadableBody(f"{kind} event {event_id} names no user")
    return [InboundEvent(event_id, kind, str(user_id), document)]


VERIFIERS: dict[str, Verifier] = {
    "hubspot": verify_hubspot,
    "stripe": verify_stripe,
    "zendesk": verify_zendesk,
}
PARSERS: dict[str, Callable[[bytes], list[InboundEvent]]] = {
    "hubspot": hubspot_events,
    "stripe": stripe_events,
    "zendesk": zendesk_events,
}
