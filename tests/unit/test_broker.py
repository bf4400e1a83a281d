"""Choosing partitions as Kafka does, and splitting a burst so that end offsets stay exact."""

from __future__ import annotations

import pytest

from crmsync.broker import murmur2, partition_for, tail_last


@pytest.mark.parametrize(
    ("key", "signed"),
    # Apache Kafka's UtilsTest.testMurmur2 vectors (Java's int, i.e. signed 32-bit).
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
     (b"a-little-bit-longer-string", -1486304829),
     (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), (b"abc", 479470107)],
)  # fmt: skip
def test_murmur2_matches_kafka(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF


def test_partition_is_the_positive_hash_modulo_partitions() -> None:
    assert partition_for(b"21", 4) == (-973932308 & 0x7FFFFFFF) % 4
    assert partition_for(None, 4) == 0


def test_tail_last_holds_back_each_partitions_last_record_in_order() -> None:
    records = [("a", 0, 1), ("a", 1, 2), ("a", 0, 3), ("b", 0, 4), ("a", 1, 5), ("a", 0, 6)]
    body, tails = tail_last(records)
    assert body == [1, 2, 3]
    assert tails == [4, 5, 6]  # one per (topic, partition), each after the rest of its own


def test_tail_last_of_single_records_sends_them_all_alone() -> None:
    assert tail_last([("a", 0, 1), ("a", 1, 2)]) == ([], [1, 2])
    assert tail_last([]) == ([], [])
