"""`crmsync`: the one entry point. `up`/`down`/`status` run the embedded stack; the other
commands are its components, also used as-is by docker-compose."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from typing import Annotated

import orjson
import psutil
import typer
from rich.console import Console

from crmsync.errors import CrmsyncError
from crmsync.logs import configure_logging
from crmsync.settings import Settings, load_settings

__all__ = ["app"]

app = typer.Typer(help="Keep customers in sync between Postgres and CRM, billing and support.",
                  no_args_is_help=True, pretty_exceptions_enable=False)  # fmt: skip
console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:
        console.print(f"[red]invalid settings:[/] {exc}")
        raise typer.Exit(2) from None


def _running_supervisor(settings: Settings) -> int | None:
    from crmsync.stack import read_stack_file

    pid = read_stack_file(settings).get("supervisor")
    return pid if pid and pid != os.getpid() and psutil.pid_exists(pid) else None


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _say(message: str) -> None:
    """Print, unless the terminal is gone: stopping the stack must not depend on it."""
    with contextlib.suppress(OSError):
        console.print(message)


@app.command()
def up(
    sample: Annotated[int, typer.Option(help="Sample customers to load (0: none).")] = 200,
    live: Annotated[bool, typer.Option(help="Show the live view (else log lines).")] = True,
    feed: Annotated[float, typer.Option(help="Seconds between sample edits (0: none).")] = 2.0,
) -> None:
    """Start Postgres, the broker, capture, streams, the CRM adapter and the emulator."""
    from crmsync.live import run_live
    from crmsync.sample import insert_customers, touch_random_customer
    from crmsync.stack import Stack

    settings = _settings()
    configure_logging(settings.log_level, "supervisor")
    if pid := _running_supervisor(settings):
        console.print(f"crmsync is already running (supervisor pid {pid}); `crmsync down` first")
        raise typer.Exit(1)
    stack = Stack(settings)
    # `crmsync down` (SIGTERM) and a closed terminal (SIGHUP) stop us the way Ctrl-C does.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        started = time.monotonic()
        stack.up()
        console.print(f"stack up in {time.monotonic() - started:.1f}s; Ctrl-C or `crmsync down`")
        if sample:
            insert_customers(settings.dsn, sample)
        rng = random.Random()
        run_live(
            settings, stack, live=live,
            on_tick=(lambda: touch_random_customer(settings.dsn, rng)) if feed else None,
            tick_seconds=feed or 1.0,
        )  # fmt: skip
    except CrmsyncError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
    finally:
        _say("stopping...")
        stack.down()
        _say("stopped")


@app.command()
def down() -> None:
    """Stop a running stack (the one `crmsync up` started) and its database."""
    from crmsync.stack import Stack, read_stack_file, terminate

    settings = _settings()
    if pid := _running_supervisor(settings):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            time.sleep(0.1)
    else:  # the supervisor died: stop what it left behind
        for child in read_stack_file(settings).get("pids", {}).values():
            terminate(child)
        Stack(settings).down()
    console.print("crmsync is down")


@app.command()
def status(json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each component's state and endpoint, and the counters."""
    from crmsync.live import render_status
    from crmsync.status import collect_status

    report = collect_status(_settings())
    if json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        Console().print(render_status(report))


@app.command()
def migrate() -> None:
    """Apply the canonical database migrations (idempotent)."""
    from canonical_db import apply_migrations

    applied = apply_migrations(_settings().dsn)
    console.print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


@app.command()
def topics() -> None:
    """Create every topic crmsync uses, with the configured partition count."""
    from crmsync.broker import create_topics, wait_for_broker

    settings = _settings()
    wait_for_broker(settings.bootstrap, timeout=120)
    console.print(f"created: {', '.join(create_topics(settings)) or 'nothing (all exist)'}")


@app.command()
def capture() -> None:
    """Run the connect/ connector config in the embedded Debezium engine."""
    from crmsync.capture import CaptureRunner

    settings = _settings()
    configure_logging(settings.log_level, "capture")
    CaptureRunner(settings).run()


@app.command()
def sample(count: Annotated[int, typer.Argument(help="How many customers.")] = 100) -> None:
    """Insert sample customers into public.customers."""
    from crmsync.sample import insert_customers

    console.print(f"inserted {insert_customers(_settings().dsn, count)} customers")


@app.command()
def adapter(
    target: Annotated[str, typer.Argument(help="crm, billing or support.")],
) -> None:
    """Deliver crmsync.commands.<target> to that target's API, and bring the target's own
    edits into its staging table (webhook receiver and polling) through the same quota."""
    from prometheus_client import start_http_server

    from adapters.worker import run_adapter
    from crmsync.domain.ownership import TARGETS

    if target not in TARGETS:
        raise typer.BadParameter(f"{target!r} is not one of {', '.join(TARGETS)}")
    settings = _settings()
    configure_logging(settings.log_level, f"adapter-{target}")
    start_http_server(settings.adapter_metrics_port_of(target), addr="127.0.0.1")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_adapter(settings, target, stop)

    asyncio.run(main())


