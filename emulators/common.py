"""What every vendor emulator shares: durable records, quotas, fault injection, webhooks and the
private `/_emulator` control routes.

Each emulator (`emulators.<vendor>`) keeps its records in memory for speed and writes every
change through to a `DurableStore` (SQLite), so a restarted emulator loses nothing. Vendor
specifics (paths, bodies, error shapes, rate-limit headers, webhook signatures) stay in the
vendor's module; this one knows nothing about any vendor.

Control routes, served next to the vendor's API, need no credentials and are not part of any
vendor's API::

    GET  /_emulator/stats                  counters, records, quota use, webhook deliveries
    POST /_emulator/faults   {...Faults}   inject errors, latency, a 429 storm or an outage
    GET  /_emulator/faults
    POST /_emulator/webhooks {"url": ..., "secret": ...}   subscribe to the vendor's webhooks
    GET  /_emulator/webhooks
    DELETE /_emulator/webhooks             unsubscribe every webhook (deliveries stop)
    POST /_emulator/reset                  forget every record, fault and subscription
    GET  /_emulator/receipts?after=N       with `--receipts`: when each record write arrived
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import pydantic
from aiohttp import ClientSession, ClientTimeout, web

__all__ = [
    "UNLIMITED",
    "Admission",
    "DurableStore",
    "FaultInjector",
    "Faults",
    "FixedWindowCounter",
    "Receipts",
    "SlidingWindowLimiter",
    "WebhookEmitter",
    "add_control_routes",
    "emulator_parser",
    "serve",
]

log = logging.getLogger("crmsync.emulator")


# --------------------------------------------------------------------------------------------
# Durable records
# --------------------------------------------------------------------------------------------


class DurableStore:
    """JSON documents by (collection, id), plus named counters, in one SQLite file.

    `path=None` keeps everything in memory (tests that do not restart the emulator). Writes
    are committed one by one in WAL mode: a killed emulator keeps every acknowledged write.
    """

    def __init__(self, path: Path | str | None, receipts: Receipts | None = None) -> None:
        self.receipts = receipts
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:")
        self._db.execute("pragma journal_mode=wal")
        self._db.execute("pragma synchronous=normal")
        self._db.execute(
            "create table if not exists records (collection text, id text, doc blob,"
            " primary key (collection, id))"
        )
        self._db.execute("create table if not exists counters (name text primary key, value int)")
        self._db.commit()

    def load(self, collection: str) -> Iterator[tuple[str, Any]]:
        """Every document of `collection`, in the order first written."""
        rows = self._db.execute(
            "select id, doc from records where collection = ? order by rowid", (collection,)
        )
        for record_id, doc in rows:
            yield record_id, orjson.loads(doc)

    def put(self, collection: str, record_id: str, doc: Any) -> None:
        body = orjson.dumps(doc)
        self._db.execute(
            "insert into records values (?, ?, ?)"
            " on conflict (collection, id) do update set doc = excluded.doc",
            (collection, record_id, body),
        )
        self._db.commit()
        if self.receipts is not None:
            self.receipts.note(body)

    def delete(self, collection: str, record_id: str) -> None:
        self._db.execute(
            "delete from records where collection = ? and id = ?", (collection, record_id)
        )
        self._db.commit()

    def next_value(self, name: str, start: int) -> int:
        """The next value of a durable sequence: `start`, `start + 1`, …"""
        row = self._db.execute(
            "insert into counters values (?, ?) on conflict (name) do update"
            " set value = value + 1 returning value",
            (name, start),
        ).fetchone()
        self._db.commit()
        return int(row[0])

    def clear(self) -> None:
        self._db.execute("delete from records")
        self._db.execute("delete from counters")
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class Receipts:
    """When each write of a synced record arrived (for benchmarks: `--receipts`).

    A record is recognised by the crmsync customer id it carries (HubSpot `crmsync_id`, Stripe
    `metadata.crmsync_id`, Zendesk `external_id`); its marker is the number in a `"state":
    "B<n>"` value (HubSpot's `state`, Stripe's `address.state`), -1 when it has none. Entries
    are `(unix time, customer id, marker)` in arrival order.
    """

    CUSTOMER = re.compile(rb'"(?:crmsync_id|external_id)":"([0-9a-f-]{36})"')
    MARKER = re.compile(rb'"state":"B(\d+)"')

    def __init__(self) -> None:
        self.entries: list[tuple[float, str, int]] = []

    def note(self, body: bytes) -> None:
        customer = self.CUSTOMER.search(body)
        if customer is None:
            return
        marker = self.MARKER.search(body)
        self.entries.append((time.time(), customer[1].decode(), int(marker[1]) if marker else -1))

    def since(self, after: int, limit: int = 100_000) -> dict[str, Any]:
        page = self.entries[after : after + limit]
        return {"receipts": page, "next": after + len(page)}


# --------------------------------------------------------------------------------------------
# Quotas
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """A limiter's verdict: whether the request may run, what is left, when the window frees."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until a refused request could succeed / the window renews


