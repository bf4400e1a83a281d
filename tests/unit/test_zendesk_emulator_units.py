"""The Zendesk emulator's rules without HTTP: identity matching, events, the export order,
webhook signatures; and how the Zendesk client shapes a user."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

import pytest

from adapters.zendesk import user_body
from emulators.common import DurableStore
from emulators.zendesk import (
    Directory,
    RecordInvalid,
    RecordNotFound,
    ZendeskEmulatorConfig,
    sign_webhook,
    webhook_id,
)


@pytest.fixture
def published() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def directory(published: list[dict[str, Any]]) -> Directory:
    return Directory(DurableStore(None), ZendeskEmulatorConfig(), published.append)


def test_create_or_update_matches_external_id_before_email(directory: Directory) -> None:
    ada = directory.create_user({"name": "Ada", "email": "ada@example.com", "external_id": "c-1"})
    directory.create_user({"name": "Grace", "email": "grace@example.com"})

    by_key, created = directory.create_or_update_user({"external_id": "C-1", "name": "Ada K"})
    with pytest.raises(RecordInvalid) as clash:
        directory.create_or_update_user({"external_id": "c-1", "email": "grace@example.com"})

    assert (by_key["id"], created, by_key["external_id"]) == (ada["id"], False, "C-1")
    assert clash.value.details["email"][0]["error"] == "DuplicateValue"
    assert directory.user(ada["id"])["email"] == "ada@example.com"


def test_a_deleted_user_releases_its_email_and_external_id(directory: Directory) -> None:
    ada = directory.create_user({"name": "Ada", "email": "ada@example.com", "external_id": "c-1"})

    directory.delete_user(ada["id"])
    successor, created = directory.create_or_update_user(
        {"name": "Ada", "email": "ADA@example.com", "external_id": "c-1"}
    )

    assert created is True
    assert successor["id"] != ada["id"]
    assert directory.user(ada["id"])["active"] is False
    with pytest.raises(RecordNotFound):
        directory.update_user(ada["id"], {"name": "Ghost"})


def test_an_update_raises_one_event_per_kind_of_change(
    directory: Directory, published: list[dict[str, Any]]
) -> None:
    ada = directory.create_user({"name": "Ada", "email": "ada@example.com"})
    published.clear()

    directory.update_user(
        ada["id"],
        {"name": "Ada K", "phone": "+1555", "user_fields": {"plan_tier": "gold"}, "locale": "de"},
    )
    directory.update_user(ada["id"], {"name": "Ada K"})  # no change, no event

    kinds = [event["type"].removeprefix("zen:event-type:") for event in published]
    assert kinds == ["user.name_changed", "user.identity_created", "user.custom_field_changed"]
    assert published[2]["event"] == {
        "current": "gold",
        "previous": None,
        "field": {"key": "plan_tier"},
    }
    assert {event["subject"] for event in published} == {f"zen:user:{ada['id']}"}


def test_the_export_follows_the_order_of_changes_and_resumes_after_a_cursor(
    directory: Directory,
) -> None:
    ada = directory.create_user({"name": "Ada"})
    grace = directory.create_user({"name": "Grace"})
    _, resume, end = directory.export_users(None, 0, limit=1)
    directory.update_user(ada["id"], {"notes": "moved"})

    rest, _, rest_end = directory.export_users(resume, 0, limit=10)

    assert end is False
    assert [user["id"] for user in rest] == [grace["id"], ada["id"]]
    assert rest_end is True


def test_undefined_user_fields_are_dropped_when_the_account_defines_its_fields() -> None:
    config = ZendeskEmulatorConfig(user_fields=("plan_tier",))
    directory = Directory(DurableStore(None), config, lambda _: None)

    user = directory.create_user({"name": "Ada", "user_fields": {"plan_tier": "pro", "x": 1}})

    assert user["user_fields"] == {"plan_tier": "pro"}


def test_webhook_signature_is_base64_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"type":"zen:event-type:user.created"}'

    headers = sign_webhook(body, "https://hooks.example/zendesk", "s3cret")

    timestamp = headers["X-Zendesk-Webhook-Signature-Timestamp"]
    digest = hmac.new(b"s3cret", timestamp.encode() + body, hashlib.sha256).digest()
    assert headers["X-Zendesk-Webhook-Signature"] == base64.b64encode(digest).decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", timestamp)
    assert headers["X-Zendesk-Webhook-Id"] == webhook_id("https://hooks.example/zendesk")
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", headers["X-Zendesk-Webhook-Id"])


def test_client_nests_user_fields_and_keeps_nulls() -> None:
    body = user_body(
        {"external_id": "c-1", "phone": None, "user_fields.plan_tier": "pro", "user_fields.x": None}
    )

    assert body == {
        "external_id": "c-1",
        "phone": None,
        "user_fields": {"plan_tier": "pro", "x": None},
        "skip_verify_email": True,
    }
