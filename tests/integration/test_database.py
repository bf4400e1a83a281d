"""The canonical database contract: migrations apply once, in order, and are recorded."""

from __future__ import annotations

import psycopg

from canonical_db import apply_migrations
from canonical_db.migrate import all_migrations


def test_migrations_are_recorded_and_a_second_run_applies_nothing(postgres: str) -> None:
    assert apply_migrations(postgres) == []  # the fixture already applied them
    with psycopg.connect(postgres) as conn:
        ledger = conn.execute("select version from public.crmsync_migrations order by 1")
        assert [row[0] for row in ledger] == [m.version for m in all_migrations()]


def test_the_contract_tables_exist_with_their_keys(postgres: str) -> None:
    with psycopg.connect(postgres) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "select table_schema || '.' || table_name from information_schema.tables "
                "where table_schema in ('public', 'staging', 'sync')"
            )
        }
        assert {
            "public.customers", "staging.crm_contacts", "staging.billing_customers",
            "staging.support_users", "sync.identity_links", "sync.review_queue",
            "sync.dead_letters", "sync.audit_log",
        } <= tables  # fmt: skip
        conn.execute(
            "insert into staging.crm_contacts (external_id, payload, source_updated_at) "
            "values ('1', '{}', now())"
        )
        wal_level = conn.execute("show wal_level").fetchone()
        assert wal_level == ("logical",)
