"""The embedded stack: start, supervise and stop every component as child processes.

Postgres runs from the system's binaries; every other component is a child process with its
output in `<state_dir>/logs/<name>.log`. `<state_dir>/stack.json` records the pids so that
`crmsync down` and `crmsync status` work from another shell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

from canonical_db import apply_migrations
from crmsync.broker import create_topics, start_tansu, wait_for_broker
from crmsync.domain.ownership import TARGETS
from crmsync.errors import PrerequisiteMissing
from crmsync.postgres import LocalPostgres, find_pg_bindir
from crmsync.settings import Settings

__all__ = ["Stack", "check_prerequisites", "free_port", "read_stack_file", "subscribe_webhooks"]

log = logging.getLogger("crmsync.stack")

# Start order; stopped in reverse.
PIPELINE = ("capture", "streams", *(f"adapter-{target}" for target in TARGETS))


def check_prerequisites(settings: Settings) -> None:
    """Fail in one clear line when Java 17+ or the PostgreSQL server binaries are missing."""
    java = shutil.which("java")
    if java is None:
        raise PrerequisiteMissing("Java 17+ not found: apt-get install openjdk-17-jre-headless")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    version = out.split('"')[1] if '"' in out else "0"
    if int(version.split(".")[0]) < 17:
        raise PrerequisiteMissing(
            f"Java {version} is too old (17+ needed): apt-get install openjdk-17-jre-headless"
        )
    if settings.embedded_database:
        find_pg_bindir()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"CRMSYNC_{name.upper()}"] = str(value)
    return env


def read_stack_file(settings: Settings) -> dict[str, Any]:
    path = settings.state_dir / "stack.json"
    return orjson.loads(path.read_bytes()) if path.exists() else {}


@dataclass
class Stack:
    settings: Settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    last_rebase: float = 0.0
    #: Extra options for every emulator (the benchmark's `--unlimited`, `--receipts`).
    emulator_flags: tuple[str, ...] = ()

    @property
    def logs(self) -> Path:
        return self.settings.state_dir / "logs"

    def emulators(self) -> dict[str, str]:
        """The emulator process to run per emulated target: {"emulator-stripe": "billing"}."""
        return {
            f"emulator-{self.settings.vendor(target)}": target
            for target in TARGETS
            if self.settings.emulated(target)
        }

    def command(self, name: str) -> list[str]:
        cli = [sys.executable, "-m", "crmsync.cli"]
        if name in self.emulators():
            target = self.emulators()[name]
            vendor = self.settings.vendor(target)
            data = self.settings.state_dir / "emulators" / f"{vendor}.sqlite"
            port = str(self.settings.emulator_port_of(target))
            return [*cli, "emulator", vendor, "--port", port, "--data", str(data),
                    *self.emulator_flags]  # fmt: skip
        if name.startswith("adapter-"):
            return [*cli, "adapter", name.removeprefix("adapter-")]
        return {
            "capture": [*cli, "capture"],
            "streams": [sys.executable, "-m", "faust", "-A", "streams.app", "worker", "-l", "info"],
        }[name]  # fmt: skip

    def spawn(self, name: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                self.command(name),
                env=settings_env(self.settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children
            )
        self.write_stack_file()

    def postgres(self) -> LocalPostgres:
        return LocalPostgres(self.settings.state_dir, self.settings.pg_port)

    def start_broker(self) -> None:
        self.processes["broker"] = start_tansu(self.settings.broker_port, self.logs / "broker.log")
        wait_for_broker(self.settings.bootstrap)

    def up(self, pipeline: tuple[str, ...] = PIPELINE) -> None:
        """Start everything that is not running yet (of the pipeline, only `pipeline`);
        returns once each component is started."""
        check_prerequisites(self.settings)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.embedded_database:
            self.postgres().start()
        apply_migrations(self.settings.dsn)
        if self.settings.embedded_broker:
            self.start_broker()
        wait_for_broker(self.settings.bootstrap)
        create_topics(self.settings)
        for name in self.emulators():
            self.spawn(name)
        for target in self.emulators().values():
            wait_for_http(f"{self.settings.target_url(target)}/_emulator/stats")
        subscribe_webhooks(self.settings)
        for name in pipeline:
            self.spawn(name)

    def supervise(self) -> list[str]:
        """Restart any component that died; rebase the broker when it outgrows its limit.
        Returns what it did, for the live view."""
        broker = self.processes.get("broker")
        if broker is not None and broker.poll() is not None:
            # The broker took every topic with it: rebase restarts the whole pipeline, so
            # nothing else needs looking at this round.
            self.restarts["broker"] = self.restarts.get("broker", 0) + 1
            self.rebase_broker()
            return [f"broker exited with {broker.returncode}; rebased"]
        actions = []
        for name, process in list(self.processes.items()):
            if process.poll() is None:
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            actions.append(f"{name} exited with {process.returncode}; restarted")
            self.spawn(name)
        if broker is not None and broker.poll() is None:
            rss_mb = psutil.Process(broker.pid).memory_info().rss / 2**20
            # At most one rebase a minute: a limit set below the broker's floor must not loop.
            recently = time.monotonic() - self.last_rebase < 60
            if rss_mb > self.settings.broker_memory_limit_mb and not recently:
                actions.append(f"broker at {rss_mb:.0f} MiB > limit: rebased")
                self.rebase_broker()
        return actions

    def rebase_broker(self) -> None:
        """Recreate the in-memory broker empty. Postgres is the truth: the capture runner
        sees the empty topics and re-snapshots; effects are idempotent, so nothing is sent twice."""
        self.last_rebase = time.monotonic()
        for name in reversed(PIPELINE):
            self.stop_process(name)
        self.stop_process("broker")
        self.start_broker()
        create_topics(self.settings)
        for name in PIPELINE:
            self.spawn(name)

    def stop_process(self, name: str, timeout: float = 15.0) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            terminate(process.pid, timeout)
        self.write_stack_file()

    def down(self) -> None:
        for name in (*reversed(PIPELINE), *self.emulators(), "broker"):
            self.stop_process(name)
        if self.settings.embedded_database:
            self.postgres().stop()
        (self.settings.state_dir / "stack.json").unlink(missing_ok=True)

    def write_stack_file(self) -> None:
        document = {
            "supervisor": os.getpid(),
            "pids": {name: p.pid for name, p in self.processes.items()},
            "restarts": self.restarts,
        }
        (self.settings.state_dir / "stack.json").write_bytes(orjson.dumps(document))


def terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is still there after `timeout`."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


#: The vendors whose edits the adapter process receives by webhook (adapters.inbound).
INBOUND_VENDORS = ("hubspot", "stripe", "zendesk")


def subscribe_webhooks(settings: Settings) -> list[str]:
    """Subscribe each emulated target's emulator to its adapter's webhook receiver, signed with
    the target's webhook secret (idempotent: a subscription is replaced by its URL). Returns
    the receiver URLs subscribed. Real vendors are subscribed in their own consoles."""
    import httpx

    subscribed = []
    for target in TARGETS:
        if not settings.emulated(target) or settings.vendor(target) not in INBOUND_VENDORS:
            continue
        url = settings.webhook_url_of(target)
        secret = settings.webhook_secret_of(target).get_secret_value()
        response = httpx.post(
            f"{settings.target_url(target)}/_emulator/webhooks",
            json={"url": url, "secret": secret},
            timeout=10,
        )
        response.raise_for_status()
        subscribed.append(url)
    return subscribed


_given: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, below the kernel's ephemeral range. A port from
    bind(0) comes from that range, where any outgoing connection (a Kafka client's, say) may
    take it before the component it was meant for starts listening. Never the same twice in
    one process."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000):
        port = random.randrange(20000, low)
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered at {url}") from None
            time.sleep(0.05)
