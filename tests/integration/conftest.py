"""Real parts for integration tests: a HubSpot emulator process and whole embedded stacks
(Postgres from the system binaries, Tansu, the Debezium engine, Faust, the adapter), each on
free loopback ports under the test's own temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from crmsync.broker import end_offsets
from crmsync.settings import Settings
from crmsync.stack import Stack, terminate, wait_for_http
from tests.conftest import free_port

CONTACT_PROPERTIES = (
    "email,firstname,lastname,phone,country,lifecyclestage,crmsync_id,crmsync_plan_tier"
)


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen[bytes]
    token: str = "any-token"

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/_emulator/stats").json()

    def contacts(self, archived: bool = False) -> list[dict[str, Any]]:
        """Every contact, paged through the public list API as any client would."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {
            "limit": 100, "properties": CONTACT_PROPERTIES, "archived": str(archived).lower(),
        }  # fmt: skip
        while True:
            response = httpx.get(
                f"{self.url}/crm/v3/objects/contacts",
                params=params,
                headers={"Authorization": f"Bearer {self.token}"},
            )
            if response.status_code == 429:  # the tests share the emulator's rate limit
                time.sleep(0.1)
                continue
            response.raise_for_status()
            page = response.json()
            found.extend(page["results"])
            after = page.get("paging", {}).get("next", {}).get("after")
            if after is None:
                return found
            params["after"] = after

    def by_customer(self, archived: bool = False) -> dict[str, dict[str, Any]]:
        return {c["properties"]["crmsync_id"]: c for c in self.contacts(archived)}

    def inject(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/_emulator/faults", json=faults).raise_for_status()


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def start(
        rate_max: int = 1000, rate_interval_ms: int = 1000, token: str | None = None
    ) -> Emulator:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
        if token is not None:
            env["CRMSYNC_CRM_TOKEN"] = token
        process = subprocess.Popen(
            [sys.executable, "-m", "crmsync.cli", "emulator", "hubspot", "--port", str(port),
             "--rate-max", str(rate_max), "--rate-interval-ms", str(rate_interval_ms),
             "--require-token" if token else "--no-require-token"],
            start_new_session=True, env=env,
        )  # fmt: skip
        emulator = Emulator(f"http://127.0.0.1:{port}", process, token or "any-token")
        started.append(emulator)
        wait_for_http(f"{emulator.url}/_emulator/stats")
        return emulator

    yield start
    for emulator in started:
        terminate(emulator.process.pid)


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A fresh embedded cluster with the migrations applied; yields its DSN."""
    from canonical_db import apply_migrations
    from crmsync.postgres import LocalPostgres

    cluster = LocalPostgres(tmp_path / "pg-state", free_port())
    cluster.start()
    apply_migrations(cluster.dsn)
    yield cluster.dsn
    cluster.stop()


@dataclass
class RunningStack:
    settings: Settings
    stack: Stack

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.dsn, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def insert_customers(self, rows: list[dict[str, Any]]) -> list[str]:
        """Insert in one transaction; returns the new ids in order."""
        ids = []
        with psycopg.connect(self.settings.dsn) as conn:
            for row in rows:
                columns = ", ".join(row)
                values = ", ".join(["%s"] * len(row))
                cursor = conn.execute(
                    f"insert into public.customers ({columns}) values ({values}) returning id",
                    list(row.values()),
                )
                ids.append(str(cursor.fetchone()[0]))  # type: ignore[index]
        return ids

    def topic_records(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every record now in `topic` (all partitions), read without joining a group."""
        consumer = Consumer({"bootstrap.servers": self.settings.bootstrap, "group.id": "tests"})
        records = []
        ends = end_offsets(self.settings.bootstrap, topic, self.settings.partitions)
        try:
            for partition, high in enumerate(ends):
                low, _ = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, low)])
                while True:
                    message = consumer.poll(10)
                    if message is None:
                        raise AssertionError(f"reading {topic}[{partition}] stalled")
                    if message.error():
                        continue
                    records.append((message.key(), message.value()))
                    if message.offset() >= high - 1:
                        break
        finally:
            consumer.close()
        return records

    def end_offsets(self, topic: str) -> int:
        return sum(end_offsets(self.settings.bootstrap, topic, self.settings.partitions))


def stack_settings(state_dir: Path, emulator: Emulator | None, **overrides: Any) -> Settings:
    """Settings for a stack on free ports. With `emulator`, the CRM is that HubSpot emulator
    and the adapter may send 1,000 requests/s; without, the stack runs every emulator itself
    with the vendors' real default quotas."""
    crm: dict[str, Any] = {"emulator_port": free_port()}
    if emulator is not None:
        crm = {"crm_base_url": emulator.url, "crm_requests_per_window": 1000,
               "crm_window_seconds": 1.0}  # fmt: skip
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "pg_port": free_port(),
        "broker_port": free_port(),
        "partitions": 2,
        **crm,
        "billing_emulator_port": free_port(),
        "support_emulator_port": free_port(),
        "capture_metrics_port": free_port(),
        "streams_metrics_port": free_port(),
        "adapter_metrics_port": free_port(),
        "billing_adapter_metrics_port": free_port(),
        "support_adapter_metrics_port": free_port(),
        "crm_webhook_port": free_port(),
        "billing_webhook_port": free_port(),
        "support_webhook_port": free_port(),
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., RunningStack]]:
    stacks: list[Stack] = []

    def start(emulator: Emulator | None = None, **overrides: Any) -> RunningStack:
        settings = stack_settings(tmp_path / "state", emulator, **overrides)
        stack = Stack(settings)
        stacks.append(stack)
        stack.up()
        return RunningStack(settings, stack)

    yield start
    for stack in stacks:
        stack.down()
