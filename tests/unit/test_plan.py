"""plan_writes: a batch of commands becomes few writes, in waves that keep per-customer order."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from adapters.plan import Write, plan_writes
from crmsync.domain.decide import ARCHIVED_HASH, Command
from crmsync.domain.events import SourcePosition

_offsets = itertools.count()


def cmd(
    customer: str, action: str = "upsert", desired_hash: str | None = None, **props: Any
) -> Command:
    offset = next(_offsets)
    return Command(
        idempotency_key=f"key-{offset}",
        target="crm",
        customer_id=customer,
        action=action,  # type: ignore[arg-type]
        id_property="crmsync_id",
        properties={**props, "crmsync_id": customer},
        desired_hash=desired_hash or (ARCHIVED_HASH if action == "archive" else f"h{offset}"),
        source=SourcePosition(topic="t", partition=0, offset=offset, op="u"),
    )


def shape(waves: list[list[Write]]) -> list[list[tuple[str, str]]]:
    return [[(w.customer_id, w.action) for w in wave] for wave in waves]


def test_no_commands_no_waves() -> None:
    assert plan_writes([]) == []


def test_consecutive_upserts_for_one_customer_merge() -> None:
    first = cmd("a", firstname="Alice", city="Berlin", desired_hash="h-first")
    second = cmd("a", firstname="Alicia", email="alice@example.com", desired_hash="h-second")
    waves = plan_writes([first, second])
    assert shape(waves) == [[("a", "upsert")]]
    write = waves[0][0]
    assert write.properties == {
        "firstname": "Alicia",  # later wins
        "city": "Berlin",
        "email": "alice@example.com",
        "crmsync_id": "a",
    }
    assert write.desired_hash == "h-second"
    assert write.id_property == "crmsync_id"
    assert write.commands == [first, second]


def test_merging_does_not_alter_the_commands() -> None:
    first = cmd("a", firstname="Alice")
    plan_writes([first, cmd("a", firstname="Alicia")])
    assert first.properties == {"firstname": "Alice", "crmsync_id": "a"}


def test_an_archive_splits_runs_of_upserts() -> None:
    commands = [cmd("a", city="Berlin"), cmd("a", "archive"), cmd("a", city="Hamburg")]
    waves = plan_writes(commands)
    assert shape(waves) == [[("a", "upsert")], [("a", "archive")], [("a", "upsert")]]
    assert [w.commands for wave in waves for w in wave] == [[c] for c in commands]
    assert waves[2][0].properties == {"city": "Hamburg", "crmsync_id": "a"}


def test_consecutive_archives_merge() -> None:
    first, second = cmd("a", "archive"), cmd("a", "archive")
    waves = plan_writes([first, second])
    assert shape(waves) == [[("a", "archive")]]
    assert waves[0][0].commands == [first, second]


def test_different_customers_share_wave_zero() -> None:
    waves = plan_writes([cmd("a", city="X"), cmd("b", city="Y"), cmd("c", "archive")])
    assert shape(waves) == [[("a", "upsert"), ("b", "upsert"), ("c", "archive")]]


def test_per_customer_order_is_kept_across_waves() -> None:
    commands = [
        cmd("a", city="1"),
        cmd("b", city="1"),
        cmd("a", "archive"),
        cmd("b", city="2"),  # merges into b's first write
        cmd("a", city="3"),
        cmd("c", "archive"),
    ]
    waves = plan_writes(commands)
    assert shape(waves) == [
        [("a", "upsert"), ("b", "upsert"), ("c", "archive")],
        [("a", "archive")],
        [("a", "upsert")],
    ]
    assert waves[0][1].properties == {"city": "2", "crmsync_id": "b"}


# --- properties -------------------------------------------------------------------------------

_COMMANDS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["upsert", "upsert", "archive"]),
        st.dictionaries(st.sampled_from(["city", "email", "firstname"]), st.text(max_size=3)),
    ),
    max_size=25,
).map(lambda specs: [cmd(c, action, **props) for c, action, props in specs])


def _replay(items: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, Any] | None]:
    crm: dict[str, dict[str, Any] | None] = {}
    for customer, action, properties in items:
        if action == "archive":
            crm[customer] = None
        else:
            crm[customer] = {**(crm.get(customer) or {}), **properties}
    return crm


@given(_COMMANDS)
def test_waves_keep_every_command_in_per_customer_order(commands: list[Command]) -> None:
    waves = plan_writes(commands)
    for wave in waves:
        customers = [w.customer_id for w in wave]
        assert len(customers) == len(set(customers)), "one write per customer per wave"
    for customer in {c.customer_id for c in commands}:
        planned = [
            c for wave in waves for w in wave if w.customer_id == customer for c in w.commands
        ]
        assert planned == [c for c in commands if c.customer_id == customer]


@given(_COMMANDS)
def test_no_two_neighbouring_writes_could_have_merged(commands: list[Command]) -> None:
    waves = plan_writes(commands)
    for customer in {c.customer_id for c in commands}:
        actions = [w.action for wave in waves for w in wave if w.customer_id == customer]
        assert all(a != b for a, b in itertools.pairwise(actions))


@given(_COMMANDS)
def test_sending_the_waves_equals_sending_every_command(commands: list[Command]) -> None:
    one_by_one = _replay([(c.customer_id, c.action, c.properties) for c in commands])
    planned = _replay(
        [(w.customer_id, w.action, w.properties) for wave in plan_writes(commands) for w in wave]
    )
    assert planned == one_by_one
    for wave in plan_writes(commands):
        for write in wave:
            assert write.desired_hash == write.commands[-1].desired_hash
