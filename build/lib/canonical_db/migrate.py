"""Apply `migrations/NNNN_name.sql` in order, once each, recorded in `public.crmsync_migrations`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import psycopg

__all__ = ["Migration", "apply_migrations", "pending_migrations"]

# Any constant works; it only has to be the same for every process that migrates.
_LOCK_ID = 0x6372_6D73


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def all_migrations() -> list[Migration]:
    folder = resources.files("canonical_db") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(version, rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def _ensure_ledger(conn: psycopg.Connection) -> None:
    conn.execute(
        """create table if not exists public.crmsync_migrations (
               version text primary key, name text not null, checksum text not null,
               applied_at timestamptz not null default now())"""
    )


def pending_migrations(conn: psycopg.Connection) -> list[Migration]:
    _ensure_ledger(conn)
    applied = dict(conn.execute("select version, checksum from public.crmsync_migrations"))
    pending = []
    for migration in all_migrations():
        if migration.version not in applied:
            pending.append(migration)
        elif applied[migration.version] != migration.checksum:
            raise RuntimeError(
                f"migration {migration.version}_{migration.name} was edited after it was "
                "applied; add a new migration instead"
            )
    return pending


def apply_migrations(dsn: str) -> list[str]:
    """Bring the schema up to date; returns the versions applied now (empty if none)."""
    applied_now = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            for migration in pending_migrations(conn):
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "insert into public.crmsync_migrations (version, name, checksum) "
                        "values (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.version)
        finally:
            conn.execute("select pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied_now
