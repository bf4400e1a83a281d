"""The embedded PostgreSQL cluster: initdb, start and stop from the system's binaries.

Postgres refuses to run as root, so when we are root every server command runs as the
unprivileged `postgres` user and the data folder is handed to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from crmsync.errors import PrerequisiteMissing

__all__ = ["LocalPostgres", "find_pg_bindir"]

_SERVER_CONF = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "max_connections": "100",
    "shared_buffers": "'256MB'",
    "logging_collector": "off",
}


def find_pg_bindir() -> Path:
    """The newest installed PostgreSQL server's bin folder (needs initdb and pg_ctl)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    raise PrerequisiteMissing(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql-15"
    )


class LocalPostgres:
    """A cluster under `<state_dir>/pg` listening on 127.0.0.1:`port` with `wal_level=logical`."""

    def __init__(self, state_dir: Path, port: int, user: str = "crmsync") -> None:
        self.data_dir = state_dir / "pg" / "data"
        self.log_file = state_dir / "logs" / "postgres.log"
        self.socket_dir = state_dir / "pg" / "run"
        self.port = port
        self.user = user
        self.bindir = find_pg_bindir()
        self._as_root = os.geteuid() == 0

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/crmsync"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True)

    def _hand_over(self, path: Path) -> None:
        """As root: give `path` to the postgres user and let it traverse the folders above."""
        if not self._as_root:
            return
        shutil.chown(path, "postgres", "postgres")
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        for folder in (self.data_dir.parent, self.socket_dir, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.data_dir.parent)
        self._hand_over(self.socket_dir)
        if self._as_root:
            self.log_file.touch()
            shutil.chown(self.log_file, "postgres", "postgres")
        if self.initialised():
            return
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            for key, value in {**_SERVER_CONF, "port": str(self.port)}.items():
                conf.write(f"{key} = {value}\n")
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")

    def running(self) -> bool:
        if not self.initialised():
            return False
        try:
            self._run("pg_ctl", "status", "-D", str(self.data_dir))
        except subprocess.CalledProcessError:
            return False
        return True

    def start(self) -> None:
        """Initialise if needed, start, and create the `crmsync` database; idempotent."""
        self.init()
        if not self.running():
            self._run(
                "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
                "-l", str(self.log_file), "-o", f"-p {self.port}",
            )  # fmt: skip
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        admin = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = 'crmsync'").fetchone()
            if not exists:
                conn.execute("create database crmsync")

    def stop(self) -> None:
        if not self.initialised():
            return
        try:
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))
        except subprocess.CalledProcessError:
            if self.running():  # not "it was already stopped"
                raise
