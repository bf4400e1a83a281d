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

from crmsync.broker import STREAMS_APP_ID, Topics, end_offsets
from crmsync.domain.inbound import STAGING_TABLES
from crmsync.domain.ownership import TARGETS
from crmsync.errors import ConfigError
from crmsync.settings import Settings
from crmsync.stack import read_stack_file
from crmsync.targets import load_plan

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
                if "window" in sample.labels:  # per quota window: kept apart
                    name = f"{name}:{sample.labels['window']}"
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
            per_target = conn.execute(
                """select t.target,
                          (select count(*) from sync.identity_links l
                           where l.system = t.target and l.archived_at is null),
                          (select count(*) from sync.dead_letters d
                           where d.target = t.target and d.replayed_at is null)
                   from unnest(%s::text[]) as t(target)""",
                (list(TARGETS),),
            ).fetchall()
            identity = _identity(conn)
    except psycopg.Error as exc:
        return {"state": "unreachable", "error": type(exc).__name__}
    assert row is not None
    return {
        "identity": identity,
        "state": "running",
        "customers": row[0],
        "dead_letters": row[1],
        "dead_letters_open": row[2],
        "crm_links": row[3],
        "review_open": row[4],
        "targets": {
            t: {"links": links, "dead_letters_open": dead} for t, links, dead in per_target
        },
    }


#: Link methods that were the matcher's own decision (the rest: created by crmsync itself,
#: decided by a person, or a record moved by a merge).
AUTO_LINKED = ("email", "phone", "fuzzy")


def _identity(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Identity resolution, from the durable record: per target, the records people made
    there and what became of them (match rate: the share linked to an existing customer);
    in the canonical database, the duplicates found and merged."""
    systems = {}
    for system in STAGING_TABLES:
        methods = dict(conn.execute(
            "select method, count(*) from sync.identity_links where system = %s"
            " group by method", (system,)).fetchall())  # fmt: skip
        review = conn.execute(
            "select count(*) filter (where resolved_at is null), count(*) from sync.review_queue"
            " where kind = 'identity' and system = %s", (system,)).fetchone()  # fmt: skip
        assert review is not None
        auto = sum(methods.get(m, 0) for m in AUTO_LINKED)
        by_person = methods.get("review", 0)
        new = methods.get("new", 0)
        decided = auto + new + review[1]
        systems[system] = {
            "matched": decided, "auto_linked": auto, "linked_by_person": by_person,
            "review_open": review[0], "new": new,
            "match_rate": round((auto + by_person) / decided, 4) if decided else None,
            "by_method": methods,
        }  # fmt: skip
    canonical = conn.execute(
        """select (select count(*) from public.customers where deleted_at is null),
                  (select count(*) from sync.merges where undone_at is null),
                  (select count(*) from sync.merges where undone_at is not null),
                  (select count(*) from sync.review_queue where kind = 'duplicate'),
                  (select count(*) from sync.review_queue
                   where kind = 'duplicate' and resolved_at is null)"""
    ).fetchone()
    assert canonical is not None
    live, merged, undone, doubtful, doubtful_open = canonical
    found = merged + undone + doubtful
    total = live + merged
    return {
        "targets": systems,
        "canonical": {
            "duplicates_found": found, "merges": merged, "merges_undone": undone,
            "review": doubtful, "review_open": doubtful_open,
            "duplicate_rate": round(found / total, 4) if total else None,
        },
    }  # fmt: skip


def consumer_lag(settings: Settings) -> dict[str, Any]:
    """Records each consumer group has yet to process (end offset - committed offset)."""
    topics = Topics(settings.topic_prefix)
    groups = {
        "streams": (STREAMS_APP_ID, topics.customers_cdc),
        **{f"adapter-{t}": (f"crmsync-adapter-{t}", topics.commands(t)) for t in TARGETS},
    }
    result: dict[str, Any] = {}
    for name, (group, topic) in groups.items():
        consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": group})
        try:
            parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
            committed = consumer.committed(parts, timeout=5)
            ends = end_offsets(settings.bootstrap, topic, settings.partitions, timeout=5)
            lag = sum(end - max(tp.offset, 0) for end, tp in zip(ends, committed, strict=True))
            result[name] = {"topic": topic, "end_offset": sum(ends), "lag": lag}
        except (KafkaException, TimeoutError) as exc:
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
    }  # fmt: skip
    for target in TARGETS:
        components[f"adapter-{target}"] = {
            **_process(pids.get(f"adapter-{target}")),
            "endpoint": settings.target_url(target),
            "metrics": _metrics(settings.adapter_metrics_port_of(target)),
        }
    if settings.embedded_broker:
        components["broker"]["memory_limit_mb"] = settings.broker_memory_limit_mb
    for target in TARGETS:
        name = f"emulator-{settings.vendor(target)}"
        if name in pids:
            url = settings.target_url(target)
            emulator = {"endpoint": url, **_process(pids.get(name))}
            with contextlib.suppress(httpx.HTTPError, ValueError):
                emulator["stats"] = httpx.get(f"{url}/_emulator/stats", timeout=2).json()
            components[name] = emulator
    lag: dict[str, Any] = {}
    if components["broker"].get("state") == "running" or not settings.embedded_broker:
        lag = consumer_lag(settings)
    return {
        "supervisor": _process(stack.get("supervisor")),
        "restarts": stack.get("restarts", {}),
        "components": components,
        "targets": _targets(settings, components),
        "lag": lag,
    }


def _targets(settings: Settings, components: dict[str, Any]) -> dict[str, Any]:
    """Per target: its vendor and plan, quota use, 429s, retries, breaker, dead letters."""
    database = components["database"].get("targets", {})
    report = {}
    for target in TARGETS:
        metrics = components[f"adapter-{target}"]["metrics"]
        try:
            plan: str | None = load_plan(settings, target).plan
        except ConfigError:
            plan = None
        quota = {}
        for key, limit in metrics.items():
            if key.startswith("adapter_quota_limit:"):
                window = key.split(":", 1)[1]
                used = metrics.get(f"adapter_quota_used:{window}", 0.0)
                quota[window] = {"limit": limit, "used": used}
        report[target] = {
            "vendor": settings.vendor(target),
            "plan": plan,
            "endpoint": settings.target_url(target),
            "quota": quota,
            "api_calls": metrics.get("adapter_api_calls", 0.0),
            "rate_limited": metrics.get("adapter_rate_limited", 0.0),
            "retries": metrics.get("adapter_retries", 0.0),
            "breaker": "open" if metrics.get("adapter_breaker_open") else "closed",
            "breaker_opened": metrics.get("adapter_breaker_opened", 0.0),
            "delivered": metrics.get("adapter_delivered", 0.0),
            "inbound": {  # the target's own edits coming back (adapters.inbound)
                "webhooks_accepted": metrics.get("inbound_webhooks_accepted", 0.0),
                "webhooks_rejected": metrics.get("inbound_webhooks_rejected", 0.0),
                "polled": metrics.get("inbound_polled_objects", 0.0),
                "staged": metrics.get("inbound_staging_writes", 0.0),
            },
            "links": database.get(target, {}).get("links"),
            "dead_letters_open": database.get(target, {}).get("dead_letters_open"),
        }
    return report
