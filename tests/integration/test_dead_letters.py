"""Dead letters against a real PostgreSQL: the same failure (stage, target, key, error) seen
again is counted on its one open letter; a replayed letter whose failure comes back is
followed by a new open letter; the migration collapses letters written before."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from canonical_db.migrate import all_migrations
from crmsync.dead_letters import DeadLetter, insert_dead_letter
from crmsync.dlq import FAILED_AGAIN, ReplayReport, _mark_replayed, list_letters

CUSTOMER = "7d0c9a56-5b4e-4c55-9d7e-0e1c2a3b4c5d"
REFUSED = 'HTTP 400: {"message":"Property values were not valid","category":"VALIDATION_ERROR"}'


def _refused(offset: int, error: str = REFUSED, key: str | None = CUSTOMER) -> DeadLetter:
    """One delivery of the same command refused again: a re-snapshot gives it a new offset."""
    return DeadLetter(
        stage="deliver", target="crm", key=key, error=error,
        payload={"customer_id": key, "properties": {"email": "x"}, "offset": offset},
        source={"topic": "crmsync.public.customers", "partition": 0, "offset": offset},
    )  # fmt: skip


async def _insert(dsn: str, *letters: DeadLetter) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return [await insert_dead_letter(conn, letter) for letter in letters]


def _rows(dsn: str, where: str = "true", params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "select id, stage, target, key, payload, source, error, attempts, occurrences,"
            " created_at, last_failed_at, replayed_at"
            f" from sync.dead_letters where {where} order by id",
            params,
        ).fetchall()


async def test_the_same_failure_seen_n_times_is_one_letter_counted_n_times(postgres: str) -> None:
    seen_last = []
    ids = []
    for offset in range(5):
        ids += await _insert(postgres, _refused(offset))
        (row,) = _rows(postgres)
        seen_last.append(row["last_failed_at"])

    assert set(ids) == {row["id"]}  # each occurrence answered with the one letter's id
    assert row["occurrences"] == 5
    assert row["attempts"] == 5  # the tries of every occurrence
    assert row["payload"]["offset"] == 0 and row["source"]["offset"] == 0  # as first seen
    assert row["replayed_at"] is None
    assert seen_last[0] == row["created_at"]
    assert all(before < after for before, after in itertools.pairwise(seen_last))


async def test_another_error_key_target_or_stage_is_another_letter(postgres: str) -> None:
    other_customer = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    await _insert(
        postgres,
        _refused(1),
        _refused(2, error='HTTP 409: {"message":"Contact already exists. Existing ID: 12"}'),
        _refused(3, key=other_customer),
        _refused(4).model_copy(update={"target": "support"}),
        _refused(5).model_copy(update={"stage": "inbound"}),
        _refused(6),
    )
    rows = _rows(postgres)
    assert [
        (r["stage"], r["target"], r["key"], r["error"][:8], r["occurrences"]) for r in rows
    ] == [
        ("deliver", "crm", CUSTOMER, "HTTP 400", 2),
        ("deliver", "crm", CUSTOMER, "HTTP 409", 1),
        ("deliver", "crm", other_customer, "HTTP 400", 1),
        ("deliver", "support", CUSTOMER, "HTTP 400", 1),
        ("inbound", "crm", CUSTOMER, "HTTP 400", 1),
    ]


async def test_letters_without_a_key_are_told_apart_by_their_payload(postgres: str) -> None:
    """A record with no key is named by its payload alone: two records that failed the same
    way are two letters (nothing is lost), the same record again is one."""

    def unreadable(payload: Any, key: str | None) -> DeadLetter:
        return DeadLetter(stage="audit", key=key, payload=payload, error="unreadable change")

    await _insert(
        postgres,
        unreadable({"change": 1}, None),
        unreadable({"change": 2}, None),
        unreadable({"change": 1}, None),
        unreadable({"change": 2}, ""),  # an empty Kafka key names nothing either
        unreadable(None, None),
        unreadable(None, None),
    )
    rows = _rows(postgres)
    assert [(r["payload"], r["occurrences"]) for r in rows] == [
        ({"change": 1}, 2),
        ({"change": 2}, 2),
        (None, 2),
    ]


async def test_concurrent_writers_of_one_failure_make_one_letter(postgres: str) -> None:
    """Adapters and stream workers write letters at once: the upsert, not a read first, decides."""
    await asyncio.gather(*(_insert(postgres, *[_refused(n)] * 10) for n in range(4)))
    (row,) = _rows(postgres)
    assert row["occurrences"] == 40


async def test_a_failure_back_after_its_letter_was_replayed_opens_a_new_letter(
    postgres: str,
) -> None:
    (letter,) = set(await _insert(postgres, _refused(1), _refused(2)))
    async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as conn:
        report = ReplayReport()
        await _mark_replayed(conn, {letter: 2}, report)
    assert (report.letters, report.not_replayed) == (1, [])

    (again,) = await _insert(postgres, _refused(3))

    assert again != letter
    old, new = _rows(postgres)
    assert (old["id"], old["occurrences"]) == (letter, 2)  # as it was when replayed
    assert old["replayed_at"] is not None
    assert (new["id"], new["occurrences"], new["replayed_at"]) == (again, 1, None)
    assert new["payload"]["offset"] == 3
    open_ids = [row["id"] for row in list_letters(postgres)]
    assert open_ids == [again]  # what `dlq list` and `status` count as open
    assert [row["id"] for row in list_letters(postgres, everything=True)] == [again, letter]
    await _insert(postgres, _refused(4))
    assert [(r["id"], r["occurrences"]) for r in _rows(postgres)] == [(letter, 2), (again, 2)]


async def test_a_letter_seen_again_while_it_was_replayed_stays_open(postgres: str) -> None:
    """The replay read the letter seen once; it failed again before the replay marked it
    (the replayed command refused the same way): marking it would hide that failure."""
    (letter,) = await _insert(postgres, _refused(1))
    await _insert(postgres, _refused(2))
    async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as conn:
        report = ReplayReport()
        await _mark_replayed(conn, {letter: 1}, report)

    assert report.letters == 0
    assert report.not_replayed == [(letter, FAILED_AGAIN)]
    (row,) = _rows(postgres)
    assert (row["occurrences"], row["replayed_at"]) == (2, None)


async def test_dlq_list_shows_the_count_and_last_seen_last_seen_first(postgres: str) -> None:
    old = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    await _insert(postgres, _refused(1, key=old), _refused(2), _refused(3, key=old))

    letters = list_letters(postgres)

    assert [(letter["key"], letter["occurrences"]) for letter in letters] == [
        (old, 2),  # first written, but seen last
        (CUSTOMER, 1),
    ]
    assert letters[0]["last_failed_at"] > letters[0]["created_at"]
    since = letters[1]["last_failed_at"] + dt.timedelta(microseconds=1)
    assert [letter["key"] for letter in list_letters(postgres, since=since)] == [old]


def test_the_migration_collapses_letters_written_before_it(postgres: str) -> None:
    (migration,) = [m for m in all_migrations() if m.version == "0009"]
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("drop index sync.dead_letters_open_failure")  # as before 0009
        insert = (
            "insert into sync.dead_letters"
            " (stage, target, key, payload, error, attempts, last_failed_at, replayed_at)"
            " values ('deliver', 'crm', %s, %s, %s, %s, %s, %s) returning id"
        )
        day = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)

        def letter(key: str, n: int, error: str = REFUSED, replayed: bool = False) -> int:
            row = conn.execute(
                insert,
                (key, Jsonb({"n": n}), error, n,
                 day + dt.timedelta(hours=n), day if replayed else None),
            ).fetchone()  # fmt: skip
            assert row is not None
            return int(row[0])

        first = letter(CUSTOMER, 1)
        letter(CUSTOMER, 2)
        replayed = letter(CUSTOMER, 3, replayed=True)  # history: kept as it is
        letter(CUSTOMER, 4)
        other = letter(CUSTOMER, 5, error="HTTP 409: exists")

        conn.execute(migration.sql)

        rows = conn.execute(
            "select id, payload->>'n', attempts, occurrences, last_failed_at, replayed_at is null"
            " from sync.dead_letters order by id"
        ).fetchall()
        assert rows == [
            (first, "1", 1 + 2 + 4, 3, day + dt.timedelta(hours=4), True),
            (replayed, "3", 3, 1, day + dt.timedelta(hours=3), False),
            (other, "5", 5, 1, day + dt.timedelta(hours=5), True),
        ]
        with pytest.raises(psycopg.errors.UniqueViolation):  # the index is back
            letter(CUSTOMER, 6)
