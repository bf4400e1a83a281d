"""The pure parts of the Stripe emulator and client: form decoding, the search query language,
webhook signatures, key masking, property encoding and the mapping of Stripe's errors."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import stripe

from adapters.stripe import RecordRefused, encode_properties, raise_for_status
from crmsync.errors import PermanentError, RateLimited, TransientError
from emulators.common import DurableStore
from emulators.stripe import (
    Account,
    RequestContext,
    SavedResult,
    StripeEmulatorConfig,
    StripeError,
    _mask,
    _previous_attributes,
    parse_form,
    parse_query,
    sign_payload,
)

CUSTOMER: dict[str, Any] = {
    "email": "Ada@Example.com",
    "name": "Ada Lovelace",
    "phone": None,
    "created": 1_700_000_000,
    "metadata": {"crmsync_id": "c-1", "tier": "pro"},
}


def test_defaults_are_stripes_published_rate_limits() -> None:
    config = StripeEmulatorConfig()

    assert (config.live_reads_per_second, config.live_writes_per_second) == (100, 100)
    assert (config.test_reads_per_second, config.test_writes_per_second) == (25, 25)
    assert config.search_per_second == 20
    assert config.idempotency_ttl_seconds == 24 * 3600


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def account(clock: Clock, **config: Any) -> Account:
    settings = StripeEmulatorConfig(**config)
    return Account(
        DurableStore(None), settings, emit=lambda _: None, subscribers=lambda: 0, clock=clock
    )


def test_idempotent_results_expire_after_24_hours() -> None:
    clock = Clock()
    subject = account(clock)
    saved = SavedResult("POST /v1/customers", {}, 200, b"{}", "req_1", clock.now)
    subject.save_result("scope", "key", saved)

    clock.now += 24 * 3600 - 1
    kept = subject.saved_result("scope", "key")
    clock.now += 2

    assert kept == saved
    assert subject.saved_result("scope", "key") is None


def test_search_sees_each_write_only_after_the_lag() -> None:
    clock = Clock()
    subject = account(clock, search_lag_seconds=30)
    query = parse_query("email:'ada@example.com'")
    context = RequestContext("test", "req_1")

    customer = subject.create({"email": "ada@example.com"}, context)
    unseen = subject.search("test", query, 10, None).data
    clock.now += 30
    seen = subject.search("test", query, 10, None).data
    subject.update(customer["id"], {"email": "grace@example.com"}, context)
    stale = subject.search("test", query, 10, None).data
    clock.now += 30
    fresh = subject.search("test", query, 10, None).data

    assert unseen == [] and [c["id"] for c in seen] == [customer["id"]]
    assert [c["email"] for c in stale] == ["ada@example.com"]  # the indexed version
    assert fresh == []


def test_bracket_form_fields_nest_and_index_like_stripes_decoder() -> None:
    pairs = [
        ("email", "a@b.co"),
        ("address[line1]", "1 Main St"),
        ("metadata[crmsync_id]", "c-1"),
        ("metadata[tier]", ""),
        ("preferred_locales[0]", "en"),
        ("preferred_locales[1]", "fr"),
        ("expand[]", "tax_ids"),
        ("shipping[address][city]", "Paris"),
    ]

    assert parse_form(pairs) == {
        "email": "a@b.co",
        "address": {"line1": "1 Main St"},
        "metadata": {"crmsync_id": "c-1", "tier": ""},
        "preferred_locales": {"0": "en", "1": "fr"},
        "expand": {"0": "tax_ids"},
        "shipping": {"address": {"city": "Paris"}},
    }


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ("email:'ada@example.com'", True),  # exact match ignores case
        ('email:"ada@example.co"', False),
        ("metadata['crmsync_id']:'c-1'", True),
        ("metadata[\"tier\"]:'pro' AND email:'ada@example.com'", True),
        ("metadata['tier']:'free' OR name~'love'", True),
        ("metadata['tier']:'free' AND name~'love'", False),
        ("-metadata['tier']:'pro'", False),
        ("phone:null", True),
        ("created>1699999999 AND created<=1700000000", True),
        ("created>=1700000001", False),
        ("name:'it\\'s'", False),
    ],
)
def test_search_queries_match_as_stripe_documents(query: str, matches: bool) -> None:
    assert parse_query(query).matches(CUSTOMER) is matches


@pytest.mark.parametrize(
    "query",
    [
        "email:'a' AND name:'b' OR name:'c'",  # AND and OR cannot be mixed
        "address:'x'",  # not a customer search field
        "name~'ab'",  # substring needs three characters
        "email:unquoted",
        "metadata:'x'",
        "email:'a@b.co' AND",
        "",
    ],
)
def test_malformed_queries_are_400s_on_the_query_param(query: str) -> None:
    with pytest.raises(StripeError) as refused:
        parse_query(query)

    assert (refused.value.status, refused.value.param) == (400, "query")


def test_webhook_signature_verifies_with_the_sdk_and_only_with_its_secret() -> None:
    payload = b'{"id": "evt_1", "object": "event"}'
    header = sign_payload(payload, "whsec_test")

    assert stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_test", 300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_other", 300)
    stale = sign_payload(payload, "whsec_test", timestamp=1_000_000)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(payload.decode(), stale, "whsec_test", 300)


def test_refused_keys_show_only_their_prefix_and_last_four() -> None:
    assert _mask("sk_test_abc123") == "sk_test_**c123"
    assert _mask("sk_live_0123456789wxyz") == "sk_live_**********wxyz"
    assert _mask("garbage-key") == "*******-key"


def test_previous_attributes_diff_hashes_key_by_key() -> None:
    old = {"name": "Ada", "metadata": {"a": "1", "b": "2"}, "address": None, "email": "x@y.co"}
    new = {
        "name": None,
        "metadata": {"a": "1", "c": "3"},
        "address": {"city": "Paris"},
        "email": "x@y.co",
    }

    assert _previous_attributes(old, new) == {
        "name": "Ada",
        "metadata": {"b": "2", "c": None},
        "address": None,
    }


def test_dotted_properties_encode_as_bracket_fields_and_none_unsets() -> None:
    fields = encode_properties(
        {
            "email": "a@b.co",
            "address.city": "Paris",
            "address.line1": None,
            "metadata.crmsync_id": "c-1",
            "metadata.plan.tier": "pro",
            "metadata.vip": True,
        }
    )

    assert fields == [
        ("address[city]", "Paris"),
        ("address[line1]", ""),
        ("email", "a@b.co"),
        ("metadata[crmsync_id]", "c-1"),
        ("metadata[plan.tier]", "pro"),
        ("metadata[vip]", "true"),
    ]


RETRY = {"Stripe-Should-Retry": "true"}
NO_RETRY = {"Stripe-Should-Retry": "false"}


def stripe_response(status: int, error: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": error}, headers=headers)


@pytest.mark.parametrize(
    ("response", "raised"),
    [
        (stripe_response(429, {"code": "rate_limit"}), RateLimited),
        (stripe_response(500, {"type": "api_error"}), TransientError),
        (httpx.Response(503, text="503 Service Unavailable"), TransientError),
        (stripe_response(500, {"type": "api_error"}, **NO_RETRY), PermanentError),
        (stripe_response(409, {"type": "idempotency_error"}), TransientError),
        (stripe_response(409, {"type": "invalid_request_error"}, **NO_RETRY), PermanentError),
        (stripe_response(400, {"code": "lock_timeout"}, **RETRY), TransientError),
        (stripe_response(400, {"type": "invalid_request_error", "param": "email"}), RecordRefused),
        (stripe_response(401, {"type": "invalid_request_error"}), PermanentError),
        (stripe_response(404, {"code": "resource_missing", "param": "id"}), PermanentError),
    ],
)
def test_stripe_errors_map_onto_the_error_tree(
    response: httpx.Response, raised: type[Exception]
) -> None:
    with pytest.raises(raised):
        raise_for_status(response)


def test_rate_limited_carries_retry_after_when_stripe_sends_one() -> None:
    with pytest.raises(RateLimited) as limited:
        raise_for_status(httpx.Response(429, json={}, headers={"Retry-After": "2"}))

    assert limited.value.retry_after == 2.0