class SlidingWindowLimiter:
    """At most `limit` requests in any `window` seconds, per key (a token, an account).

    Refused requests do not count, as with HubSpot, Stripe and Zendesk.
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._log: dict[str, deque[float]] = {}

    def admit(self, key: str = "") -> Admission:
        now = self._clock()
        entries = self._log.setdefault(key, deque())
        while entries and entries[0] <= now - self.window:
            entries.popleft()
        if len(entries) >= self.limit:
            return Admission(False, self.limit, 0, entries[0] + self.window - now)
        entries.append(now)
        reset = entries[0] + self.window - now
        return Admission(True, self.limit, self.limit - len(entries), reset)


class FixedWindowCounter:
    """A daily-style allowance: `limit` requests per calendar window of `window` seconds
    (UTC-aligned, so a 86,400 s window renews at midnight UTC)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._period = -1
        self.used = 0

    def admit(self) -> Admission:
        now = self._clock()
        period = int(now // self.window)
        if period != self._period:
            self._period, self.used = period, 0
        reset = (period + 1) * self.window - now
        if self.used >= self.limit:
            return Admission(False, self.limit, 0, reset)
        self.used += 1
        return Admission(True, self.limit, self.limit - self.used, reset)


# --------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------


class Faults(pydantic.BaseModel):
    """Failures injected into API requests (never into `/_emulator`).

    `error_rate` answers that share of requests with `error_status` in the vendor's error shape;
    `latency_ms` delays every request; `throttle` answers every request with the vendor's 429;
    `outage` answers every request with 503 as a load balancer in front of a dead service
    would. `for_seconds` lifts all of them automatically; `seed` makes error draws repeatable.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    error_rate: float = pydantic.Field(default=0.0, ge=0.0, le=1.0)
    error_status: Literal[500, 502, 503, 504] = 503
    latency_ms: int = pydantic.Field(default=0, ge=0)
    throttle: bool = False
    outage: bool = False
    for_seconds: float | None = pydantic.Field(default=None, gt=0)
    seed: int = 0


Fault = Literal["outage", "throttle", "error"]


class FaultInjector:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.injected = 0
        self.set(Faults())

    def set(self, faults: Faults) -> None:
        self._faults = faults
        self._random = random.Random(faults.seed)
        self._until = None if faults.for_seconds is None else self._clock() + faults.for_seconds

    @property
    def faults(self) -> Faults:
        if self._until is not None and self._clock() >= self._until:
            self.set(Faults())
        return self._faults

    async def draw(self) -> Fault | None:
        """Apply the latency, then say which fault (if any) this request gets."""
        faults = self.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        fault: Fault | None = None
        if faults.outage:
            fault = "outage"
        elif faults.throttle:
            fault = "throttle"
        elif faults.error_rate and self._random.random() < faults.error_rate:
            fault = "error"
        if fault is not None:
            self.injected += 1
        return fault


def outage_response() -> web.Response:
    return web.Response(status=503, text="503 Service Unavailable", content_type="text/plain")


# --------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------


class Signer(Protocol):
    def __call__(self, body: bytes, url: str, secret: str) -> dict[str, str]:
        """The vendor's signature headers for one delivery of `body` to `url`."""


class Subscription(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    url: pydantic.AnyHttpUrl
    secret: pydantic.SecretStr


class WebhookEmitter:
    """Delivers the vendor's webhook events to every subscriber, signed the vendor's way.

    Deliveries run in the background in emission order, each retried with backoff up to
    `attempts` times (as the vendors do, though over minutes rather than days). Subscriptions
    are durable; undelivered events are not (vendors give up eventually, too; the inbound side
    polls as its backstop).
    """

    COLLECTION = "_webhooks"

    def __init__(self, store: DurableStore, sign: Signer, attempts: int = 5) -> None:
        self._store = store
        self._sign = sign
        self._attempts = attempts
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.subscriptions = [
            Subscription.model_validate(doc) for _, doc in store.load(self.COLLECTION)
        ]
        self.delivered = self.failed = 0

    def subscribe(self, subscription: Subscription) -> None:
        url = str(subscription.url)
        self._store.put(
            self.COLLECTION,
            url,
            {"url": url, "secret": subscription.secret.get_secret_value()},
        )
        self.subscriptions = [s for s in self.subscriptions if str(s.url) != url]
        self.subscriptions.append(subscription)

    def clear(self) -> None:
        for subscription in self.subscriptions:
            self._store.delete(self.COLLECTION, str(subscription.url))
        self.subscriptions = []

    def emit(self, event: Any) -> None:
        """Queue one event (a JSON-able value, or bytes already encoded) for every subscriber."""
        if self.subscriptions:
            self._queue.put_nowait(event if isinstance(event, bytes) else orjson.dumps(event))

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self, _app: web.Application | None = None) -> None:
        self._task = asyncio.create_task(self._deliver_forever())

    async def stop(self, _app: web.Application | None = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _deliver_forever(self) -> None:
        async with ClientSession(timeout=ClientTimeout(total=10)) as session:
            while True:
                body = await self._queue.get()
                for subscription in list(self.subscriptions):
                    await self._deliver(session, subscription, body)

    async def _deliver(self, session: ClientSession, sub: Subscription, body: bytes) -> None:
        url, secret = str(sub.url), sub.secret.get_secret_value()
        for attempt in range(self._attempts):
            headers = {"Content-Type": "application/json", **self._sign(body, url, secret)}
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    if response.status < 300:
                        self.delivered += 1
                        return
                    reason = f"HTTP {response.status}"
            except (TimeoutError, OSError) as exc:
                reason = repr(exc)
            log.info("webhook to %s failed (%s), attempt %d", url, reason, attempt + 1)
            await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
        self.failed += 1


# --------------------------------------------------------------------------------------------
# Control routes
# --------------------------------------------------------------------------------------------


class Emulated(Protocol):
    """What an emulator's state object offers the control routes."""

    faults: FaultInjector
    webhooks: WebhookEmitter

    def stats(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def add_control_routes(app: web.Application, state: Emulated) -> None:
    """Serve `/_emulator/*` for `state`, and run its webhook deliveries with the app."""

    async def get_stats(_: web.Request) -> web.Response:
        webhooks = state.webhooks
        return _json(
            200,
            {
                **state.stats(),
                "faults_injected": state.faults.injected,
                "webhooks_delivered": webhooks.delivered,
                "webhooks_failed": webhooks.failed,
                "webhooks_pending": webhooks.pending,
            },
        )

    async def post_faults(request: web.Request) -> web.Response:
        try:
            faults = Faults.model_validate_json(await request.read())
        except pydantic.ValidationError as error:
            return _json(400, {"error": error.errors(include_url=False, include_context=False)})
        state.faults.set(faults)
        return _json(200, faults.model_dump())

    async def get_faults(_: web.Request) -> web.Response:
        return _json(200, state.faults.faults.model_dump())

    async def post_webhooks(request: web.Request) -> web.Response:
        try:
            subscription = Subscription.model_validate_json(await request.read())
        except pydantic.ValidationError as error:
            return _json(400, {"error": error.errors(include_url=False, include_context=False)})
        state.webhooks.subscribe(subscription)
        return _json(201, {"url": str(subscription.url)})

    async def get_webhooks(_: web.Request) -> web.Response:
        return _json(200, {"subscriptions": [str(s.url) for s in state.webhooks.subscriptions]})

    async def delete_webhooks(_: web.Request) -> web.Response:
        state.webhooks.clear()
        return _json(200, {"subscriptions": []})

    async def post_reset(_: web.Request) -> web.Response:
        state.reset()
        state.faults.set(Faults())
        state.webhooks.clear()
        return web.Response(status=204)

    app.add_routes(
        [
            web.get("/_emulator/stats", get_stats),
            web.get("/_emulator/faults", get_faults),
            web.post("/_emulator/faults", post_faults),
            web.get("/_emulator/webhooks", get_webhooks),
            web.post("/_emulator/webhooks", post_webhooks),
            web.delete("/_emulator/webhooks", delete_webhooks),
            web.post("/_emulator/reset", post_reset),
        ]
    )
    app.on_startup.append(state.webhooks.start)
    app.on_cleanup.append(state.webhooks.stop)


# --------------------------------------------------------------------------------------------
# Running one
# --------------------------------------------------------------------------------------------


def emulator_parser(
    vendor: str, description: str, port: int, credential: str
) -> argparse.ArgumentParser:
    """The options every emulator takes; the vendor's module adds its quota and the like."""
    parser = argparse.ArgumentParser(prog=f"python -m emulators.{vendor}", description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--data", type=Path, help="SQLite file for the records (default: memory)")
    parser.add_argument("--token", help=f"the only {credential} to accept (default: any)")
    parser.add_argument(
        "--unlimited", action="store_true", help="lift every rate limit and quota (benchmarks)"
    )
    parser.add_argument(
        "--receipts", action="store_true", help="serve /_emulator/receipts (benchmarks)"
    )
    return parser


#: What `--unlimited` sets every rate limit and quota to.
UNLIMITED = 10**9


def serve(
    create_app: Callable[[DurableStore], web.Application],
    host: str,
    port: int,
    data: Path | str | None,
    receipts: bool = False,
    **run_options: Any,
) -> None:
    """Serve the app over a store kept in `data` (SQLite; None: memory) until interrupted;
    with `receipts`, also when each record write arrived (`GET /_emulator/receipts`)."""
    store = DurableStore(data, Receipts() if receipts else None)
    app = create_app(store)
    if store.receipts is not None:
        journal = store.receipts

        async def get_receipts(request: web.Request) -> web.Response:
            return _json(200, journal.since(int(request.query.get("after", "0"))))

        app.router.add_get("/_emulator/receipts", get_receipts)
    try:
        web.run_app(app, host=host, port=port, access_log=None, **run_options)
    finally:
        store.close()
