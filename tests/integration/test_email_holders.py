"""Who holds each email in the targets (`sync.claim_emails`) and the decision on a customer
given an email another holds (`crmsync.identity.decide_collision`), against a real
PostgreSQL: claims in batch order, idempotent replays, an email handed to a waiting customer
only once the targets have let it go, and one review item per collision however often it is
decided."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from crmsync.domain.collisions import EmailClaim
from crmsync.domain.customer import normalise_customer
from crmsync.domain.identity import Thresholds
from crmsync.identity import Claimed, claim_emails, decide_collision, settle_emails

ADA = "ada@example.com"


def _customer(conn: psycopg.Connection[Any], created: str, **fields: Any) -> str:
    cid = str(uuid.uuid4())
    columns = ["id", "created_at", *fields]
    conn.execute(
        f"insert into public.customers ({', '.join(columns)})"
        f" values ({', '.join(['%s'] * len(columns))})",
        (cid, created, *fields.values()),
    )
    return cid


async def _claim(dsn: str, *claims: tuple[str, str | None]) -> list[Claimed]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await claim_emails(conn, [EmailClaim(*c) for c in claims])


async def _settle(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await settle_emails(conn)


def _link(dsn: str, customer_id: str, *, archived: bool = False) -> None:
    """The customer's CRM record, as the adapter records it after a write (or an archive)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into sync.identity_links (system, external_id, customer_id, method,"
            " pushed_hash, pushed_at, archived_at) values ('crm', %s, %s, 'created', 'h', now(),"
            " case when %s then now() end) on conflict (system, external_id) do update"
            " set pushed_at = now(), archived_at = excluded.archived_at",
            (f"c-{customer_id}", customer_id, archived),
        )


def _holders(dsn: str) -> list[tuple[str, str, bool]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select email, customer_id::text, released_at is not null from sync.email_holders"
            " order by email"
        ).fetchall()


async def test_an_email_is_handed_over_only_once_its_holders_records_let_it_go(
    postgres: str,
) -> None:
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    # A gets it; B and C wait; a replay of B's claim changes nothing.
    assert await _claim(postgres, (a, ADA), (b, ADA)) == [Claimed(a), Claimed(a)]
    _link(postgres, a)
    assert await _claim(postgres, (b, ADA), (c, ADA)) == [Claimed(a), Claimed(a)]

    # A takes another address: it gives ADA up, but its CRM record still carries it, so B
    # (read again) waits for the hand-over, with no question to ask.
    assert await _claim(postgres, (a, "ada@analytical.example")) == [Claimed(a)]
    assert await _claim(postgres, (b, ADA)) == [Claimed(a, releasing=True)]
    assert await _settle(postgres) == []
    # The adapter wrote A's record since: ADA goes to B, who waited longest; both are named.
    _link(postgres, a)
    assert await _settle(postgres) == [b, c]
    assert await _settle(postgres) == []  # settled once
    assert await _claim(postgres, (b, ADA), (c, ADA)) == [Claimed(b), Claimed(b)]

    # B deleted, with no record anywhere: C gets it at once; C deleted before it was read
    # again: ADA is nobody's.
    assert await _claim(postgres, (b, None)) == [Claimed(None)]
    assert await _settle(postgres) == [c]
    assert await _claim(postgres, (c, None)) == [Claimed(None)]
    assert await _settle(postgres) == []
    assert _holders(postgres) == [("ada@analytical.example", a, False)]
    with psycopg.connect(postgres) as conn:
        assert conn.execute("select count(*) from sync.email_waiting").fetchone() == (0,)


async def test_claims_in_one_batch_are_answered_in_order(postgres: str) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    answers = await _claim(
        postgres,
        (a, ADA),  # A gets it
        (b, ADA),  # B waits
        (a, None),  # A is deleted: it gives ADA up
        (b, ADA),  # B waits for the hand-over
        (a, "x@example.com"),  # A, restored with another address
        (a, ADA),  # ... then given ADA again: it keeps it, and gives x up
    )
    assert answers == [
        Claimed(a), Claimed(a), Claimed(None), Claimed(a, releasing=True), Claimed(a), Claimed(a),
    ]  # fmt: skip
    assert _holders(postgres) == [(ADA, a, False), ("x@example.com", a, True)]