dlq_app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

TargetOption = Annotated[str | None, typer.Option(help="Only this target: crm, billing, support.")]
SinceOption = Annotated[str | None, typer.Option(help="Seen since: 30m, 2h, 7d or an ISO time.")]


@dlq_app.command("list")
def dlq_list(
    target: TargetOption = None,
    since: SinceOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Include replayed letters.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, last seen first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Dead letters not yet replayed, last seen first; each failure once, with how many
    times it was seen."""
    from rich.table import Table

    from crmsync.dlq import list_letters, parse_since

    letters = list_letters(
        _settings().dsn, target=target, since=parse_since(since), everything=all_, limit=limit
    )
    if as_json:
        sys.stdout.write(orjson.dumps(letters, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("id", "first seen", "last seen", "seen", "stage", "target", "key", "tries",
                   "error", "replayed"):  # fmt: skip
        table.add_column(column)
    for letter in letters:
        table.add_row(
            str(letter["id"]), f"{letter['created_at']:%m-%d %H:%M:%S}",
            f"{letter['last_failed_at']:%m-%d %H:%M:%S}", f"{letter['occurrences']}x",
            letter["stage"], letter["target"] or "", letter["key"] or "", str(letter["attempts"]),
            " ".join(letter["error"].split())[:160], "yes" if letter["replayed_at"] else "",
        )  # fmt: skip
    console.print(table)


@dlq_app.command("show")
def dlq_show(letter_id: Annotated[int, typer.Argument(help="The dead letter's id.")]) -> None:
    """One dead letter in full: payload, error, attempts, source."""
    from crmsync.dlq import show_letter

    letter = show_letter(_settings().dsn, letter_id)
    if letter is None:
        console.print(f"no dead letter {letter_id}")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(letter, option=orjson.OPT_INDENT_2).decode() + "\n")


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Letter ids (default: all open).")] = None,
    target: TargetOption = None,
    since: SinceOption = None,
) -> None:
    """Re-send dead letters after the cause is fixed; idempotent."""
    from crmsync.dlq import parse_since, replay

    settings = _settings()
    report = asyncio.run(replay(settings, ids=ids, target=target, since=parse_since(since)))
    console.print(
        f"replayed {report.letters} dead letters: {report.commands} commands sent,"
        f" {report.rows_reread} rows re-read"
    )
    for letter_id, reason in report.not_replayed:
        console.print(f"  not replayed: {letter_id}: {reason}")
    if report.not_replayed:
        raise typer.Exit(1)


review_app = typer.Typer(
    help="Conflicts and identity questions waiting for a person; merges and links undone.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")


@review_app.command("list")
def review_list(
    all_: Annotated[bool, typer.Option("--all", help="Include resolved items.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Open items (oldest first): a conflict's field, both values and where each came from;
    an identity question or possible duplicate with its candidates."""
    from rich.table import Table

    from crmsync.review import list_items

    items = list_items(_settings().dsn, everything=all_, limit=limit)
    if as_json:
        sys.stdout.write(orjson.dumps(items, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title=f"{len(items)} review items")
    for column in ("id", "created", "customer", "field", "current", "incoming", "resolved"):
        table.add_column(column)
    for item in items:
        proposed = item["proposed"]
        decided = item["decision"] or {}
        resolved = f"{decided} by {item['resolved_by']}" if item["resolved_at"] else ""
        when = f"{item['created_at']:%m-%d %H:%M:%S}"
        if item["kind"] != "field_conflict":  # who is who: the question and the candidates
            candidates = ", ".join(
                f"{c['customer_id']} ({c['confidence']:.2f})" for c in proposed["candidates"]
            )
            table.add_row(str(item["id"]), when, item["customer_id"] or "", item["kind"],
                          "", f"{item['reason']}\ncandidates: {candidates}", resolved)  # fmt: skip
            continue
        current, incoming = proposed.get("current", {}), proposed.get("incoming", {})
        if item["resolved_at"]:
            resolved = f"{decided.get('value')!r} by {item['resolved_by']}"
        table.add_row(
            str(item["id"]), when, item["customer_id"] or "", proposed.get("field", ""),
            f"{current.get('system')}: {current.get('value')!r}",
            f"{incoming.get('system')}: {incoming.get('value')!r}", resolved,
        )  # fmt: skip
    console.print(table)


@review_app.command("show")
def review_show(item_id: Annotated[int, typer.Argument(help="The review item's id.")]) -> None:
    """One review item in full."""
    from crmsync.review import show_item

    item = show_item(_settings().dsn, item_id)
    if item is None:
        console.print(f"no review item {item_id}")
        raise typer.Exit(1)
    sys.stdout.write(orjson.dumps(item, option=orjson.OPT_INDENT_2).decode() + "\n")


@review_app.command("resolve")
def review_resolve(
    item_id: Annotated[int, typer.Argument(help="The review item's id.")],
    keep: Annotated[
        str | None, typer.Option(help="Keep one side's value: current or incoming.")
    ] = None,
    value: Annotated[str | None, typer.Option(help="Or set this value instead.")] = None,
    link: Annotated[
        str | None, typer.Option(help="Identity: link the record to this customer.")
    ] = None,
    new: Annotated[bool, typer.Option("--new", help="Identity: a new customer.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Duplicate: merge them.")] = False,
    apart: Annotated[bool, typer.Option("--apart", help="Duplicate: keep them apart.")] = False,
    by: Annotated[str, typer.Option(help="Who decided (recorded).")] = os.environ.get(
        "USER", "unknown"
    ),
) -> None:
    """Settle an item. A conflict: --keep current|incoming or --value V, applied in every
    system. An identity question: --link CUSTOMER or --new. A possible duplicate: --merge or
    --apart."""
    from crmsync import review

    settings = _settings()
    try:
        if link is not None or new:
            customer = review.resolve_identity(settings, item_id, link_to=link, new=new, by=by)
            console.print(f"resolved {item_id}: the record belongs to customer {customer}")
        elif merge or apart:
            if merge == apart:
                raise review.ReviewError("give either --merge or --apart")
            outcome = review.resolve_duplicate(settings, item_id, merge=merge, by=by)
            console.print(f"resolved {item_id}: {outcome}")
        else:
            if keep not in (None, "current", "incoming"):
                raise typer.BadParameter("--keep takes current or incoming")
            resolution = review.resolve(settings, item_id, choice=keep, value=value, by=by)  # type: ignore[arg-type]
            console.print(
                f"resolved {item_id}: {resolution.field} = {resolution.value!r} for customer"
                f" {resolution.customer_id}; every system is being updated"
            )
    except review.ReviewError as exc:
        console.print(f"not resolved: {exc}")
        raise typer.Exit(1) from None


BY = typer.Option(help="Who decided (recorded).")


@review_app.command("merges")
def review_merges(
    limit: Annotated[int, typer.Option(help="At most this many, last seen first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Merges of duplicate customers, newest first (undo one with `unmerge`)."""
    from rich.table import Table

    from crmsync.review import list_merges

    merges = list_merges(_settings().dsn, limit)
    if as_json:
        sys.stdout.write(orjson.dumps(merges, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    table = Table(title=f"{len(merges)} merges")
    for column in ("id", "merged", "survivor", "loser", "how", "by", "undone"):
        table.add_column(column)
    for m in merges:
        table.add_row(
            str(m["id"]), f"{m['merged_at']:%m-%d %H:%M:%S}", m["survivor_id"], m["loser_id"],
            f"{m['method']} {m['confidence']:.2f}", m["merged_by"],
            f"by {m['undone_by']}" if m["undone_at"] else "",
        )  # fmt: skip
    console.print(table)


@review_app.command("unmerge")
def review_unmerge(
    merge_id: Annotated[int, typer.Argument(help="The merge's id (`review merges`).")],
    by: Annotated[str, BY] = os.environ.get("USER", "unknown"),
) -> None:
    """Undo a merge: the duplicate is a customer of its own again, in every system."""
    from crmsync.review import ReviewError, unmerge

    try:
        survivor, loser = unmerge(_settings(), merge_id, by=by)
    except ReviewError as exc:
        console.print(f"not undone: {exc}")
        raise typer.Exit(1) from None
    console.print(f"merge {merge_id} undone: {loser} and {survivor} are two customers again")


@review_app.command("unlink")
def review_unlink(
    system: Annotated[str, typer.Argument(help="crm, billing or support.")],
    external_id: Annotated[str, typer.Argument(help="The record's id in that system.")],
    by: Annotated[str, BY] = os.environ.get("USER", "unknown"),
) -> None:
    """Undo a link: the record becomes a customer of its own, and the customer it was linked
    to gets a new record in that system."""
    from crmsync.review import ReviewError, unlink

    try:
        old, new = unlink(_settings(), system, external_id, by=by)
    except ReviewError as exc:
        console.print(f"not unlinked: {exc}")
        raise typer.Exit(1) from None
    console.print(f"{system} record {external_id} unlinked from {old}: now customer {new}")


EMULATORS = ("hubspot", "salesforce", "stripe", "zendesk")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def emulator(
    ctx: typer.Context,
    vendor: Annotated[str, typer.Argument(help=f"One of {', '.join(EMULATORS)}.")],
) -> None:
    """Serve a local emulator of a vendor's API (`crmsync emulator stripe --help` for options)."""
    import importlib

    if vendor not in EMULATORS:
        raise typer.BadParameter(f"{vendor!r} is not one of {', '.join(EMULATORS)}")
    configure_logging("INFO", f"emulator-{vendor}")
    importlib.import_module(f"emulators.{vendor}").main(ctx.args)


if __name__ == "__main__":
    app()
