"""The Zendesk emulator, driven through the `zenpy` SDK, and crmsync's Zendesk client against it.

Each emulator is a real process (``python -m emulators.zendesk``) on a free loopback port with
its records in the test's own SQLite file, so a test can kill it and start it again. zenpy
builds ``https://{subdomain}.zendesk.com`` URLs; it reads two documented environment overrides
on every request, ``ZENPY_FORCE_NETLOC`` and ``ZENPY_FORCE_SCHEME``, which `zenpy_for` points
at the emulator. Nothing else of the SDK is changed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from zenpy import Zenpy
from zenpy.lib.api_objects import JobStatus, Organization, User
from zenpy.lib.exception import APIException, RatelimitBudgetExceeded, RecordNotFoundException

from adapters.target import Archive, Outcome, Quota, Upsert
from adapters.zendesk import ZendeskClient
from crmsync.errors import PermanentError, RateLimited, TransientError
from tests.conftest import free_port, wait_until

TOKEN = "zd-api-token-for-tests"
AGENT = "agent@example.com"
REPO_ROOT = Path(__file__).resolve().parents[2]
RATE_HEADERS = ("X-Rate-Limit", "X-Rate-Limit-Remaining", "ratelimit-limit", "ratelimit-reset")


# --------------------------------------------------------------------------------------------
# Running emulators
# --------------------------------------------------------------------------------------------


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def netloc(self) -> str:
        return self.url.removeprefix("http://")

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("auth", (f"{AGENT}/token", TOKEN))
        return httpx.request(method, f"{self.url}/api/v2/{path}", timeout=10, **kwargs)

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/_emulator/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "stats").json()

    def inject(self, **faults: Any) -> None:
        self.control("POST", "faults", json=faults)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/_emulator/stats", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _spawn(data: Path, log: Path, *args: str) -> Emulator:
    port = free_port()
    command = [sys.executable, "-m", "emulators.zendesk", "--port", str(port)]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*command, "--data", str(data), "--token", TOKEN, *args],
            cwd=REPO_ROOT, stdout=sink, stderr=sink,
        )  # fmt: skip
    emulator = Emulator(f"http://127.0.0.1:{port}", process)
    wait_until(
        lambda: _answers(emulator.url) or process.poll() is not None,
        timeout=20, interval=0.05, what="the Zendesk emulator to answer",
    )  # fmt: skip
    assert process.poll() is None, log.read_text()
    return emulator


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start emulators with their own flags; `data` defaults to one file per test."""
    started: list[Emulator] = []

    def start(*args: str, data: Path | None = None) -> Emulator:
        emulator = _spawn(data or tmp_path / "zendesk.sqlite", tmp_path / "emulator.log", *args)
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.kill()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    folder = tmp_path_factory.mktemp("zendesk")
    emulator = _spawn(folder / "zendesk.sqlite", folder / "emulator.log", "--job-delay-ms", "20")
    yield emulator
    emulator.kill()


@pytest.fixture
def emulator(shared: Emulator) -> Emulator:
    """The module's emulator, emptied: no records, faults, subscriptions or quota use."""
    shared.control("POST", "reset")
    return shared


