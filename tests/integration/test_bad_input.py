"""Bad input end to end: every case of the bad-input corpus, inserted into public.customers
among valid rows, ends normalised in every target or dead-lettered once with a readable
reason, never in some targets and missing from others; the rows around it are delivered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.conftest import RunningStack
from tests.integration.targets import Target, targets_of

pytestmark = pytest.mark.timeout(600)

StartStack = Callable[..., RunningStack]


def person(n: int, **extra: object) -> dict[str, object]:
    return {
        "email": f"bad.input.{n}@example.com",
        "first_name": f"First{n}",
        "last_name": f"Last{n}",
        "country": "DE",
        "plan_tier": "pro",
        **extra,
    }


#: Refused cases: the row, and what its dead letter must say.
REFUSED: dict[str, tuple[dict[str, object], tuple[str, ...]]] = {
    "a 10,000-character name": (
        person(2, first_name="A" * 10_000),
        ("first_name", "billing (stripe) takes at most 256", "support (zendesk) takes at most 255"),
    ),
    "a Unicode email": (
        person(3, email="jürgen.müller@例え.jp"),
        ("email", "billing (stripe) takes only ASCII"),
    ),
    "a birth date in 2100": (
        person(4, birth_date="2100-01-01"),
        ("birth_date", "2100-01-01 is in the future"),
    ),
    "no email and no name": (
        person(5, email=None, first_name=None, last_name=None),
        ("support (zendesk) requires 'name'", "first_name or last_name"),
    ),
}


def test_each_bad_input_reaches_every_target_normalised_or_none_with_one_dead_letter(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    targets = targets_of(stack.settings)
    valid = [person(1), person(6), person(7)]
    escaped = person(
        8,
        first_name="\x1b[31mGrace\x1b[0m",
        last_name="Hop\x08per\x07",  # (Postgres text holds no NUL)
        street="\x1b]0;owned\x07Unter den Linden 1",
        city="\x1b[1mBerlin\x1b[0m\r\n",
    )
    updated = person(9)
    rows = [valid[0], *(row for row, _ in REFUSED.values()), valid[1], escaped, updated, valid[2]]
    ids = stack.insert_customers(rows)
    names = ["valid", *REFUSED, "valid", "escaped", "updated", "valid"]
    by_case = dict(zip(ids, names, strict=True))
    delivered = [cid for cid, name in by_case.items() if name in ("valid", "escaped", "updated")]

    def holding(cids: list[str]) -> Callable[[], dict[str, dict[str, Any]] | None]:
        def probe() -> dict[str, dict[str, Any]] | None:
            records = {name: target.records() for name, target in targets.items()}
            held = all(cid in records[name] for cid in cids for name in targets)
            return records if held else None

        return probe

    records = wait_until(holding(delivered), timeout=300, interval=1, what="valid rows delivered")
    escaped_id = ids[rows.index(escaped)]
    contact = records["crm"][escaped_id]["properties"]
    assert (contact["firstname"], contact["lastname"]) == ("Grace", "Hopper")
    assert contact["city"] == "Berlin"
    customer = records["billing"][escaped_id]
    assert customer["name"] == "Grace Hopper"
    assert customer["address"]["line1"] == "Unter den Linden 1"
    assert customer["address"]["city"] == "Berlin"
    assert records["support"][escaped_id]["name"] == "Grace Hopper"

    # An update no target can take: dead-lettered; every target keeps the state before it.
    updated_id = ids[rows.index(updated)]
    stack.sql("update public.customers set last_name = %s where id = %s", ("L" * 300, updated_id))
    refused_ids = [cid for cid, name in by_case.items() if name in REFUSED] + [updated_id]

    def letters() -> dict[str, list[str]] | None:
        found: dict[str, list[str]] = {}
        for key, error, seen in stack.sql(
            "select key, error, occurrences from sync.dead_letters where stage = 'ingest'"
        ):
            for cid in refused_ids:
                if cid in key:
                    found.setdefault(cid, []).extend([error] * seen)
        return found if set(found) == set(refused_ids) else None

    by_id = wait_until(letters, timeout=120, what="a dead letter for every refused row")
    for cid, name in by_case.items():
        if name not in REFUSED:
            continue
        (error,) = by_id[cid]  # once
        for needle in REFUSED[name][1]:
            assert needle in error, (name, error)
    (error,) = by_id[updated_id]
    assert "last_name" in error and "support (zendesk) takes at most 255" in error

    # The refused rows were decided at ingest (their letters exist): no target has any of them,
    # and the refused update left the customer as it was everywhere.
    final = {name: target.records() for name, target in targets.items()}
    for name, held in final.items():
        assert not set(held) & set(refused_ids[:-1]), name
        assert set(delivered) <= set(held), name
    assert _last_name(targets["crm"], final["crm"][updated_id]) == "Last9"
    assert final["billing"][updated_id]["name"] == "First9 Last9"
    assert final["support"][updated_id]["name"] == "First9 Last9"
    for target in targets.values():
        assert target.stats()["creates"] == len(delivered)
    letters_now = stack.sql(
        "select count(*), sum(occurrences) from sync.dead_letters where stage = 'ingest'"
    )
    assert letters_now == [(len(refused_ids), len(refused_ids))]


def _last_name(target: Target, contact: dict[str, Any]) -> str:
    assert target.vendor == "hubspot"
    return str(contact["properties"]["lastname"])
