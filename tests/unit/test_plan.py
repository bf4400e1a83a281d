"""plan_writes: a batch of commands becomes few writes, in waves that keep per-customer order;
inside a wave, the most urgent lane goes first (consent, create, update, activity)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.plan import Write, plan_writes
from crmsync.domain.decide import ARCHIVED_HASH, LANES, Command, Lane
from crmsync.domain.events import SourcePosition

_offsets = itertools.count()


def cmd(
    customer: str,
    action: str = "upsert",
    desired_hash: str | None = None,
    *,
    lane: Lane = "update",
    full: bool = False,
    **props: Any,
) -> Command:
    offset = next(_offsets)
    return Command(
        idempotency_key=f"key-{offset}",
        target="crm",
        customer_id=customer,
        action=action,  # type: ignore[arg-type]
        id_property="crmsync_id",
        properties={**props, "crmsync_id": customer},
        full=full,
        lane=lane,
        desired_hash=desired_hash or (ARCHIVED_HASH if action == "archive" else f"h{offset}"),
        source=SourcePosition(topic="t", partition=0, offset=offset, op="u"),
    )


def shape(waves: list[list[Write]]) -> list[list[tuple[str, str]]]:
    return [[(w.customer_id, w.action) for w in wave] for wave in waves]


def lanes(waves: list[list[Write]]) -> list[list[tuple[str, str]]]:
    return [[(w.customer_id, w.lane) for w in wave] for wave in waves]


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


# --- lanes ------------------------------------------------------------------------------------


def test_a_wave_goes_out_consent_first_then_creates_updates_activity() -> None:
    commands = [
        cmd("a", lane="activity"),
        cmd("b", lane="update"),
        cmd("c", lane="create", full=True),
        cmd("d", lane="consent"),
    ]
    waves = plan_writes(commands)
    assert lanes(waves) == [[("d", "consent"), ("c", "create"), ("b", "update"), ("a", "activity")]]


def test_inside_a_lane_the_arrival_order_is_kept() -> None:
    commands = [
        cmd("a", lane="update"),
        cmd("b", lane="consent"),
        cmd("c", lane="update"),
        cmd("d", lane="consent"),
        cmd("e", lane="create"),
    ]
    assert lanes(plan_writes(commands)) == [
        [("b", "consent"), ("d", "consent"), ("e", "create"), ("a", "update"), ("c", "update")]
    ]


def test_archives_are_ordered_by_their_lane_too() -> None:
    waves = plan_writes([cmd("a", "archive"), cmd("b", lane="create", full=True)])
    assert shape(waves) == [[("b", "upsert"), ("a", "archive")]]
    assert waves[0][1].lane == "update"


def test_a_consent_write_never_overtakes_the_same_customers_earlier_write() -> None:
    commands = [
        cmd("a", lane="update", city="Berlin"),
        cmd("b", lane="create", full=True),
        cmd("a", "archive"),
        cmd("a", lane="consent", crmsync_consent_email=False),
    ]
    waves = plan_writes(commands)
    assert lanes(waves) == [
        [("b", "create"), ("a", "update")],
        [("a", "update")],  # the archive
        [("a", "consent")],
    ]
    assert shape(waves)[1:] == [[("a", "archive")], [("a", "upsert")]]


def test_a_consent_write_overtakes_other_customers_in_its_wave_only() -> None:
    commands = [
        cmd("a", lane="update"),
        cmd("a", "archive"),
        cmd("b", lane="update"),
        cmd("a", lane="consent"),  # a's third write: wave 2, after b's wave-0 write
    ]
    flat = [(w.customer_id, w.action, w.lane) for wave in plan_writes(commands) for w in wave]
    assert flat == [
        ("a", "upsert", "update"),
        ("b", "upsert", "update"),
        ("a", "archive", "update"),
        ("a", "upsert", "consent"),
    ]


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [
        ("update", "consent", "consent"),
        ("consent", "update", "consent"),
        ("consent", "activity", "consent"),
        ("create", "update", "create"),
        ("update", "create", "create"),
        ("activity", "update", "update"),
        ("activity", "activity", "activity"),
    ],
)
def test_a_merged_write_keeps_the_most_urgent_lane(first: Lane, second: Lane, merged: Lane) -> None:
    waves = plan_writes([cmd("a", lane=first), cmd("a", lane=second)])
    assert len(waves) == 1 and len(waves[0]) == 1
    assert waves[0][0].lane == merged


@pytest.mark.parametrize(
    ("first", "second", "merged"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_a_merged_write_is_full_if_any_command_was(first: bool, second: bool, merged: bool) -> None:
    write = plan_writes([cmd("a", full=first), cmd("a", full=second)])[0][0]
    assert write.full is merged


def test_a_write_takes_lane_and_full_from_its_first_command() -> None:
    write = plan_writes([cmd("a", lane="create", full=True)])[0][0]
    assert (write.lane, write.full) == ("create", True)
    write = plan_writes([cmd("a", lane="activity")])[0][0]
    assert (write.lane, write.full) == ("activity", False)


def test_absorb_merges_one_command_into_a_write() -> None:
    first = cmd("a", lane="update", city="Berlin", desired_hash="h1")
    write = plan_writes([first])[0][0]
    second = cmd("a", lane="consent", full=True, city="Hamburg", desired_hash="h2")
    write.absorb(second)
    assert write.properties == {"city": "Hamburg", "crmsync_id": "a"}
    assert (write.lane, write.full, write.desired_hash) == ("consent", True, "h2")
    assert write.commands == [first, second]


# --- idempotency keys -------------------------------------------------------------------------


def test_the_idempotency_key_is_stable_across_redeliveries() -> None:
    commands = [cmd("a", city="X"), cmd("a", email="x@example.com"), cmd("b", "archive")]
    first = plan_writes(commands)
    again = plan_writes([c.model_copy() for c in commands])  # the same records, read again
    keys = [w.idempotency_key for wave in first for w in wave]
    assert keys == [w.idempotency_key for wave in again for w in wave]
    assert len(set(keys)) == 2
    assert all(len(key) == 32 for key in keys)


def test_idempotency_keys_differ_by_customer_action_and_desired_state() -> None:
    keys = {
        plan_writes([cmd("a", desired_hash="h1")])[0][0].idempotency_key,
        plan_writes([cmd("b", desired_hash="h1")])[0][0].idempotency_key,
        plan_writes([cmd("a", desired_hash="h2")])[0][0].idempotency_key,
        plan_writes([cmd("a", "archive")])[0][0].idempotency_key,
        plan_writes([cmd("b", "archive")])[0][0].idempotency_key,
    }
    assert len(keys) == 5


def test_a_revert_to_an_earlier_state_is_a_new_write_with_a_new_key() -> None:
    created = plan_writes([cmd("a", lane="create", full=True, city="Berlin", desired_hash="h0")])
    edited = plan_writes([cmd("a", city="Hamburg", desired_hash="h1")])
    undone = plan_writes([cmd("a", city="Berlin", desired_hash="h0")])
    keys = [waves[0][0].idempotency_key for waves in (created, edited, undone)]
    assert len(set(keys)) == 3


# --- properties -------------------------------------------------------------------------------

_COMMANDS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["upsert", "upsert", "archive"]),
        st.dictionaries(st.sampled_from(["city", "email", "firstname"]), st.text(max_size=3)),
        st.sampled_from(LANES),
        st.booleans(),
    ),
    max_size=25,
).map(
    lambda specs: [
        cmd(c, action, lane=lane, full=full, **props) for c, action, props, lane, full in specs
    ]
)


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


@given(_COMMANDS)
def test_each_wave_is_ordered_by_lane(commands: list[Command]) -> None:
    for wave in plan_writes(commands):
        ranks = [LANES.index(w.lane) for w in wave]
        assert ranks == sorted(ranks)


@given(_COMMANDS)
def test_sent_in_order_each_customers_writes_keep_command_order(commands: list[Command]) -> None:
    """Flattened wave by wave (as they are sent), lanes never reorder one customer's writes."""
    sent = [w for wave in plan_writes(commands) for w in wave]
    for customer in {c.customer_id for c in commands}:
        planned = [c for w in sent if w.customer_id == customer for c in w.commands]
        assert planned == [c for c in commands if c.customer_id == customer]


@given(_COMMANDS)
def test_a_write_has_its_most_urgent_lane_and_is_full_if_any_command_was(
    commands: list[Command],
) -> None:
    for wave in plan_writes(commands):
        for write in wave:
            assert write.lane == min((c.lane for c in write.commands), key=LANES.index)
            assert write.full == any(c.full for c in write.commands)
