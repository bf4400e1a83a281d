"""The live view `crmsync up` shows, and the table `crmsync status` prints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table

from crmsync.settings import Settings
from crmsync.stack import Stack
from crmsync.status import collect_status

__all__ = ["render_status", "run_live"]

log = logging.getLogger("crmsync.live")

# (component, metric, label) rows of the flow table, in pipeline order.
_FLOW = (
    ("capture", "capture_records", "changes captured"),
    ("streams", "streams_events", "changes processed"),
    ("streams", "streams_dead_letters", "dead-lettered at ingest"),
    ("streams", "streams_commands", "commands emitted"),
)


def render_status(report: dict[str, Any]) -> Group:
    components = Table(title="components", expand=False)
    for column in ("component", "state", "endpoint", "rss MiB"):
        components.add_column(column)
    for name, info in report["components"].items():
        state = info.get("state", "?")
        colour = "green" if state == "running" else "red"
        components.add_row(
            name, f"[{colour}]{state}[/]", str(info.get("endpoint", "")),
            str(info.get("rss_mb", "")),
        )  # fmt: skip
    flow = Table(title="flow", expand=False)
    flow.add_column("what")
    flow.add_column("count", justify="right")
    for component, metric, label in _FLOW:
        value = report["components"].get(component, {}).get("metrics", {}).get(metric)
        flow.add_row(label, "-" if value is None else f"{value:,.0f}")
    database = report["components"]["database"]
    for key in ("customers", "dead_letters_open"):
        flow.add_row(f"db: {key.replace('_', ' ')}", f"{database.get(key, '-')}")
    for group, info in report.get("lag", {}).items():
        flow.add_row(f"lag: {group}", str(info.get("lag", info.get("error", "-"))))
    targets = Table(title="targets", expand=False)
    columns = ("target", "vendor", "quota used", "calls", "429", "retries", "breaker",
               "written", "links", "dead")  # fmt: skip
    for column in columns:
        targets.add_column(column, justify="left" if column in columns[:3] else "right")
    for name, info in report.get("targets", {}).items():
        quota = "\n".join(
            f"{q['used']:,.0f}/{q['limit']:,.0f} {window}" for window, q in info["quota"].items()
        )
        breaker = info["breaker"]
        targets.add_row(
            name, f"{info['vendor']}\n{info['plan']}", quota or "-",
            f"{info['api_calls']:,.0f}", f"{info['rate_limited']:,.0f}",
            f"{info['retries']:,.0f}",
            f"[{'red' if breaker == 'open' else 'green'}]{breaker}[/]",
            f"{info['delivered']:,.0f}", str(info["links"] if info["links"] is not None else "-"),
            str(info["dead_letters_open"] if info["dead_letters_open"] is not None else "-"),
        )  # fmt: skip
    identity = Table(title="identity", expand=False)
    for column in ("system", "matched", "auto-linked", "by a person", "review", "new",
                   "match rate"):  # fmt: skip
        identity.add_column(column, justify="left" if column == "system" else "right")
    found = database.get("identity", {})
    for system, info in found.get("targets", {}).items():
        rate = info["match_rate"]
        identity.add_row(
            system, str(info["matched"]), str(info["auto_linked"]),
            str(info["linked_by_person"]), str(info["review_open"]), str(info["new"]),
            "-" if rate is None else f"{rate:.1%}",
        )  # fmt: skip
    canonical = found.get("canonical")
    if canonical:
        rate = canonical["duplicate_rate"]
        identity.add_row(
            "canonical", f"{canonical['duplicates_found']} dup.", f"{canonical['merges']} merged",
            f"{canonical['merges_undone']} undone", str(canonical["review_open"]), "-",
            "-" if rate is None else f"dup. {rate:.2%}",
        )  # fmt: skip
    return Group(components, flow, targets, identity)


def run_live(
    settings: Settings,
    stack: Stack,
    *,
    live: bool,
    on_tick: Callable[[], None] | None,
    tick_seconds: float,
) -> None:
    """Refresh the view every second and supervise the stack until interrupted."""
    next_tick = time.monotonic() + tick_seconds

    def step() -> dict[str, Any]:
        nonlocal next_tick
        for action in stack.supervise():
            log.warning(action)
        if on_tick is not None and time.monotonic() >= next_tick:
            next_tick = time.monotonic() + tick_seconds
            try:
                on_tick()
            except Exception as exc:  # sample feeding is best effort; the stack goes on
                log.warning("sample feed failed: %s", exc)
        return collect_status(settings)

    if not live:
        while True:
            step()
            time.sleep(1.0)
    with Live(render_status(step()), refresh_per_second=2) as view:
        while True:
            time.sleep(1.0)
            view.update(render_status(step()))