def zenpy_for(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Zenpy:
    monkeypatch.setenv("ZENPY_FORCE_NETLOC", emulator.netloc)
    monkeypatch.setenv("ZENPY_FORCE_SCHEME", "http")
    credentials = {"oauth_token": TOKEN} if "oauth_token" in options else {"token": TOKEN}
    options = {"email": AGENT, **credentials, **options}
    return Zenpy(subdomain="emulator", disable_cache=True, **options)


@pytest.fixture
def zendesk(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Zenpy:
    return zenpy_for(emulator, monkeypatch)


def completed(zendesk: Zenpy, job: JobStatus) -> JobStatus:
    """Poll the job status as a client would until the job has completed."""

    def probe() -> JobStatus | None:
        status = zendesk.job_status(id=job.id)
        return status if status.status == "completed" else None

    return wait_until(probe, timeout=10, interval=0.05, what=f"job {job.id}")


def api_error(call: Callable[[], Any], kind: type[Exception] = APIException) -> Any:
    with pytest.raises(kind) as caught:
        call()
    return caught.value


def users(count: int, start: int = 0) -> list[User]:
    return [
        User(name=f"User {n}", email=f"user{n}@example.com", external_id=f"c-{n}")
        for n in range(start, start + count)
    ]


# --------------------------------------------------------------------------------------------
# Users, one at a time
# --------------------------------------------------------------------------------------------


def test_created_user_has_zendesk_fields_and_updates_only_what_is_sent(zendesk: Zenpy) -> None:
    created = zendesk.users.create(
        User(name="Ada Lovelace", email="ada@example.com", external_id="c-1", phone="+4420000")
    )

    assert isinstance(created.id, int)
    assert created.url.endswith(f"/api/v2/users/{created.id}.json")
    assert (created.role, created.active, created.verified) == ("end-user", True, False)
    assert (created.time_zone, created.iana_time_zone) == ("UTC", "Etc/UTC")
    assert (created.locale, created.locale_id) == ("en-US", 1)
    assert created.external_id == "c-1"
    assert created.user_fields == {}
    assert created.created_at == created.updated_at

    created.name = "Ada King"
    created.user_fields = {"plan_tier": "gold"}
    created.time_zone = "Europe/London"
    updated = zendesk.users.update(created)

    fetched = zendesk.users(id=created.id)
    assert (updated.id, fetched.name) == (created.id, "Ada King")
    assert fetched.user_fields == {"plan_tier": "gold"}
    assert (fetched.time_zone, fetched.iana_time_zone) == ("Europe/London", "Europe/London")
    assert (fetched.email, fetched.phone, fetched.external_id) == (
        "ada@example.com", "+4420000", "c-1",
    )  # fmt: skip


def test_update_adds_a_secondary_email_and_keeps_the_primary(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    user = zendesk.users.create(User(name="Ada", email="ada@example.com"))

    emulator.api("PUT", f"users/{user.id}.json", json={"user": {"email": "ada@work.example"}})

    assert zendesk.users(id=user.id).email == "ada@example.com"
    found = list(zendesk.users.search(query="email:ada@work.example"))
    assert [u.id for u in found] == [user.id]
    clash = emulator.api("POST", "users", json={"user": {"name": "B", "email": "ADA@work.example"}})
    assert clash.status_code == 422


def test_create_or_update_creates_then_updates_by_external_id_then_email(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    first = emulator.api(
        "POST", "users/create_or_update.json",
        json={"user": {"name": "Grace", "email": "grace@example.com", "external_id": "c-7"}},
    )  # fmt: skip
    by_key = emulator.api(
        "POST", "users/create_or_update", json={"user": {"external_id": "C-7", "name": "G. Hopper"}}
    )
    by_email = zendesk.users.create_or_update(User(email="GRACE@example.com", phone="+1555"))

    user_id = first.json()["user"]["id"]
    assert (first.status_code, by_key.status_code) == (201, 200)
    assert first.headers["Location"].endswith(f"/api/v2/users/{user_id}.json")
    assert by_key.json()["user"]["external_id"] == "C-7"  # the case used to find it wins
    assert by_email.id == user_id
    final = zendesk.users(id=user_id)
    assert (final.name, final.phone, final.email) == ("G. Hopper", "+1555", "grace@example.com")
    assert (emulator.stats()["users"], emulator.stats()["creates"]) == (1, 1)


def test_invalid_user_gets_record_invalid_with_every_attribute_at_fault(zendesk: Zenpy) -> None:
    error = api_error(lambda: zendesk.users.create(User(email="not-an-email")))

    assert error.response.status_code == 422
    assert error.response.json() == {
        "error": "RecordInvalid",
        "description": "Record validation errors",
        "details": {
            "name": [
                {
                    "description": "Name: is too short (minimum is 1 characters)",
                    "error": "InvalidValue",
                }
            ],
            "email": [
                {
                    "description": "Email: not-an-email is not properly formatted",
                    "error": "InvalidValue",
                }
            ],
        },
    }


def test_duplicate_email_and_external_id_are_refused(zendesk: Zenpy, emulator: Emulator) -> None:
    zendesk.users.create(User(name="Ada", email="ada@example.com", external_id="c-1"))

    email_clash = api_error(lambda: zendesk.users.create(User(name="B", email="ADA@example.com")))
    key_clash = api_error(lambda: zendesk.users.create(User(name="C", external_id="c-1")))

    assert email_clash.response.json()["details"] == {
        "email": [
            {
                "description": "Email: ADA@example.com is already being used by another user",
                "error": "DuplicateValue",
            }
        ]
    }
    assert key_clash.response.json()["details"]["external_id"][0]["error"] == "DuplicateValue"
    assert emulator.stats()["users"] == 1


def test_delete_is_soft_and_frees_the_email_for_a_new_user(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    ada = zendesk.users.create(User(name="Ada", email="ada@example.com", external_id="c-1"))

    deleted = zendesk.users.delete(ada)

    assert (deleted.id, deleted.active) == (ada.id, False)
    assert zendesk.users(id=ada.id).active is False
    again = api_error(lambda: zendesk.users.delete(ada), RecordNotFoundException)
    assert again.response.status_code == 404
    assert again.response.json() == {"error": "RecordNotFound", "description": "Not found"}
    assert [u.id for u in zendesk.users()] == []
    successor = zendesk.users.create(User(name="Ada", email="ada@example.com", external_id="c-1"))
    assert successor.id != ada.id
    assert (emulator.stats()["users"], emulator.stats()["deleted_users"]) == (1, 1)


def test_paths_work_with_and_without_the_json_suffix(emulator: Emulator) -> None:
    created = emulator.api("POST", "users", json={"user": {"name": "Ada", "external_id": "c-1"}})
    user_id = created.json()["user"]["id"]

    for path in (f"users/{user_id}", f"users/{user_id}.json"):
        assert emulator.api("GET", path).json()["user"]["id"] == user_id
    for path in ("users/search", "users/search.json"):
        found = emulator.api("GET", path, params={"external_id": "C-1"}).json()["users"]
        assert [user["id"] for user in found] == [user_id]
    for path in ("users/show_many", "users/show_many.json"):
        shown = emulator.api("GET", path, params={"ids": f"{user_id},999"}).json()
        assert [user["id"] for user in shown["users"]] == [user_id]
    assert emulator.api("GET", "users/0").status_code == 404
    unknown = emulator.api("GET", "no_such_endpoint.json")
    assert unknown.json() == {"error": "InvalidEndpoint", "description": "Not found"}


# --------------------------------------------------------------------------------------------
# Bulk jobs, lists and searches
# --------------------------------------------------------------------------------------------


def test_create_or_update_many_is_a_job_zenpy_polls_to_completion(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    existing = zendesk.users.create(User(name="Ada", email="ada@example.com", external_id="c-1"))
    batch = [
        User(name="Grace", email="grace@example.com", external_id="c-2"),
        User(external_id="c-1", name="Ada King"),
        User(name="Bad", email="bad-address"),
    ]

    job = zendesk.users.create_or_update(batch)
    assert (job.status, job.total, job.results) == ("queued", 3, None)
    assert job.url.endswith(f"/api/v2/job_statuses/{job.id}.json")
    done = completed(zendesk, job)

    created, updated, failed = done.results
    assert (done.progress, done.message.startswith("Completed at ")) == (3, True)
    assert (created.status, created.action, created.index, created.success) == (
        "Created", "create", 0, True,
    )  # fmt: skip
    assert (created.email, created.external_id) == ("grace@example.com", "c-2")
    assert (updated.id, updated.status, updated.action) == (existing.id, "Updated", "update")
    assert (failed.status, failed.success, failed.index, failed.error) == (
        "Failed", False, 2, "UserUpdateError",
    )  # fmt: skip
    assert "Email: bad-address is not properly formatted" in failed.details
    assert zendesk.users(id=existing.id).name == "Ada King"
    many = zendesk.job_status(ids=[job.id])["job_statuses"]
    assert [(j.id, j.status) for j in many] == [(job.id, "completed")]
    assert emulator.stats()["jobs_pending"] == 0


def test_update_many_updates_each_user_by_id_else_external_id_and_creates_nobody(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    hand_made = zendesk.users.create(User(name="Ada", email="ada@home.example"))
    keyed = zendesk.users.create(User(name="Grace", email="grace@example.com", external_id="c-2"))
    batch = [
        User(id=hand_made.id, external_id="c-1", email="ada@example.com", name="Ada King"),
        User(external_id="c-2", name="Grace Hopper"),
        User(id=1_599_999_999_999, name="Nobody"),
        User(id=keyed.id, email="not-an-email"),
    ]

    job = zendesk.users.update(batch)
    assert isinstance(job, JobStatus)
    assert (job.status, job.total, job.results) == ("queued", 4, None)
    adopted, by_key, missing, invalid = completed(zendesk, job).results

    assert (adopted.id, adopted.action, adopted.status, adopted.success) == (
        hand_made.id, "update", "Updated", True,
    )  # fmt: skip
    assert (by_key.id, by_key.status) == (keyed.id, "Updated")
    assert (missing.id, missing.status, missing.success, missing.error) == (
        1_599_999_999_999, "Failed", False, "RecordNotFound",
    )  # fmt: skip
    assert (invalid.id, invalid.error) == (keyed.id, "UserUpdateError")
    assert "Email: not-an-email is not properly formatted" in invalid.details
    ada = zendesk.users(id=hand_made.id)
    assert (ada.external_id, ada.name) == ("c-1", "Ada King")
    assert ada.email == "ada@home.example"  # the new address is a secondary identity
    found = list(zendesk.users.search(query="email:ada@example.com"))
    assert [user.id for user in found] == [hand_made.id]
    assert zendesk.users(id=keyed.id).name == "Grace Hopper"
    stats = emulator.stats()
    assert (stats["users"], stats["creates"], stats["updates"]) == (2, 2, 2)


def test_update_many_applies_one_change_to_the_users_a_query_names(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    done = completed(zendesk, zendesk.users.create_or_update(users(3)))
    ids = [result.id for result in done.results]

    by_ids = emulator.api(
        "PUT", "users/update_many.json", params={"ids": f"{ids[0]},{ids[1]}"},
        json={"user": {"tags": ["vip"]}},
    )  # fmt: skip
    completed(zendesk, JobStatus(**by_ids.json()["job_status"]))
    by_keys = zendesk.users.update_by_external_id([User(external_id="c-2", notes="Key account")])
    completed(zendesk, by_keys)
    neither = emulator.api("PUT", "users/update_many", json={"user": {"tags": ["vip"]}})
    too_many = emulator.api(
        "PUT", "users/update_many", json={"users": [{"id": n, "name": "N"} for n in range(101)]}
    )

    assert by_ids.status_code == 200
    tagged = {user.id: user.tags for user in zendesk.users(ids=ids)}
    assert tagged == {ids[0]: ["vip"], ids[1]: ["vip"], ids[2]: []}
    assert zendesk.users(id=ids[2]).notes == "Key account"
    assert (neither.status_code, neither.json()["error"]) == (400, "InvalidValue")
    assert (too_many.status_code, too_many.json()["error"]) == (400, "TooManyValues")
    assert (emulator.stats()["users"], emulator.stats()["creates"]) == (3, 3)


def test_more_than_100_users_in_one_job_is_refused(emulator: Emulator) -> None:
    body = {"users": [{"name": f"U{n}", "email": f"u{n}@example.com"} for n in range(101)]}

    response = emulator.api("POST", "users/create_or_update_many.json", json=body)

    assert response.status_code == 400
    assert response.json()["error"] == "TooManyValues"
    assert emulator.stats()["jobs"] == 0


def test_show_many_reads_by_ids_and_by_external_ids(zendesk: Zenpy) -> None:
    done = completed(zendesk, zendesk.users.create_or_update(users(3)))
    ids = [result.id for result in done.results]

    by_ids = zendesk.users(ids=[ids[2], ids[0]])
    by_keys = zendesk.users(external_id=["c-1", "c-2", "c-404"])

    assert sorted(user.id for user in by_ids) == sorted([ids[2], ids[0]])
    assert sorted(user.external_id for user in by_keys) == ["c-1", "c-2"]


def test_search_by_email_external_id_and_free_text(zendesk: Zenpy) -> None:
    zendesk.users.create(User(name="Ada Lovelace", email="ada@example.com", external_id="c-1"))
    grace = zendesk.users.create(User(name="Grace Hopper", email="grace@navy.example"))

    by_email = list(zendesk.users.search(query="email:GRACE@navy.example"))
    by_key = list(zendesk.users.search(external_id="c-1"))
    by_text = list(zendesk.users.search(query="hopper"))
    nobody = list(zendesk.users.search(query="email:nobody@example.com"))

    assert [user.id for user in by_email] == [grace.id]
    assert [user.email for user in by_key] == ["ada@example.com"]
    assert [user.id for user in by_text] == [grace.id]
    assert nobody == []


def test_lists_every_user_over_cursor_and_offset_pages(zendesk: Zenpy, emulator: Emulator) -> None:
    jobs = [
        zendesk.users.create_or_update(users(100)),
        zendesk.users.create_or_update(users(50, 100)),
    ]
    for job in jobs:
        completed(zendesk, job)

    listed = [user.external_id for user in zendesk.users()]  # zenpy asks for page[size]=100

    assert sorted(listed) == sorted(f"c-{n}" for n in range(150))
    first = emulator.api("GET", "users.json", params={"page[size]": "100"}).json()
    assert first["meta"]["has_more"] is True
    second = httpx.get(first["links"]["next"], auth=(f"{AGENT}/token", TOKEN)).json()
    assert (len(second["users"]), second["meta"]["has_more"], second["links"]["next"]) == (
        50, False, None,
    )  # fmt: skip
    offset = emulator.api("GET", "users", params={"page": "2", "per_page": "100"}).json()
    assert (len(offset["users"]), offset["count"], offset["next_page"]) == (50, 150, None)
    assert offset["previous_page"].endswith("page=1&per_page=100")


def test_incremental_user_export_resumes_from_its_cursor(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    ada = zendesk.users.create(User(name="Ada", email="ada@example.com"))
    grace = zendesk.users.create(User(name="Grace", email="grace@example.com"))

    everyone = list(zendesk.users.incremental(start_time=0))
    page = emulator.api("GET", "incremental/users/cursor.json", params={"start_time": 0}).json()
    quiet = emulator.api("GET", "incremental/users/cursor", params={"cursor": page["after_cursor"]})
    zendesk.users.delete(grace)
    ada.name = "Ada King"
    zendesk.users.update(ada)
    changes = list(zendesk.users.incremental(cursor=page["after_cursor"]))

    assert [user.id for user in everyone] == [ada.id, grace.id]
    assert (page["end_of_stream"], quiet.json()["users"]) == (True, [])
    assert [(user.id, user.active) for user in changes] == [(grace.id, False), (ada.id, True)]
    assert changes[1].name == "Ada King"
    assert list(zendesk.users.incremental(start_time=int(time.time()) + 3600)) == []


def test_organizations_create_update_upsert_list_and_delete(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    acme = zendesk.organizations.create(Organization(name="Acme", external_id="org-1"))
    member = zendesk.users.create(User(name="Ada", organization_id=acme.id))

    acme.notes = "Key account"
    zendesk.organizations.update(acme)
    upserted = zendesk.organizations.create_or_update(
        Organization(external_id="org-1", tags=["vip"])
    )
    created = zendesk.organizations.create_or_update(
        Organization(name="Globex", external_id="org-2")
    )
    duplicate = api_error(lambda: zendesk.organizations.create(Organization(name="ACME")))

    assert (upserted.id, upserted.notes, upserted.tags) == (acme.id, "Key account", ["vip"])
    assert created.id != acme.id
    assert duplicate.response.json()["details"]["name"][0]["error"] == "DuplicateValue"
    assert [o.name for o in zendesk.organizations()] == ["Acme", "Globex"]
    zendesk.organizations.delete(acme)
    assert api_error(lambda: zendesk.organizations(id=acme.id)).response.status_code == 404
    assert zendesk.users(id=member.id).organization_id is None


# --------------------------------------------------------------------------------------------
# Limits, credentials, faults and restarts
# --------------------------------------------------------------------------------------------


def test_every_response_carries_the_plans_rate_limit_headers(emulator: Emulator) -> None:
    first = emulator.api("GET", "users.json")
    second = emulator.api("GET", "users")

    assert [first.headers[name] for name in RATE_HEADERS[:2]] == ["200", "199"]
    assert second.headers["X-Rate-Limit-Remaining"] == "198"
    assert second.headers["ratelimit-limit"] == "200"
    assert 0 < int(second.headers["ratelimit-reset"]) <= 60


def test_over_the_limit_is_429_which_zenpy_waits_out_within_its_budget(
    spawn: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = spawn("--rate-limit", "2", "--rate-window", "2")
    assert [emulator.api("GET", "users").status_code for _ in range(2)] == [200, 200]

    refused = emulator.api("GET", "users")
    assert refused.status_code == 429
    assert refused.text == "Number of allowed API requests per minute exceeded"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2
    assert refused.headers["X-Rate-Limit-Remaining"] == "0"
    assert emulator.stats()["rate_limited"] == 1

    impatient = zenpy_for(emulator, monkeypatch, ratelimit_budget=1)
    with pytest.raises(RatelimitBudgetExceeded):
        impatient.users.create(User(name="Ada"))
    patient = zenpy_for(emulator, monkeypatch)
    started = time.monotonic()
    names = [patient.users.create(User(name=f"U{n}")).name for n in range(3)]
    assert names == ["U0", "U1", "U2"]
    assert time.monotonic() - started >= 0.9  # slept out a Retry-After


def test_a_user_takes_at_most_five_updates_a_minute(emulator: Emulator) -> None:
    user_id = emulator.api("POST", "users", json={"user": {"name": "Ada"}}).json()["user"]["id"]

    statuses = [
        emulator.api("PUT", f"users/{user_id}", json={"user": {"notes": str(n)}}).status_code
        for n in range(6)
    ]

    assert statuses == [200] * 5 + [429]
    refused = emulator.api("PUT", f"users/{user_id}", json={"user": {"notes": "x"}})
    assert "rate limit for updating a single unique user" in refused.text
    assert int(refused.headers["Retry-After"]) > 0


def test_incremental_exports_have_their_own_limit_of_ten_a_minute(emulator: Emulator) -> None:
    statuses = [
        emulator.api("GET", "incremental/users/cursor", params={"start_time": 0}).status_code
        for _ in range(11)
    ]

    assert statuses == [200] * 10 + [429]
    refused = emulator.api("GET", "incremental/users/cursor.json", params={"start_time": 0})
    assert refused.json() == {
        "error": "APIRateLimitExceeded",
        "description": "Number of allowed incremental export API requests per minute exceeded",
    }
    assert int(refused.headers["Retry-After"]) > 0
    assert emulator.api("GET", "users").status_code == 200


def test_wrong_or_missing_credentials_are_refused(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = zenpy_for(emulator, monkeypatch, token="not-the-token")

    error = api_error(lambda: list(wrong.users()))

    assert error.response.status_code == 401
    assert error.response.json() == {"error": "Couldn't authenticate you"}
    assert emulator.api("GET", "users", auth=None).status_code == 401
    password = emulator.api("GET", "users", auth=(AGENT, TOKEN))
    assert password.status_code == 401  # only the API token, never a password
    bearer = zenpy_for(emulator, monkeypatch, oauth_token=TOKEN)
    assert list(bearer.users()) == []


def test_restart_keeps_users_organizations_and_job_results(
    spawn: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = spawn()
    zendesk = zenpy_for(before, monkeypatch)
    org = zendesk.organizations.create(Organization(name="Acme"))
    done = completed(zendesk, zendesk.users.create_or_update(users(3)))
    ids = sorted(result.id for result in done.results)

    before.kill()  # SIGKILL: nothing gets to shut down cleanly
    after = spawn(data=tmp_path / "zendesk.sqlite")
    zendesk = zenpy_for(after, monkeypatch)

    assert sorted(user.id for user in zendesk.users()) == ids
    assert zendesk.organizations(id=org.id).name == "Acme"
    assert [r.status for r in zendesk.job_status(id=done.id).results] == ["Created"] * 3
    newcomer = zendesk.users.create(User(name="New"))
    assert newcomer.id > max(ids)
    assert zendesk.users.create_or_update(User(external_id="c-0", name="Renamed")).id == ids[0]


def test_a_job_queued_when_the_emulator_dies_runs_after_restart(
    spawn: Callable[..., Emulator], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = spawn("--job-delay-ms", "60000")
    job = zenpy_for(before, monkeypatch).users.create_or_update(users(2))

    before.kill()
    after = spawn("--job-delay-ms", "0", data=tmp_path / "zendesk.sqlite")

    done = completed(zenpy_for(after, monkeypatch), job)
    assert [result.status for result in done.results] == ["Created", "Created"]


def test_injected_faults_answer_as_zendesk_would_and_lift(
    zendesk: Zenpy, emulator: Emulator
) -> None:
    emulator.inject(outage=True)
    outage = emulator.api("GET", "users")
    emulator.inject(throttle=True)
    throttled = emulator.api("GET", "users")
    emulator.inject(error_rate=1.0, error_status=500)
    error = api_error(lambda: zendesk.users.create(User(name="Ada")))
    emulator.inject()

    assert (outage.status_code, outage.text) == (503, "503 Service Unavailable")
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "1")
    assert error.response.status_code == 500
    assert error.response.json()["error"] == "InternalServerError"
    assert zendesk.users.create(User(name="Ada")).name == "Ada"
    assert emulator.stats()["faults_injected"] == 3
    assert emulator.stats()["users"] == 1


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------


async def test_user_changes_reach_subscribers_signed_the_zendesk_way(emulator: Emulator) -> None:
    secret = "dGhpcyBpcyBhIHNpZ25pbmcgc2VjcmV0"
    deliveries: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    receiver = web.Application()
    receiver.router.add_post("/zendesk", receive)
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with httpx.AsyncClient(
            base_url=f"{emulator.url}/api/v2", auth=(f"{AGENT}/token", TOKEN)
        ) as api:
            hook = {"url": f"http://127.0.0.1:{port}/zendesk", "secret": secret}
            await api.post(f"{emulator.url}/_emulator/webhooks", json=hook)
            body = {"user": {"name": "Ada", "email": "ada@example.com", "external_id": "c-1"}}
            user = (await api.post("/users.json", json=body)).json()["user"]
            await api.put(f"/users/{user['id']}.json", json={"user": {"name": "Ada King"}})
            batch = {"users": [{"id": user["id"], "external_id": "c-9"}]}
            job = (await api.put("/users/update_many.json", json=batch)).json()["job_status"]
            while job["status"] != "completed":
                await asyncio.sleep(0.02)
                job = (await api.get(f"/job_statuses/{job['id']}.json")).json()["job_status"]
            await api.delete(f"/users/{user['id']}.json")
            deadline = time.monotonic() + 10
            while len(deliveries) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()

    events = []
    for headers, raw in deliveries:
        timestamp = headers["X-Zendesk-Webhook-Signature-Timestamp"]
        expected = hmac.new(secret.encode(), timestamp.encode() + raw, hashlib.sha256).digest()
        assert headers["X-Zendesk-Webhook-Signature"] == base64.b64encode(expected).decode()
        assert headers["Content-Type"] == "application/json"
        events.append(httpx.Response(200, content=raw).json())
    assert [event["type"] for event in events] == [
        "zen:event-type:user.created",
        "zen:event-type:user.name_changed",
        "zen:event-type:user.external_id_changed",  # from a bulk job, as from any update
        "zen:event-type:user.active_changed",
    ]
    created, renamed, rekeyed, deleted = events
    assert created["subject"] == f"zen:user:{user['id']}"
    assert created["detail"]["id"] == str(user["id"])
    assert created["detail"]["external_id"] == "c-1"
    assert created["zendesk_event_version"] == "2022-11-06"
    assert renamed["event"] == {"current": "Ada King", "previous": "Ada"}
    assert rekeyed["event"] == {"current": "c-9", "previous": "c-1"}
    assert deleted["event"] == {"current": False, "previous": True}
    assert len({event["id"] for event in events}) == 4


# --------------------------------------------------------------------------------------------
# crmsync's Zendesk client
# --------------------------------------------------------------------------------------------


def upsert(customer_id: str, **properties: Any) -> Upsert:
    return Upsert(customer_id, {"external_id": customer_id, **properties}, None, f"k-{customer_id}")


def client_for(emulator: Emulator, token: str = TOKEN) -> ZendeskClient:
    return ZendeskClient(emulator.url, AGENT, token, poll_interval=0.05)


async def test_client_upserts_create_then_update_and_replays_create_nothing(
    emulator: Emulator,
) -> None:
    client = client_for(emulator)
    first_batch = [
        upsert("c-1", name="Ada Lovelace", email="ada@example.com", time_zone="Europe/London"),
        upsert("c-2", name="Grace Hopper", **{"user_fields.plan_tier": "pro"}),
    ]
    try:
        created = await client.upsert(first_batch)
        replayed = await client.upsert(first_batch)
        changed = await client.upsert([upsert("c-1", phone="+4420000", time_zone=None)])
    finally:
        await client.aclose()

    ids = {outcome.customer_id: outcome.external_id for outcome in created}
    assert all(outcome.error is None for outcome in created + replayed + changed)
    assert {o.customer_id: o.external_id for o in replayed} == ids
    assert changed[0].external_id == ids["c-1"]
    stats = emulator.stats()
    assert (stats["users"], stats["creates"], stats["updates"]) == (2, 2, 1)
    ada = emulator.api("GET", f"users/{ids['c-1']}.json").json()["user"]
    assert (ada["phone"], ada["time_zone"], ada["name"]) == ("+4420000", "UTC", "Ada Lovelace")
    grace = emulator.api("GET", f"users/{ids['c-2']}.json").json()["user"]
    assert grace["user_fields"] == {"plan_tier": "pro"}


async def test_client_adopts_a_hand_made_user_by_its_id_and_creates_nobody(
    emulator: Emulator,
) -> None:
    made = {"user": {"name": "Ada", "email": "ada@home.example"}}
    hand_made = str(emulator.api("POST", "users.json", json=made).json()["user"]["id"])
    adopt = Upsert(
        "c-1", {"external_id": "c-1", "name": "Ada Lovelace", "email": "ada@example.com"},
        hand_made, "k-c-1", adopt=True,
    )  # fmt: skip
    gone = Upsert("c-3", {"external_id": "c-3", "name": "Gone"}, "1599999999999", "k", adopt=True)
    client = client_for(emulator)
    try:
        outcomes = await client.upsert([upsert("c-2", name="Grace"), adopt, gone])
        replayed = await client.upsert([adopt])
    finally:
        await client.aclose()

    by_customer = {outcome.customer_id: outcome for outcome in outcomes}
    assert by_customer["c-1"] == Outcome("c-1", external_id=hand_made)
    assert replayed == [Outcome("c-1", external_id=hand_made)]
    assert by_customer["c-2"].error is None and by_customer["c-2"].external_id != hand_made
    assert by_customer["c-3"].external_id is None
    assert "RecordNotFound" in (by_customer["c-3"].error or "")
    ada = emulator.api("GET", f"users/{hand_made}.json").json()["user"]
    assert (ada["external_id"], ada["name"]) == ("c-1", "Ada Lovelace")
    stats = emulator.stats()
    assert (stats["users"], stats["creates"]) == (2, 2)  # the hand-made user and c-2


async def test_client_reports_a_refused_user_without_failing_the_batch(
    emulator: Emulator,
) -> None:
    client = client_for(emulator)
    try:
        outcomes = await client.upsert(
            [upsert("c-1", name="Ada", email="ada@example"), upsert("c-2", name="Grace")]
        )
    finally:
        await client.aclose()

    bad, good = outcomes
    assert (bad.customer_id, bad.external_id) == ("c-1", None)
    assert "Email: ada@example is not properly formatted" in (bad.error or "")
    assert (good.customer_id, good.error) == ("c-2", None)
    assert good.external_id is not None and good.external_id.isdigit()


async def test_client_archive_soft_deletes_and_already_gone_is_success(
    emulator: Emulator,
) -> None:
    client = client_for(emulator)
    try:
        created = await client.upsert([upsert("c-1", name="Ada"), upsert("c-2", name="Grace")])
        user_ids = [outcome.external_id or "" for outcome in created]
        archives = [Archive(o.customer_id, o.external_id or "", "k") for o in created]
        first = await client.archive(archives)
        again = await client.archive([*archives, Archive("c-3", "999999", "k")])
    finally:
        await client.aclose()

    assert all(outcome.error is None for outcome in first + again)
    assert {outcome.external_id for outcome in first} == set(user_ids)
    for user_id in user_ids:
        assert emulator.api("GET", f"users/{user_id}").json()["user"]["active"] is False
    assert emulator.stats()["deletes"] == 2


async def test_client_maps_429_5xx_and_dead_connections_to_the_error_tree(
    emulator: Emulator,
) -> None:
    client = client_for(emulator)
    dead = ZendeskClient(f"http://127.0.0.1:{free_port()}", AGENT, TOKEN)
    try:
        emulator.inject(throttle=True)
        with pytest.raises(RateLimited) as limited:
            await client.upsert([upsert("c-1", name="Ada")])
        emulator.inject(error_rate=1.0, error_status=503)
        with pytest.raises(TransientError) as failing:
            await client.upsert([upsert("c-1", name="Ada")])
        emulator.inject(outage=True)
        with pytest.raises(TransientError):
            await client.archive([Archive("c-1", "123", "k")])
        with pytest.raises(TransientError):
            await dead.upsert([upsert("c-1", name="Ada")])
    finally:
        emulator.inject()
        await client.aclose()
        await dead.aclose()

    assert limited.value.retry_after == 1.0
    assert failing.value.status == 503
    assert emulator.stats()["users"] == 0


async def test_client_wrong_token_is_permanent_and_never_shown(emulator: Emulator) -> None:
    client = client_for(emulator, token="wrong-token")
    try:
        with pytest.raises(PermanentError) as refused:
            await client.upsert([upsert("c-1", name="Ada")])
    finally:
        await client.aclose()

    assert refused.value.status == 401
    assert "Couldn't authenticate you" in refused.value.body
    assert "wrong-token" not in repr(client)
    assert "wrong-token" not in str(refused.value)


async def test_client_reads_the_quota_from_zendesk_headers(emulator: Emulator) -> None:
    client = client_for(emulator)
    try:
        assert client.quotas() == []
        await client.upsert([upsert("c-1", name="Ada")])
        quota = client.quotas()
    finally:
        await client.aclose()

    requests_made = emulator.stats()["requests"]
    assert len(quota) == 1
    assert quota[0] == Quota(200, 200 - requests_made, 60.0, quota[0].reset_after)
    assert quota[0].reset_after is not None and 0 < quota[0].reset_after <= 60