async def test_an_email_given_up_by_a_merge_goes_to_the_customer_it_was_merged_into(
    postgres: str,
) -> None:
    with psycopg.connect(postgres, autocommit=True) as conn:
        ada = _customer(conn, "2024-02-01", email=ADA)
        bob = _customer(conn, "2024-03-01", email=ADA)
        carol = _customer(conn, "2020-01-01", email="carol@example.com")
    assert await _claim(postgres, (ada, ADA), (carol, "carol@example.com")) == [
        Claimed(ada), Claimed(carol),
    ]  # fmt: skip
    assert await _claim(postgres, (bob, ADA), (carol, ADA)) == [Claimed(ada), Claimed(ada)]
    _link(postgres, ada)
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(
            "update public.customers set merged_into = %s, deleted_at = now() where id = %s",
            (carol, ada),
        )
    assert await _claim(postgres, (ada, None)) == [Claimed(None)]
    assert await _settle(postgres) == []  # Ada's contact is not archived yet
    _link(postgres, ada, archived=True)
    # Bob waited as long, but Ada's email goes with Ada into Carol; both are read again.
    handed = await _settle(postgres)
    assert handed[0] == carol and sorted(handed) == sorted([bob, carol])
    # Carol's recheck was lost: a while later she is named again.
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("update sync.email_holders set since = now() - interval '1 minute'")
    assert await _settle(postgres) == [carol]
    # Carol, read again, gets it and gives her old address up; no record carries that one.
    assert await _claim(postgres, (carol, ADA)) == [Claimed(carol)]
    assert await _settle(postgres) == []
    assert _holders(postgres) == [(ADA, carol, False)]


async def test_a_collision_is_merged_when_one_person_else_reviewed_once(postgres: str) -> None:
    thresholds = Thresholds()
    with psycopg.connect(postgres, autocommit=True) as conn:
        ada = _customer(conn, "2024-01-01", email=ADA, first_name="Ada", last_name="Lovelace")
        bob = _customer(conn, "2024-02-01", email=ADA, first_name="Bob", last_name="Builder")
        again = _customer(conn, "2024-03-01", email=ADA.upper(), first_name="ada",
                          last_name="Lovelace")  # fmt: skip

    def golden(cid: str, **fields: Any) -> Any:
        return normalise_customer({"id": cid, "email": ADA, **fields})

    async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as conn:
        bob_record = golden(bob, first_name="Bob", last_name="Builder")
        for _ in range(3):  # redelivered: still one item
            collision = await decide_collision(conn, bob_record, ada, thresholds, [])
            assert collision.outcome == "review"
        merged = await decide_collision(
            conn, golden(again, first_name="ada", last_name="Lovelace"), ada, thresholds, []
        )
        assert merged.outcome == "merged" and merged.merged is not None
        assert (merged.merged.survivor, merged.merged.loser) == (ada, again)
        # Decided again after the merge: nothing more to do; the loser's delete is on its way.
        replay = await decide_collision(
            conn, golden(again, first_name="ada", last_name="Lovelace"), ada, thresholds, []
        )
        assert replay.outcome == "wait"
    with psycopg.connect(postgres, autocommit=True) as conn:
        items = conn.execute(
            "select kind, key, proposed->>'email', proposed->>'held_by', proposed->>'given_to',"
            " reason from sync.review_queue"
        ).fetchall()
        assert len(items) == 1
        kind, key, email, held_by, given_to, reason = items[0]
        assert (kind, key) == ("duplicate", f"duplicate:{min(ada, bob)}:{max(ada, bob)}")
        assert (email, held_by, given_to) == (ADA, ada, bob)
        assert ADA in reason and "synced without" in reason
        # A person keeps them apart: decided again, the pair stays apart.
        conn.execute(
            "insert into sync.kept_apart (customer_a, customer_b, decided_by, reason)"
            " values (%s, %s, 'tester', 'test')",
            (min(ada, bob), max(ada, bob)),
        )
        # ... and apart from whoever absorbs Ada by a merge.
        carol = _customer(conn, "2020-01-01", email=ADA, first_name="Carol")
        conn.execute("update public.customers set merged_into = %s where id = %s", (carol, ada))
    async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as conn:
        assert (await decide_collision(conn, bob_record, carol, thresholds, [])).outcome == "apart"
