"""What `crmsync status` reports: each component's state and endpoint, and the counters.

Counters come from where they live: each process's Prometheus endpoint, the emulator's stats,
Postgres (dead letters, links) and the broker (end offsets, consumer lag).
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import psutil
import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from crmsync.broker import STREAMS_APP_ID, Topics
from crmsync.settings import Settings
from crmsync.stack import read_stack_file

__all__ = ["collect_status", "consumer_lag"]


def _metrics(port: int) -> dict[str, float]:
    """Prometheus counters from a loopback endpoint, summed over labels (name -> value)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("crmsync_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):  # when the counter was born: not a count
                continue
            if sample.name.endswith(("_total", "_timestamp")) or family.type == "gauge":
                name = sample.name.removeprefix("crmsync_").removesuffix("_total")
                totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def _process(pid: int | None) -> dict[str, Any]:
    if pid is None or not psutil.pid_exists(pid):
        return {"state": "stopped"}
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
            return {"state": "running", "pid": pid, "rss_mb": round(rss / 2**20, 1)}
    return {"state": "stopped"}


def _database(settings: Settings) -> dict[str, Any]:
    try:
        with psycopg.connect(settings.dsn, connect_timeout=3) as conn:
            row = conn.execute(
                """select (select count(*) from public.customers),
                          (select count(*) from sync.dead_letters),
                          (select count(*) from sync.dead_letters where replayed_at is null),
                          (select count(*) from sync.identity_links where system = 'crm'),
                          (select count(*) from sync.review_queue where resolved_at is null)"""
            ).fetchone()
    except psycopg.Error as exc:
        return {"state": "unreachable", "error": type(exc).__name__}
    assert row is not None
    return {
        "state": "running",
        "customers": row[0],
        "dead_letters": row[1],
        "dead_letters_open": row[2],
        "crm_links": row[3],
        "review_open": row[4],
    }


def consumer_lag(settings: Settings) -> dict[str, Any]:
    """Records each consumer group has yet to process (end offset - committed offset)."""
    topics = Topics(settings.topic_prefix)
    groups = {
        "streams": (STREAMS_APP_ID, topics.customers_cdc),
        "adapter-crm": ("crmsync-adapter-crm", topics.commands("crm")),
    }
    result: dict[str, Any] = {}
    for name, (group, topic) in groups.items():
        consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group})
        try:
            parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
            committed = consumer.committed(parts, timeout=5)
            lag = end_total = 0
            for tp in committed:
                _, high = consumer.get_watermark_offsets(tp, timeout=5)
                end_total += high
                lag += high - (tp.offset if tp.offset >= 0 else 0)
            result[name] = {"topic": topic, "end_offset": end_total, "lag": lag}
        except KafkaException as exc:
            result[name] = {"topic": topic, "error": str(exc)}
        finally:
            consumer.close()
    return result


def collect_status(settings: Settings) -> dict[str, Any]:
    stack = read_stack_file(settings)
    pids = stack.get("pids", {})
    components: dict[str, Any] = {
        "database": {"endpoint": settings.dsn_redacted, **_database(settings)},
        "broker": {"endpoint": settings.bootstrap, "embedded": settings.embedded_broker,
                   **_process(pids.get("broker"))},
        "capture": {**_process(pids.get("capture")),
                    "metrics": _metrics(settings.capture_metrics_port)},
        "streams": {**_process(pids.get("streams")),
                    "metrics": _metrics(settings.streams_metrics_port)},
        "adapter-crm": {**_process(pids.get("adapter-crm")), "endpoint": settings.crm_url,
                        "metrics": _metrics(settings.adapter_metrics_port)},
    }  # fmt: skip
    if settings.embedded_broker:
        components["broker"]["memory_limit_mb"] = settings.broker_memory_limit_mb
    if "emulator-hubspot" in pids:
        emulator = {"endpoint": settings.crm_url, **_process(pids.get("emulator-hubspot"))}
        with contextlib.suppress(httpx.HTTPError, ValueError):
            emulator["stats"] = httpx.get(f"{settings.crm_url}/_emulator/stats", timeout=2).json()
        components["emulator-hubspot"] = emulator
    lag: dict[str, Any] = {}
    if components["broker"].get("state") == "running" or not settings.embedded_broker:
        lag = consumer_lag(settings)
    return {
        "supervisor": _process(stack.get("supervisor")),
        "restarts": stack.get("restarts", {}),
        "components": components,
        "lag": lag,
    }
