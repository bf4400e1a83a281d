"""The stack as a user starts it: `crmsync up`, a row inserted with psql reaches the CRM
emulator, `crmsync status --json` counts it, `crmsync down` stops everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.timeout(300)


def test_up_status_down(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CRMSYNC_STATE_DIR": str(tmp_path / "state"),
        **{f"CRMSYNC_{name}": str(free_port()) for name in (
            "PG_PORT", "BROKER_PORT", "EMULATOR_PORT", "BILLING_EMULATOR_PORT",
            "SUPPORT_EMULATOR_PORT", "CAPTURE_METRICS_PORT", "STREAMS_METRICS_PORT",
            "ADAPTER_METRICS_PORT", "BILLING_ADAPTER_METRICS_PORT",
            "SUPPORT_ADAPTER_METRICS_PORT", "CRM_WEBHOOK_PORT", "BILLING_WEBHOOK_PORT",
            "SUPPORT_WEBHOOK_PORT")},
    }  # fmt: skip
    cli = [sys.executable, "-m", "crmsync.cli"]
    up = subprocess.Popen(
        [*cli, "up", "--no-live", "--sample", "20", "--feed", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    emulator = f"http://127.0.0.1:{env['CRMSYNC_EMULATOR_PORT']}"
    dsn = f"postgresql://crmsync@127.0.0.1:{env['CRMSYNC_PG_PORT']}/crmsync"

    def status() -> dict:
        out = subprocess.run([*cli, "status", "--json"], env=env, capture_output=True, check=True)
        return orjson.loads(out.stdout)

    try:

        def accounted() -> int:  # every sample row is in the CRM or, if invalid, a dead letter
            database = status()["components"]["database"]
            return database.get("crm_links", 0) + database.get("dead_letters", 0)

        wait_until(lambda: accounted() >= 20, timeout=120, what="the sample customers")
        links_before = status()["components"]["database"]["crm_links"]
        subprocess.run(
            ["psql", dsn, "-c", "insert into customers (email, first_name) "
             "values ('Grace@Example.com', 'Grace')"],
            check=True, capture_output=True,
        )  # fmt: skip
        contact = wait_until(
            lambda: httpx.get(
                f"{emulator}/crm/v3/objects/contacts/grace@example.com",
                params={"idProperty": "email", "properties": "firstname"},
                headers={"Authorization": "Bearer e2e"},
            ).json().get("properties"),
            timeout=30, interval=0.2, what="the psql insert in the CRM emulator",
        )  # fmt: skip
        assert contact["firstname"] == "Grace"

        def everywhere(report: dict) -> bool:
            """Grace is in the CRM, and every target holds or dead-lettered each customer the
            CRM holds (Stripe refuses the non-ASCII addresses Faker writes now and then)."""
            crm = report["targets"]["crm"]
            return crm["links"] == links_before + 1 and all(
                t["links"] + t["dead_letters_open"] == crm["links"] + crm["dead_letters_open"]
                for t in report["targets"].values()
            )

        report = wait_until(
            lambda: s if everywhere(s := status()) else None,
            timeout=60, what="status counting the new customer in every target",
        )  # fmt: skip
        components = report["components"]
        assert {n for n, c in components.items() if c.get("state") != "running"} == set()
        assert components["database"]["endpoint"].endswith(f":{env['CRMSYNC_PG_PORT']}/crmsync")
        assert components["emulator-hubspot"]["stats"]["contacts"] == links_before + 1
        assert components["capture"]["metrics"]["capture_records"] >= 21
        assert components["adapter-crm"]["metrics"]["adapter_delivered"] == links_before + 1
        assert report["lag"]["adapter-crm"]["lag"] == 0
        for name, vendor in (("crm", "hubspot"), ("billing", "stripe"), ("support", "zendesk")):
            target = report["targets"][name]
            assert (target["vendor"], target["breaker"], target["rate_limited"]) == (
                vendor, "closed", 0,
            )  # fmt: skip
            assert target["api_calls"] >= 1
            assert all(q["limit"] > 0 for q in target["quota"].values()), target["quota"]
    finally:
        subprocess.run([*cli, "down"], env=env, check=True, capture_output=True, timeout=90)
    up.wait(timeout=30)
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(tmp_path) in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    assert leftovers == []
