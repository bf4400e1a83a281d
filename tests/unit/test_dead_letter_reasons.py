"""A failure that comes back reads the same each time, so that it makes one dead letter: what
names one request (correlation ids, request log links, a record's place in a batch, a job's
id) or one try (attempt counts, how long a 429 asked to wait) stays out of the error text.
The vendors' answers are built by the emulators, which answer as the vendors do."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest

from adapters import hubspot, stripe, zendesk
from adapters.target import Upsert
from adapters.worker import _dead_letter_reason
from crmsync.errors import PermanentError, RateLimited, RetriesExhausted, TransientError
from emulators.hubspot import HubSpotError
from emulators.stripe import StripeError


def _refused(
    exc_type: type[Exception],
    response: httpx.Response,
    raise_for_status: Callable[[httpx.Response], None],
) -> str:
    with pytest.raises(exc_type) as caught:
        raise_for_status(response)
    return str(caught.value)


def test_a_hubspot_refusal_reads_the_same_whatever_its_correlation_id() -> None:
    error = HubSpotError(409, "Contact already exists. Existing ID: 1201", "CONFLICT")
    texts = {
        _refused(
            PermanentError,
            httpx.Response(409, content=bytes(error.response(correlation).body)),
            hubspot.raise_for_status,
        )
        for correlation in ("8d4b1c52-0001", "8d4b1c52-0002")
    }
    assert len(texts) == 1
    (text,) = texts
    assert text.startswith("HTTP 409: ")
    assert orjson.loads(text.removeprefix("HTTP 409: ")) == {
        "status": "error",
        "message": "Contact already exists. Existing ID: 1201",
        "category": "CONFLICT",
    }


def test_a_hubspot_batch_refusal_reads_the_same_wherever_the_input_sat_in_the_batch() -> None:
    def refusal(position: int, batch_size: int) -> str:
        keyed = [
            (n, Upsert(f"cust-{n}", {"crmsync_id": f"cust-{n}"}, None, f"key-{n}"))
            for n in range(batch_size)
        ]
        error = HubSpotError(
            400, "Property values were not valid", "VALIDATION_ERROR",
            {"propertyName": ["email"]},
        )  # fmt: skip
        body = {"results": [], "errors": [error.batch_entry(str(position))]}
        outcomes = hubspot._outcomes(
            keyed, body,
            input_key=lambda item: item.customer_id,
            result_key=lambda result: str(result.get("id")),
        )  # fmt: skip
        assert outcomes[position].error is not None
        return outcomes[position].error

    first, again = refusal(0, 1), refusal(3, 5)
    assert first == again
    assert orjson.loads(first)["context"] == {"propertyName": ["email"]}  # what it names stays


def test_a_stripe_refusal_reads_the_same_without_its_request_log_link() -> None:
    error = StripeError(400, "Invalid email address: x", code="email_invalid", param="email")

    def refused(request_id: str) -> str:
        body = orjson.dumps(error.body(request_id, "test"))
        assert b"request_log_url" in body  # as Stripe answers it
        return _refused(stripe.RecordRefused, httpx.Response(400, content=body),
                        stripe.raise_for_status)  # fmt: skip

    first, again = refused("req_aaaaaaaaaaaaaa"), refused("req_bbbbbbbbbbbbbb")
    assert first == again
    assert orjson.loads(first)["error"] == {
        "code": "email_invalid",
        "doc_url": "https://stripe.com/docs/error-codes/email-invalid",
        "message": "Invalid email address: x",
        "param": "email",
        "type": "invalid_request_error",
    }


def test_a_stripe_answer_without_a_request_log_link_is_kept_verbatim() -> None:
    body = b'{\n  "error": {\n    "message": "No such customer: \'cus_1\'"\n  }\n}'
    text = _refused(PermanentError, httpx.Response(404, content=body), stripe.raise_for_status)
    assert text == f"HTTP 404: {body.decode()}"


def test_a_zendesk_job_failure_reads_the_same_wherever_the_user_sat_in_the_job() -> None:
    def failed(index: int) -> dict[str, object]:  # a failed create: Zendesk puts the index in id
        return {
            "id": index, "index": index, "action": "create", "status": "Failed",
            "success": False, "error": "UserUpdateError", "details": "Email: is invalid",
        }  # fmt: skip

    assert zendesk._error_text(failed(0)) == zendesk._error_text(failed(7))
    assert orjson.loads(zendesk._error_text(failed(7))) == {
        "action": "create", "status": "Failed", "success": False,
        "error": "UserUpdateError", "details": "Email: is invalid",
    }  # fmt: skip
    update = {"id": 3901, "action": "update", "status": "Failed", "success": False,
              "error": "RecordNotFound", "details": "Not found"}  # fmt: skip
    assert orjson.loads(zendesk._error_text(update)) == update  # a user's own id is kept


@pytest.mark.parametrize(
    ("first", "again", "expected"),
    [
        (
            RetriesExhausted(7, RateLimited(2.5, '{"message": "slow down"}')),
            RetriesExhausted(31, RateLimited(0.25, '{"message": "slow down"}')),
            'gave up after 600 s of retries: rate limited: {"message": "slow down"}',
        ),
        (
            RetriesExhausted(4, TransientError("HTTP 503: down", 503)),
            RetriesExhausted(12, TransientError("HTTP 503: down", 503)),
            "gave up after 600 s of retries: HTTP 503: down",
        ),
        (PermanentError(400, "bad email"), PermanentError(400, "bad email"), "HTTP 400: bad email"),
    ],
)
def test_giving_up_reads_the_same_however_many_tries_it_took(
    first: Exception, again: Exception, expected: str
) -> None:
    assert _dead_letter_reason(first, 600.0) == _dead_letter_reason(again, 600.0) == expected  # type: ignore[arg-type]


def test_a_different_failure_still_reads_differently() -> None:
    down = _dead_letter_reason(RetriesExhausted(3, TransientError("HTTP 503: down", 503)), 600)
    timeout = _dead_letter_reason(RetriesExhausted(3, TransientError("timeout: x")), 600)
    assert down != timeout
