"""Merges in the database (`sync.merge_customers`, `sync.unmerge_customers`) and the identity
index's key table, against a real PostgreSQL: what a merge moves, keeps and closes, and that
undoing it gives everything back."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from crmsync.identity import MERGE_SQL


def _customer(conn: psycopg.Connection[Any], created: str, **fields: Any) -> str:
    cid = str(uuid.uuid4())
    columns = ["id", "created_at", *fields]
    conn.execute(
        f"insert into public.customers ({', '.join(columns)})"
        f" values ({', '.join(['%s'] * len(columns))})",
        (cid, created, *fields.values()),
    )
    return cid


def _link(conn: psycopg.Connection[Any], system: str, external_id: str, customer: str) -> None:
    conn.execute(
        "insert into sync.identity_links (system, external_id, customer_id, method, pushed_hash)"
        " values (%s, %s, %s, 'created', 'h')",
        (system, external_id, customer),
    )


def test_a_merge_keeps_the_first_customer_moves_or_keeps_links_and_an_unmerge_undoes_it(
    postgres: str,
) -> None:
    with psycopg.connect(postgres, autocommit=True) as conn:
        first = _customer(conn, "2024-01-01", email="ada@example.com", first_name="Ada")
        again = _customer(conn, "2024-02-01", email="ada@example.com", first_name="Ada",
                          phone="+442079460000", plan_tier="pro")  # fmt: skip
        _link(conn, "crm", f"c-{first}", first)
        _link(conn, "billing", f"b-{again}", again)  # the survivor has no billing record
        _link(conn, "crm", f"c-{again}", again)  # ... but has a CRM record of its own
        for cid in (first, again):
            conn.execute(
                "insert into sync.identity_index (customer_id, email, keys)"
                " values (%s, 'ada@example.com', array['e:ada@example.com'])",
                (cid,),
            )
        conn.execute(
            "insert into sync.audit_log (customer_id, system, field, cause, correlation_id)"
            " values (%s, 'canonical', 'phone', '{}', 'x')",
            (again,),
        )
        conn.execute(
            "insert into sync.dead_letters (stage, target, key, error) values"
            " ('deliver', 'crm', %s, 'Contact already exists')",
            (again,),
        )

        # Whatever the order asked, the customer created first survives.
        row = conn.execute(MERGE_SQL, (again, first, "email", 1.0, "tester", ["phone"]))
        merge_id, survivor, loser, moved = row.fetchone()  # type: ignore[misc]
        assert (survivor, loser, moved) == (first, again, ["billing"])
        assert conn.execute(
            "select phone, plan_tier from public.customers where id = %s", (first,)
        ).fetchone() == ("+442079460000", None)  # only the fields it may fill, and only gaps
        assert conn.execute(
            "select merged_into::text, deleted_at is not null from public.customers"
            " where id = %s", (again,),
        ).fetchone() == (first, True)  # fmt: skip
        links = dict(conn.execute(
            "select system || ':' || external_id, customer_id::text from sync.identity_links"
            " where external_id like %s", (f"%-{again}",)).fetchall())  # fmt: skip
        assert links == {f"billing:b-{again}": first, f"crm:c-{again}": again}
        assert conn.execute(
            "select count(*) from sync.identity_keys where customer_id = %s", (again,)
        ).fetchone() == (0,)  # no longer matched
        assert conn.execute(
            "select replayed_at is not null, resolution from sync.dead_letters where key = %s",
            (again,),
        ).fetchone() == (True, f"merged into {first}")
        assert conn.execute(
            "select count(*) from sync.audit_log where customer_id = %s and field = 'phone'",
            (first,),
        ).fetchone() == (1,)
        assert conn.execute(MERGE_SQL, (first, again, "email", 1.0, "tester", [])).fetchone() \
            is None  # merged already  # fmt: skip

        (back,) = conn.execute(
            "select sync.unmerge_customers(%s, 'tester')", (merge_id,)
        ).fetchone()  # type: ignore[misc]
        assert back == ["billing"]
        assert conn.execute(
            "select merged_into, deleted_at, phone from public.customers where id = %s", (again,)
        ).fetchone() == (None, None, "+442079460000")
        assert conn.execute(
            "select phone from public.customers where id = %s", (first,)
        ).fetchone() == (None,)  # the filled value taken back
        assert conn.execute(
            "select customer_id::text from sync.identity_links where external_id = %s",
            (f"b-{again}",),
        ).fetchone() == (again,)
        assert conn.execute(
            "select count(*) from sync.audit_log where customer_id = %s and field = 'phone'",
            (again,),
        ).fetchone() == (1,)
        assert conn.execute(
            "select count(*) from sync.kept_apart where %s in (customer_a, customer_b)"
            " and %s in (customer_a, customer_b)", (first, again),
        ).fetchone() == (1,)  # fmt: skip


def test_the_key_table_follows_the_index(postgres: str) -> None:
    with psycopg.connect(postgres, autocommit=True) as conn:
        cid = str(uuid.uuid4())
        conn.execute(
            "insert into sync.identity_index (customer_id, keys) values (%s, %s)",
            (cid, ["e:x@example.com", "p:+4930123"]),
        )
        keys = "select key from sync.identity_keys where customer_id = %s order by key"
        assert conn.execute(keys, (cid,)).fetchall() == [("e:x@example.com",), ("p:+4930123",)]
        conn.execute(
            "update sync.identity_index set keys = %s where customer_id = %s",
            (["e:y@example.com"], cid),
        )
        assert conn.execute(keys, (cid,)).fetchall() == [("e:y@example.com",)]
        conn.execute("delete from sync.identity_index where customer_id = %s", (cid,))
        assert conn.execute(keys, (cid,)).fetchall() == []
