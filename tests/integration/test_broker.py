"""The embedded broker's end offsets with batched producers: Tansu's ListOffsets falls short
after a batch of several records; `end_offsets` reads the true end, and a burst sent with
`tail_last` keeps even ListOffsets exact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from crmsync.broker import (
    PRODUCER_CONFIG,
    admin_client,
    end_offsets,
    partition_for,
    start_tansu,
    tail_last,
    wait_for_broker,
)
from crmsync.stack import terminate
from tests.conftest import free_port

TOPIC, PARTITIONS, RECORDS = "bench.offsets", 2, 500


@pytest.fixture
def bootstrap(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    broker = start_tansu(port, tmp_path / "broker.log")
    address = f"127.0.0.1:{port}"
    try:
        wait_for_broker(address)
        admin = admin_client(address)
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS)])[TOPIC].result()
        yield address
    finally:
        terminate(broker.pid)


def listed(bootstrap: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests"})
    try:
        return sum(
            consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1]
            for p in range(PARTITIONS)
        )
    finally:
        consumer.close()


def produce(bootstrap: str, records: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})
    for partition, key in records:
        producer.produce(TOPIC, key=key, value=b"x" * 200, partition=partition)
    assert producer.flush(30) == 0


def burst() -> list[tuple[str, int, tuple[int, bytes]]]:
    placed = [(partition_for(key, PARTITIONS), key)
              for key in (f"customer-{n}".encode() for n in range(RECORDS))]  # fmt: skip
    return [(TOPIC, partition, (partition, key)) for partition, key in placed]


def test_a_batched_burst_leaves_list_offsets_short_but_end_offsets_exact(bootstrap: str) -> None:
    produce(bootstrap, [record for _, _, record in burst()])
    assert listed(bootstrap) < RECORDS  # the broker's own answer: the last batch's base + 1
    assert sum(end_offsets(bootstrap, TOPIC, PARTITIONS)) == RECORDS


def test_a_burst_ending_in_single_record_batches_keeps_list_offsets_exact(bootstrap: str) -> None:
    body, tails = tail_last(burst())
    produce(bootstrap, body)
    produce(bootstrap, tails)
    assert listed(bootstrap) == RECORDS
    assert sum(end_offsets(bootstrap, TOPIC, PARTITIONS)) == RECORDS
