"""The webhook verifiers and body readers (adapters.webhooks): valid, forged, tampered, stale,
missing headers; and the emulators' own signers verify, which closes the loop between what
the emulators send and what the receiver accepts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from adapters.webhooks import (
    PARSERS,
    UnreadableBody,
    WebhookRejected,
    hubspot_events,
    hubspot_signed_uri,
    stripe_events,
    verify_hubspot,
    verify_stripe,
    verify_zendesk,
    zendesk_events,
)
from emulators import hubspot as hubspot_emulator
from emulators import stripe as stripe_emulator
from emulators import zendesk as zendesk_emulator

SECRET = "s3cret-for-tests"
URL = "http://127.0.0.1:19201/webhooks/hubspot"
NOW = 1_760_000_000.0
TOLERANCE = 300.0

HUBSPOT_BODY = orjson.dumps(
    [{"eventId": 11, "subscriptionType": "contact.propertyChange", "objectId": 1001,
      "occurredAt": 1_760_000_000_000, "propertyName": "email", "propertyValue": "a@b.co"},
     {"eventId": 12, "subscriptionType": "company.creation", "objectId": 5000001,
      "occurredAt": 1_760_000_000_000}]
)  # fmt: skip
STRIPE_BODY = orjson.dumps(
    {"id": "evt_1", "object": "event", "type": "customer.updated", "created": 1_760_000_000,
     "data": {"object": {"id": "cus_1", "object": "customer", "email": "a@b.co"}}}
)  # fmt: skip
ZENDESK_BODY = orjson.dumps(
    {"type": "zen:event-type:user.name_changed", "id": "0b1c-uuid", "time": "2025-10-09T08:53:20Z",
     "detail": {"id": "1500000000001", "email": "a@b.co"}, "event": {"current": "Ada"}}
)  # fmt: skip


def hubspot_headers(body: bytes, *, url: str = URL, at: float = NOW, secret: str = SECRET):
    timestamp = str(int(at * 1000))
    digest = hmac.new(
        secret.encode(), b"POST" + url.encode() + body + timestamp.encode(), hashlib.sha256
    ).digest()
    return {
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": timestamp,
    }


def stripe_headers(body: bytes, *, at: float = NOW, secret: str = SECRET) -> dict[str, str]:
    t = int(at)
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={digest}"}


def zendesk_headers(body: bytes, *, at: float = NOW, secret: str = SECRET) -> dict[str, str]:
    timestamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return {
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }


CASES: dict[str, tuple[Any, Any, bytes]] = {
    "hubspot": (verify_hubspot, hubspot_headers, HUBSPOT_BODY),
    "stripe": (verify_stripe, stripe_headers, STRIPE_BODY),
    "zendesk": (verify_zendesk, zendesk_headers, ZENDESK_BODY),
}


def verify(vendor: str, headers: dict[str, str], body: bytes, *, now: float = NOW, **kw: Any):
    verifier = CASES[vendor][0]
    return verifier(headers, body, kw.get("secret", SECRET), url=kw.get("url", URL), now=now,
                    tolerance=TOLERANCE)  # fmt: skip


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_a_correctly_signed_delivery_verifies(vendor: str) -> None:
    _, sign, body = CASES[vendor]
    headers = sign(body)
    verified = verify(vendor, headers, body)
    assert verified.signature in " ".join(headers.values())
    assert abs(verified.signed_at.timestamp() - NOW) < 1


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_a_signature_made_with_another_secret_is_forged(vendor: str) -> None:
    _, sign, body = CASES[vendor]
    with pytest.raises(WebhookRejected) as refused:
        verify(vendor, sign(body, secret="not-the-secret"), body)
    assert (refused.value.status, refused.value.reason) == (401, "bad_signature")


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_a_tampered_body_fails(vendor: str) -> None:
    _, sign, body = CASES[vendor]
    headers = sign(body)
    tampered = body.replace(b"a@b.co", b"evil@b.co")
    with pytest.raises(WebhookRejected) as refused:
        verify(vendor, headers, tampered)
    assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize("vendor", sorted(CASES))
@pytest.mark.parametrize("offset", [-TOLERANCE - 5, TOLERANCE + 5])
def test_a_delivery_signed_outside_the_tolerance_is_stale(vendor: str, offset: float) -> None:
    _, sign, body = CASES[vendor]
    with pytest.raises(WebhookRejected) as refused:
        verify(vendor, sign(body, at=NOW + offset), body)
    assert (refused.value.status, refused.value.reason) == (401, "stale")


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_a_delivery_signed_within_the_tolerance_is_fresh(vendor: str) -> None:
    _, sign, body = CASES[vendor]
    verify(vendor, sign(body, at=NOW - TOLERANCE + 5), body)


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_missing_headers_are_refused(vendor: str) -> None:
    _, sign, body = CASES[vendor]
    headers = sign(body)
    for name in headers:
        partial = {k: v for k, v in headers.items() if k != name}
        with pytest.raises(WebhookRejected) as refused:
            verify(vendor, partial, body)
        assert refused.value.status == 401
        assert refused.value.reason in ("missing_signature", "bad_signature")
    with pytest.raises(WebhookRejected) as refused:
        verify(vendor, {}, body)
    assert refused.value.reason == "missing_signature"


@pytest.mark.parametrize("vendor", sorted(CASES))
def test_headers_are_matched_without_case(vendor: str) -> None:
    _, sign, body = CASES[vendor]
    verify(vendor, {k.lower(): v for k, v in sign(body).items()}, body)


def test_hubspot_signs_the_url_it_called() -> None:
    headers = hubspot_headers(HUBSPOT_BODY)
    with pytest.raises(WebhookRejected):
        verify("hubspot", headers, HUBSPOT_BODY, url=URL.replace("127.0.0.1", "localhost"))
    with pytest.raises(WebhookRejected):
        verify("hubspot", headers, HUBSPOT_BODY, url=URL + "?x=1")


def test_hubspot_decodes_the_listed_escapes_before_signing() -> None:
    called = "https://example.com/webhooks/hubspot?next=%2Fa%3Ab%40c&q=%20"
    assert hubspot_signed_uri(called) == "https://example.com/webhooks/hubspot?next=/a:b@c&q=%20"
    headers = hubspot_headers(HUBSPOT_BODY, url=hubspot_signed_uri(called))
    verify("hubspot", headers, HUBSPOT_BODY, url=called)


def test_stripe_accepts_any_of_several_v1_signatures_and_names_the_matching_one() -> None:
    good = stripe_headers(STRIPE_BODY)["Stripe-Signature"]
    t, v1 = good.split(",")
    other = "v1=" + "0" * 64
    verified = verify("stripe", {"Stripe-Signature": f"{t},{other},{v1},v0=abc"}, STRIPE_BODY)
    assert verified.signature == v1.removeprefix("v1=")


@pytest.mark.parametrize(
    "header", ["t=abc,v1=00", "v1=" + "0" * 64, f"t={int(NOW)}", f"t={int(NOW)},v0=00", "garbage"]
)
def test_stripe_refuses_malformed_signature_headers(header: str) -> None:
    with pytest.raises(WebhookRejected) as refused:
        verify("stripe", {"Stripe-Signature": header}, STRIPE_BODY)
    assert refused.value.reason == "bad_signature"


# ---- the emulators' signers --------------------------------------------------------------------


def test_the_hubspot_emulators_signature_verifies() -> None:
    headers = hubspot_emulator.sign_webhook(HUBSPOT_BODY, URL, SECRET)
    verify("hubspot", headers, HUBSPOT_BODY, now=time.time())


def test_the_stripe_emulators_signature_verifies() -> None:
    headers = {"Stripe-Signature": stripe_emulator.sign_payload(STRIPE_BODY, SECRET)}
    verify("stripe", headers, STRIPE_BODY, now=time.time())


def test_the_zendesk_emulators_signature_verifies() -> None:
    headers = zendesk_emulator.sign_webhook(ZENDESK_BODY, URL, SECRET)
    verify("zendesk", headers, ZENDESK_BODY, now=time.time())


# ---- bodies -----------------------------------------------------------------------------------


def test_hubspot_events_name_contacts_only() -> None:
    contact, company = hubspot_events(HUBSPOT_BODY)
    assert (contact.event_id, contact.event_type, contact.object_id) == (
        "11", "contact.propertyChange", "1001",
    )  # fmt: skip
    assert (company.event_id, company.object_id) == ("12", None)
    assert contact.payload["propertyName"] == "email"


def test_a_stripe_customer_event_names_its_customer() -> None:
    (event,) = stripe_events(STRIPE_BODY)
    assert (event.event_id, event.event_type, event.object_id) == (
        "evt_1", "customer.updated", "cus_1",
    )  # fmt: skip
    other = orjson.dumps({"id": "evt_2", "type": "invoice.paid", "data": {"object": {}}})
    assert stripe_events(other)[0].object_id is None


def test_a_zendesk_user_event_names_its_user() -> None:
    (event,) = zendesk_events(ZENDESK_BODY)
    assert (event.event_id, event.object_id) == ("0b1c-uuid", "1500000000001")
    organization = orjson.dumps({"id": "x", "type": "zen:event-type:organization.created"})
    assert zendesk_events(organization)[0].object_id is None


@pytest.mark.parametrize("vendor", sorted(PARSERS))
@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b"{}", b"[1]", b'{"id": 1}', b'[{"eventId": 1}]']
)
def test_bodies_that_are_not_the_vendors_events_are_unreadable(vendor: str, body: bytes) -> None:
    with pytest.raises(UnreadableBody):
        PARSERS[vendor](body)


def test_a_customer_event_without_its_customer_is_unreadable() -> None:
    body = orjson.dumps({"id": "evt_3", "type": "customer.created", "created": 1, "data": {}})
    with pytest.raises(UnreadableBody):
        stripe_events(body)
