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
adapter_app = typer.Typer(help="Adapter workers (one per target).", no_args_is_help=True)
emulator_app = typer.Typer(help="Local emulators of the targets' APIs.", no_args_is_help=True)
app.add_typer(adapter_app, name="adapter")
app.add_typer(emulator_app, name="emulator")
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


@adapter_app.command("crm")
def adapter_crm() -> None:
    """Deliver crmsync.commands.crm to the CRM (HubSpot API)."""
    from prometheus_client import start_http_server

    from adapters.worker import run_crm_adapter

    settings = _settings()
    configure_logging(settings.log_level, "adapter-crm")
    start_http_server(settings.adapter_metrics_port, addr="127.0.0.1")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await run_crm_adapter(settings, stop)

    asyncio.run(main())


@emulator_app.command("hubspot")
def emulator_hubspot(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 18080,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    rate_max: Annotated[int, typer.Option(help="Requests per interval.")] = 100,
    rate_interval_ms: Annotated[int, typer.Option(help="Rate-limit interval.")] = 10_000,
    require_token: Annotated[
        bool, typer.Option(help="Accept only CRMSYNC_CRM_TOKEN (default: any bearer token).")
    ] = False,
) -> None:
    """Serve the HubSpot CRM v3 contacts emulator."""
    from emulators.hubspot import HubSpotEmulatorConfig, run

    configure_logging("INFO", "emulator-hubspot")
    config = HubSpotEmulatorConfig(
        rate_limit_max=rate_max,
        rate_limit_interval_ms=rate_interval_ms,
        required_token=_settings().crm_token if require_token else None,
    )
    run(config, host=host, port=port)


if __name__ == "__main__":
    app()
