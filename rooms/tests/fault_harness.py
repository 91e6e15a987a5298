"""Many calls on the production layout while its parts fail: the fault harness of
`bench/faults.py` (1,000 calls) and of the suite's `test_fault_harness.py` (a few dozen).

    python -m rooms.tests.fault_harness --calls 50 --json OUT   (root, inside `unshare -n`)

Inside a network namespace that has only loopback it starts a throwaway PostgreSQL, localstripe
behind a proxy that can answer errors or hang (`ProviderProxy`), and `scripts/cluster.sh` with
three Daphne processes behind HAProxy, the channel layer on two Redis shards, a broker Redis,
two Celery workers, beat and coturn. It books the calls through the Stripe gateway (a real hold
at localstripe for each seat), and plays each call with two protocol-level participants that
speak the page's signaling through the balancer: join, heartbeats, offer and answer, media
reports (kept until a later heartbeat is acknowledged and sent again on the next socket, as the
page does), stats, leave, and a resume after every drop. A few calls (`--media`) are played by
aiortc participants instead (rooms/tools/participant.py), sending real audio and video to each
other through the cluster's coturn; their signaling is the same. Each call follows a random script;
meanwhile the harness kills and brings back the cluster's processes, restarts a Redis shard and
PostgreSQL, and makes the payment provider fail.

The participants' scripts are the ground truth: the harness knows when both sides were in the
call and when their media was up (a drop the script did not ask for, such as the Daphne holding
the socket dying, does not take anyone out of the call: their media goes on peer to peer). In a
call with real media, "media up" is the video each side actually received from the other. Once
every room has ended and the payment commands have run, it compares what the server billed and
what the provider holds with that truth, and writes the summary (`--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from rooms.tests.e2e_services import (
    PROJECT_DIR,
    Deployment,
    DeploymentError,
    Service,
    loopback_only,
    port_open,
    wait_for,
)
from rooms.tools.participant import Participant, Video

logger = logging.getLogger("fault_harness")
T = TypeVar("T")

CLUSTER_PORT = 8700  # HAProxy; the Daphnes on 8701-8703
CLUSTER_REDIS_PORT = 6401  # channel-layer shards 6401, 6402; broker 6403
CLUSTER_TURN_PORT = 3501
DAPHNES = 3
LOCALSTRIPE_PORT = 8420
PROXY_PORT = 8421
WEBHOOK_RELAY_PORT = 8422
WEBHOOK_PATH = "/billing/webhooks/stripe/"
STRIPE_KEY = "sk_test_fault_harness"
WEBHOOK_SECRET = "whsec_fault_harness"  # noqa: S105 (a throwaway provider in the namespace)
GRACE_SECONDS = 20.0
# Closes of a socket that mean the participant is done with this room.
FINAL_CLOSES = {1000, 4000, 4001, 4002} | set(range(4400, 4500))
# What a process log says when an exception was not handled: a consumer that crashed
# (Daphne), a request answered 500 (Django), a task that failed (Celery), a callback or task
# nobody awaited (asyncio), Twisted's last resort. Errors the product handles and logs (a
# broadcast lost while a Redis shard is down) are counted apart, as `error_records`.
CRASH_PATTERNS = re.compile(
    r"Exception inside application|Internal Server Error|Unhandled error|Unhandled exception"
    r"|Task exception was never retrieved|Exception in callback|raised unexpected"
)
ERROR_RECORD = re.compile(r"^\S+ \S+ ERROR |: ERROR/", re.MULTILINE)
FAULT_KINDS = (
    "participant_drop",
    "daphne_kill",
    "worker_kill",
    "beat_kill",
    "redis_restart",
    "postgres_restart",
    "provider_errors",
    "provider_timeouts",
    "duplicate_closes",
    "staff_end",
    "expert_end",
)
INFRA_KINDS = FAULT_KINDS[1:8]
CALL_KINDS = ("participant_drop", "duplicate_closes", "staff_end", "expert_end")


def wall() -> float:
    return time.time()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


# --- the payment provider, and a proxy in front of it that fails on request -----------------


class ProviderProxy:
    """Forwards the gateway's requests to localstripe, or fails them: `errors` answers 500,
    either before forwarding or after (the provider acted, its answer is lost); `timeouts`
    holds the request past the gateway's time limit, again before or after forwarding. Counts
    the captures the provider accepted per PaymentIntent."""

    def __init__(self, port: int, upstream: int) -> None:
        self.mode = "ok"
        self.lock = threading.Lock()
        self.captures: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failed_intents: set[str] = set()
        self.modes_by_intent: dict[str, set[str]] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode, after = proxy.mode, random.random() < 0.5  # noqa: S311
                if mode != "ok" and not after:
                    proxy._fail(self, mode)
                    return
                connection = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                connection.close()
                found = re.fullmatch(r"/v1/payment_intents/([^/]+)/capture", self.path)
                if found and answer.status == 200:
                    with proxy.lock:
                        proxy.captures[found.group(1)] += 1
                if mode != "ok":
                    proxy._fail(self, mode)
                    return
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _any  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _fail(self, handler: BaseHTTPRequestHandler, mode: str) -> None:
        self.failed[mode] += 1
        found = re.match(r"/v1/payment_intents/([^/?]+)", handler.path)
        if found:
            with self.lock:
                self.failed_intents.add(found.group(1))
                self.modes_by_intent.setdefault(found.group(1), set()).add(mode)
        if mode == "timeouts":
            time.sleep(25)  # the gateway gives up after 20 s
            handler.close_connection = True
            return
        body = json.dumps({"error": {"type": "api_error", "message": "injected"}}).encode()
        handler.send_response(500)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()


@dataclass(eq=False)
class Delivery:
    """One provider event on its way to the deployment."""

    event_id: str
    body: bytes
    headers: dict[str, str]
    first: float  # when the provider sent it (monotonic)
    attempts: int = 0
    repeated: bool = False


class WebhookRelay:
    """The way from the provider's webhooks to the deployment, as Stripe delivers them: every
    event at least once, some twice, in no set order (each up to 3 s late), and again with
    backoff while the deployment answers anything but 2xx or does not answer (Stripe retries
    for three days; here for three minutes). localstripe posts each event here once; the relay
    takes it at once and delivers it through the balancer to the product's webhook."""

    def __init__(self, port: int, seed: int) -> None:
        import heapq
        from concurrent.futures import ThreadPoolExecutor

        self.heapq = heapq
        self.rng = random.Random(seed + 4)  # noqa: S311
        self.lock = threading.Condition()
        self.due: list[tuple[float, int, Delivery]] = []
        self.seq = 0
        self.busy = 0
        self.last_taken = 0.0
        self.events: dict[str, str] = {}  # id → type, as the provider sent them
        self.delivered: set[str] = set()
        self.given_up: set[str] = set()
        self.answers: Counter[str] = Counter()
        self.duplicates = 0
        self.retries = 0
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook")
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("content-type", "stripe-signature")
                }
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                relay.take(body, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._schedule, daemon=True).start()

    def take(self, body: bytes, headers: dict[str, str]) -> None:
        event = json.loads(body)
        with self.lock:
            self.last_taken = time.monotonic()
            self.events[event["id"]] = event["type"]
            delivery = Delivery(event["id"], body, headers, time.monotonic())
            self._later(self.rng.uniform(0, 3), delivery)

    def _later(self, delay: float, delivery: Delivery) -> None:
        self.seq += 1
        self.heapq.heappush(self.due, (time.monotonic() + delay, self.seq, delivery))
        self.lock.notify_all()

    def _schedule(self) -> None:
        while True:
            with self.lock:
                while not self.due or self.due[0][0] > time.monotonic():
                    self.lock.wait(self.due[0][0] - time.monotonic() if self.due else None)
                _, _, delivery = self.heapq.heappop(self.due)
                self.busy += 1
            self.pool.submit(self._deliver, delivery)

    def _deliver(self, delivery: Delivery) -> None:
        answer = self._post(delivery.body, delivery.headers)
        with self.lock:
            self.busy -= 1
            self.answers[answer] += 1
            delivery.attempts += 1
            if answer.startswith("2"):
                self.delivered.add(delivery.event_id)
                if not delivery.repeated and self.rng.random() < 0.05:
                    # Delivered again a moment later, as Stripe sometimes does.
                    self.duplicates += 1
                    delivery.repeated = True
                    self._later(self.rng.uniform(0, 5), delivery)
            elif time.monotonic() - delivery.first < 180:
                self.retries += 1
                backoff = min(20.0, 2.0 ** min(delivery.attempts, 5))
                self._later(backoff * self.rng.uniform(0.5, 1), delivery)
            else:
                self.given_up.add(delivery.event_id)
            self.lock.notify_all()

    def _post(self, body: bytes, headers: dict[str, str]) -> str:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", CLUSTER_PORT, timeout=30)
            connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            connection.close()
        except (OSError, http.client.HTTPException) as error:
            return type(error).__name__
        return str(response.status)

    def pending(self) -> int:
        with self.lock:
            return len(self.due) + self.busy

    def close(self) -> None:
        self.server.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)


# --- the deployment ---------------------------------------------------------------------------


@dataclass
class Layout:
    deployment: Deployment
    env: dict[str, str]
    cluster_dir: Path
    postgres: Service
    postgres_command: list[str]
    proxy: ProviderProxy
    webhooks: WebhookRelay

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{CLUSTER_PORT}"

    def pid(self, service: str) -> int | None:
        try:
            return int((self.cluster_dir / "run" / f"{service}.pid").read_text())
        except (OSError, ValueError):
            return None

    def cluster(self, *args: str, timeout: float = 150) -> str:
        done = subprocess.run(  # noqa: S603 (our own script)
            [str(PROJECT_DIR / "scripts" / "cluster.sh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise DeploymentError(
                f"cluster.sh {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    def kill(self, service: str) -> bool:
        """SIGKILL a cluster service's whole process group (a worker and its children)."""
        pid = self.pid(service)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Not our child (cluster.sh started it): gone, or a zombie until init reaps it.
            try:
                if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                    return True
            except OSError:
                return True
            time.sleep(0.05)
        return True

    def postgres_restart(self, immediate: bool) -> None:
        """Stop PostgreSQL (an immediate stop is a crash: recovery on start) and start it."""
        service = self.postgres
        os.killpg(service.process.pid, signal.SIGQUIT if immediate else signal.SIGINT)
        service.process.wait(timeout=30)
        self.deployment.services.remove(service)
        self.postgres = self.deployment.start(
            "postgres",
            self.postgres_command,
            user="postgres" if os.geteuid() == 0 else None,
            stop_signal=signal.SIGINT,
            cwd=self.deployment.root / "pg",
        )
        wait_for("PostgreSQL", lambda: _pg_ready(), 60, self.postgres.log)

    def logs(self) -> dict[str, str]:
        """The logs of the cluster's Django processes (Daphnes, Celery workers, beat)."""
        return {
            p.name: p.read_text(errors="replace")
            for p in sorted((self.cluster_dir / "log").glob("*.log"))
            if p.name.startswith(("daphne-", "celery-"))
        }


def _pg_ready() -> bool:
    from rooms.tests.e2e_services import PG_PORT, _postgres_bindir

    return (
        subprocess.run(  # noqa: S603
            [str(_postgres_bindir() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(PG_PORT)],
            check=False,
        ).returncode
        == 0
    )


def layout_start(deployment: Deployment, progress: Callable[[str], None], seed: int) -> Layout:
    progress("PostgreSQL, localstripe, the provider proxy and the webhook relay")
    # Commits survive PostgreSQL's crash (the harness kills it), as on a real server.
    database_url = deployment.postgres(durable=True)
    (postgres,) = [s for s in deployment.services if s.name == "postgres"]
    postgres_command = [str(arg) for arg in postgres.process.args]  # type: ignore[union-attr]
    localstripe_python = PROJECT_DIR / ".venv-localstripe" / "bin" / "python"
    if not localstripe_python.exists():
        subprocess.run([str(PROJECT_DIR / "scripts" / "localstripe.sh")], check=True)  # noqa: S603
    served = deployment.start(
        "localstripe",
        [str(localstripe_python), str(PROJECT_DIR / "scripts" / "localstripe-serve.py")]
        + [str(LOCALSTRIPE_PORT)],
    )
    wait_for("localstripe", lambda: port_open(LOCALSTRIPE_PORT), 30, served.log)
    proxy = ProviderProxy(PROXY_PORT, LOCALSTRIPE_PORT)
    webhooks = WebhookRelay(WEBHOOK_RELAY_PORT, seed)
    # localstripe signs every event and posts it to the relay.
    form = f"url=http://127.0.0.1:{WEBHOOK_RELAY_PORT}/&secret={WEBHOOK_SECRET}".encode()
    connection = http.client.HTTPConnection("127.0.0.1", LOCALSTRIPE_PORT, timeout=10)
    connection.request(
        "POST",
        "/_config/webhooks/fault-harness",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    if connection.getresponse().status != 200:
        raise DeploymentError("localstripe did not take the webhook's address")
    connection.close()
    cluster_dir = deployment.root / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "TEST_", "CELERY"))}
    env.update(
        CLUSTER_DIR=str(cluster_dir),
        CLUSTER_PORT=str(CLUSTER_PORT),
        CLUSTER_DAPHNES=str(DAPHNES),
        CLUSTER_REDIS_PORT=str(CLUSTER_REDIS_PORT),
        CLUSTER_TURN_PORT=str(CLUSTER_TURN_PORT),
        CLUSTER_MIGRATE="1",
        DATABASE_URL=database_url,
        SECRET_KEY="parley-faults-only-" + "7c1e9a4b2d8f6e3a0b5c9d2e7f4a1b8c6d3e0f5a2b9c",
        PAYMENT_PROVIDER="stripe",
        STRIPE_SECRET_KEY=STRIPE_KEY,
        STRIPE_PUBLISHABLE_KEY="pk_test_fault_harness",
        STRIPE_API_BASE=f"http://127.0.0.1:{PROXY_PORT}",
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        DATABASE_POOL_MAX="10",
    )
    layout = Layout(deployment, env, cluster_dir, postgres, postgres_command, proxy, webhooks)
    progress(f"scripts/cluster.sh start: HAProxy, {DAPHNES} Daphnes, 2 workers, beat, 3 Redis")
    layout.cluster("start", timeout=240)
    # This process speaks to the same database, channel layer and broker.
    r = CLUSTER_REDIS_PORT
    os.environ.update(
        {k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "PAYMENT_PROVIDER", "STRIPE_SECRET_KEY")}
        | {
            k: env[k]
            for k in ("STRIPE_PUBLISHABLE_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET")
        }
        | {
            "CHANNEL_REDIS_URLS": f"redis://127.0.0.1:{r}/0,redis://127.0.0.1:{r + 1}/0",
            "REDIS_URL": f"redis://127.0.0.1:{r + 2}/0",
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "0",
            "HTTPS": "0",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOCAL_PAYMENTS_ALLOWED": "1",
            "PARLEY_VAR_DIR": str(cluster_dir / "var"),
            "DATABASE_POOL_MAX": "40",
            "CELERY_TASK_ALWAYS_EAGER": "0",
        }
    )
    import django

    django.setup()
    return layout


# --- the calls ----------------------------------------------------------------------------------


@dataclass
class Script:
    """One call's plan, in seconds from its booked start."""

    expert_join: float
    client_join: float
    # (at, kind, details): participant_drop {side, seconds}, client_break {seconds},
    # expert_end, staff_end, duplicate_closes.
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Call:
    index: int
    room_id: int
    payment_id: int
    intent_id: str
    expert_id: int
    client_id: int
    expert_cookie: str
    client_cookie: str
    starts_at: float
    ends_at: float
    pricing: str
    script: Script
    # The truth, in wall-clock seconds.
    present: dict[str, list[list[float]]] = field(
        default_factory=lambda: {"expert": [], "client": []}
    )
    media: list[list[float]] = field(default_factory=list)
    ended_by: float | None = None  # an end the script made (expert, staff)
    sides: dict[str, Side | MediaSide] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    media_wanted: bool = False  # media should come up at the next answer
    outage: bool = False
    # Played by aiortc participants with real media: the truth is the video each side
    # received from the other (wall-clock intervals without a freeze), filled in at the end.
    real_media: bool = False
    frames: dict[str, list[list[float]]] = field(default_factory=dict)

    def side(self, role: str) -> Side:
        """A side of a call played by protocol-level participants."""
        side = self.sides[role]
        if not isinstance(side, Side):
            raise TypeError(f"call {self.index} is played with real media")
        return side

    def media_side(self, role: str) -> MediaSide:
        side = self.sides[role]
        if not isinstance(side, MediaSide):
            raise TypeError(f"call {self.index} is played at the protocol level")
        return side

    def media_up(self, at: float) -> None:
        if self.media and self.media[-1][1] == 0:
            return
        self.media.append([at, 0.0])
        for side in map(self.side, ("expert", "client")):
            side.report(
                {"type": "media_state", "peer": side.peer_id, "state": "connected"}
                | {"candidate_type": "host", "since": iso(at)}
            )

    def media_down(self, at: float) -> None:
        if self.media and self.media[-1][1] == 0:
            self.media[-1][1] = at

    def truth_seconds(self, closed_at: float) -> float:
        end = min(self.ends_at, closed_at, self.ended_by or closed_at)
        window = [[self.starts_at, end]]
        present = intersect(
            closed(self.present["expert"], end), closed(self.present["client"], end)
        )
        if self.real_media:
            # Video arriving both ways while both were in the call.
            both = intersect(
                present,
                intersect(self.frames.get("expert", []), self.frames.get("client", [])),
            )
        else:
            both = intersect(present, closed(self.media, end))
        return sum(b - a for a, b in intersect(both, window))


def closed(intervals: list[list[float]], end: float) -> list[list[float]]:
    return [[a, b if b else end] for a, b in intervals]


def intersect(a: Iterable[list[float]], b: Iterable[list[float]]) -> list[list[float]]:
    out = []
    for a0, a1 in a:
        for b0, b1 in b:
            lo, hi = max(a0, b0), min(a1, b1)
            if hi > lo:
                out.append([lo, hi])
    return out


class Side:
    """One participant's signaling socket through the balancer, as the page keeps it."""

    def __init__(self, call: Call, role: str, url: str, log: Callable[[str], None]) -> None:
        self.call, self.role, self.url, self.log = call, role, url, log
        self.user_id = call.expert_id if role == "expert" else call.client_id
        self.peer_id = call.client_id if role == "expert" else call.expert_id
        self.cookie = call.expert_cookie if role == "expert" else call.client_cookie
        self.socket: Any = None
        self.in_call = False  # the script has this person in the call
        self.finished = False
        self.outage = False
        # The page's outbox: media reports, each with the socket it went out on (None: not
        # yet, or again after that socket ended), until a heartbeat sent after it on that
        # socket is acknowledged.
        self.outbox: list[dict[str, Any]] = []
        self.confirming: list[dict[str, Any]] = []
        self.awaiting_ack = False
        self.welcomed: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.welcomes = 0
        self.drops: list[tuple[float, int | None]] = []
        # What the server told this side that a fault explains: (time, "unavailable").
        self.troubles: list[tuple[float, str]] = []
        self.resumes = 0
        self.ended: dict[str, Any] | None = None
        self.refusals: list[str] = []
        self.reports_sent: list[str] = []

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the socket -------------------------------------------------------------------------
    async def enter(self) -> None:
        """Join (or rejoin after a leave or an outage) and keep the socket until done."""
        self.in_call = True
        self.outage = False
        await self._open()

    async def _open(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.typing import Origin

        deadline = time.monotonic() + 60
        while not self.finished and self.in_call and not self.outage:
            try:
                socket = await connect(
                    f"ws://127.0.0.1:{CLUSTER_PORT}/ws/rooms/{self.call.room_id}/",
                    origin=Origin(self.url),
                    additional_headers={"Cookie": self.cookie},
                    open_timeout=10,
                    ping_interval=None,
                    proxy=None,
                )
            except (OSError, TimeoutError, InvalidStatus, WebSocketException):
                if time.monotonic() > deadline:
                    self.log(f"call {self.call.index} {self.role}: gave up connecting")
                    self.finished = True
                    return
                await asyncio.sleep(0.25)
                continue
            if self.finished or not self.in_call or self.outage:
                # The script took the person out while this connect was on its way.
                with contextlib.suppress(Exception):
                    await socket.close()
                return
            self.socket = socket
            self.spawn(self._read(socket))
            return

    async def _read(self, socket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for text in socket:
                await self._on(json.loads(text), socket)
        except ConnectionClosed:
            pass
        if socket is not self.socket:
            return
        self.socket = None
        code = socket.close_code
        self.drops.append((wall(), code))
        if self.finished or not self.in_call or self.outage:
            return
        if code == 4429:  # too many joins: the page waits the 10 s it is told
            self.refusals.append("closed 4429")
            await asyncio.sleep(10)
        elif code in FINAL_CLOSES:
            if code != 4000:
                self.log(f"call {self.call.index} {self.role}: closed {code}")
            self.finished = True
            return
        # Dropped by something the script did not do (a Daphne died, the server is briefly
        # unavailable): back at once, as the page does; the person never left the call.
        elif code == 4503:
            await asyncio.sleep(0.5)
        self.spawn(self._open())

    async def _on(self, message: dict[str, Any], socket: Any) -> None:
        kind = message["type"]
        call = self.call
        if kind == "welcome":
            self.welcomes += 1
            self.resumes += bool(message.get("resumed"))
            now = wall()
            if not call.present[self.role] or call.present[self.role][-1][1]:
                call.present[self.role].append([now, 0.0])
            self.spawn(self._heartbeat(socket, float(message["heartbeat_seconds"])))
            self.welcomed = socket
            self.confirming, self.awaiting_ack = [], False
            for entry in self.outbox:
                entry["on"] = None
            await self.flush(socket)
            peers = {p["id"] for p in message["peers"]}
            if self.role == "client" and self.peer_id in peers:
                await self.offer()
        elif kind in ("peer_joined", "peer_resumed"):
            if self.role == "client":
                await self.offer()
        elif kind == "signal":
            data = message["data"]
            if "description" in data and data["description"]["type"] == "offer":
                await self.send({"type": "signal", "to": self.peer_id, "data": ANSWER})
            elif "description" in data and data["description"]["type"] == "answer":
                if call.media_wanted and not call.outage:
                    call.media_wanted = False
                    call.media_up(wall())
        elif kind == "heartbeat_ack":
            # Everything sent on this socket before the heartbeat this answers has arrived.
            done = [e for e in self.confirming if e["on"] is socket]
            self.outbox = [e for e in self.outbox if not any(e is d for d in done)]
            self.confirming, self.awaiting_ack = [], False
        elif kind == "ended":
            self.ended = message
            self.finished = True
        elif kind == "error":
            self.refusals.append(f"{wall():.3f} {message.get('code')} {message.get('ref')}")
            if message.get("code") in RETRIED:
                self.troubles.append((wall(), message["code"]))
            if message.get("ref") == "media_state" and message.get("code") in RETRIED:
                # Not taken (the database restarts): the page sends its outbox again.
                self.confirming = []
                for entry in self.outbox:
                    entry["on"] = None
                self.spawn(self._resend(socket))

    async def _heartbeat(self, socket: Any, every: float) -> None:
        from websockets.exceptions import ConnectionClosed

        while socket is self.socket and not self.finished:
            await asyncio.sleep(every)
            if socket is not self.socket:
                return
            if self.awaiting_ack:
                # As the page: none while the last one is unanswered, or that one's ack would
                # confirm what was sent after it (lost if the Daphne then died: a call of a
                # 1,000-call run billed 7 s of an outage that way).
                continue
            self.confirming = [e for e in self.outbox if e["on"] is socket]
            self.awaiting_ack = True
            with contextlib.suppress(ConnectionClosed):
                await socket.send(json.dumps({"v": 1, "type": "heartbeat"}))

    async def _resend(self, socket: Any) -> None:
        await asyncio.sleep(1)
        await self.flush(socket)

    async def flush(self, socket: Any) -> None:
        """Send what the outbox holds that this socket has not carried, in order, once the
        socket is welcomed and the person's network is there."""
        if socket is not self.socket or socket is not self.welcomed or self.outage:
            return
        for entry in list(self.outbox):
            if entry["on"] is None:
                entry["on"] = socket
                await self._send(socket, entry["report"])

    async def _send(self, socket: Any, message: dict[str, Any]) -> None:
        from websockets.exceptions import ConnectionClosed

        if message["type"] == "media_state":
            self.reports_sent.append(f"{wall():.3f} {message['state']} {id(socket) % 10000}")
        with contextlib.suppress(ConnectionClosed):
            await socket.send(json.dumps({"v": 1, **message}))

    async def send(self, message: dict[str, Any]) -> None:
        if self.socket is not None and not self.outage:
            await self._send(self.socket, message)

    def report(self, report: dict[str, Any]) -> None:
        """A media report: kept until a heartbeat sent after it is acknowledged."""
        self.outbox.append({"report": report, "on": None})
        if self.socket is not None:
            self.spawn(self.flush(self.socket))

    async def end_for_everyone(self) -> None:
        """The expert's End: sent on an open socket, and again on the next one if the socket
        it went into died before `ended` came back (a Daphne killed at that moment). The truth
        is the last press before the room ended."""
        deadline = time.monotonic() + 30
        while not self.finished and time.monotonic() < deadline:
            socket = self.socket
            if socket is None or self.outage:
                await asyncio.sleep(0.1)
                continue
            self.call.ended_by = wall()
            await self._send(socket, {"type": "end"})
            while socket is self.socket and not self.finished:
                await asyncio.sleep(0.05)

    async def offer(self) -> None:
        await self.send({"type": "signal", "to": self.peer_id, "data": OFFER})

    # --- what the script does -----------------------------------------------------------------
    async def lose_network(self) -> None:
        """The person's network goes: the socket dies (no close frame) and media stops."""
        self.outage = True
        socket, self.socket = self.socket, None
        if socket is not None:
            self.drops.append((wall(), 1006))
            socket.transport.abort()

    async def leave(self) -> None:
        self.in_call = False
        socket, self.socket = self.socket, None
        if socket is not None:
            await self._send(socket, {"type": "leave"})
            with contextlib.suppress(Exception):
                await socket.close()

    async def stop(self) -> None:
        self.finished = True
        socket, self.socket = self.socket, None
        for task in list(self.tasks):
            task.cancel()
        if socket is not None:
            with contextlib.suppress(Exception):
                await socket.close()


class Person(Participant):
    """The aiortc participant, noting each media report it sends."""

    def __init__(self, side: MediaSide, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side = side

    def handle(self, message: dict[str, Any]) -> None:
        super().handle(message)
        if message.get("type") == "welcome":
            self.side.welcomed()

    async def send(self, message: dict[str, Any]) -> bool:
        sent = await super().send(message)
        if sent and message["type"] == "media_state":
            self.side.reports_sent.append(
                f"{wall():.3f} {message['state']} {message.get('since')} #{self.admissions}"
            )
        return sent


class MediaSide:
    """One participant of a call with real media: the aiortc participant of
    rooms/tools/participant.py (the page's signaling, outbox and resume; synthetic audio and
    video through the cluster's coturn), its socket through the balancer like a Side's. A
    rejoin after a break is a new Person, as a new page would be."""

    def __init__(self, call: Call, role: str, url: str, log: Callable[[str], None]) -> None:
        self.call, self.role, self.url, self.log = call, role, url, log
        self.user_id = call.expert_id if role == "expert" else call.client_id
        self.peer_id = call.client_id if role == "expert" else call.expert_id
        name, value = (call.expert_cookie if role == "expert" else call.client_cookie).split("=")
        self.cookies = {name: value}
        self.people: list[Person] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.reports_sent: list[str] = []
        self.gave_up = False
        self.notes: list[str] = []  # what went wrong joining, for the verdict's rows

    def note(self, line: str) -> None:
        self.notes.append(f"{wall():.3f} {line}")

    def links_state(self) -> list[str]:
        """Each page's connections to the other side at the end: state, connections used,
        frames received."""
        return [
            f"{link.pc.connectionState}/{link.pc.signalingState} x{link.connections} "
            f"video {link.frames.count} audio {link.audio_frames}"
            for person in self.people
            for link in person.links.values()
        ]

    @property
    def person(self) -> Person | None:
        return self.people[-1] if self.people else None

    @property
    def finished(self) -> bool:
        """Ended, removed, or the participant gave up coming back."""
        return self.gave_up or (self.person is not None and self.person.done.is_set())

    @property
    def drops(self) -> list[tuple[float, int | None]]:
        return [close for person in self.people for close in person.closes]

    def _errors(self) -> list[tuple[float, dict[str, Any]]]:
        return [(at, m) for p in self.people for at, m in p.messages if m["type"] == "error"]

    @property
    def troubles(self) -> list[tuple[float, str]]:
        return [(at, m["code"]) for at, m in self._errors() if m["code"] in RETRIED]

    @property
    def refusals(self) -> list[str]:
        return [f"{at:.3f} {m['code']} {m.get('ref')}" for at, m in self._errors()]

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def enter(self) -> None:
        """Join as a new page does. A refusal the server explains (it is restarting) is waited
        out by the participant's own resume; a handshake that fails or times out (no socket)
        is dialled again, by a new page."""
        from websockets.exceptions import WebSocketException

        from rooms.tools.participant import JoinRefused

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            person = self._person_new()
            mark = len(person.messages)
            try:
                await person.join(timeout=15)
                return
            except JoinRefused as refused:
                self.note(f"join: {refused!r}")
                with contextlib.suppress(TimeoutError):
                    await person.wait_for("welcome", since=mark, timeout=60)
                    return
                break
            except (OSError, TimeoutError, WebSocketException) as error:
                self.note(f"join: {error!r}")
                await person.close()
                await asyncio.sleep(0.5)
        self.log(f"call {self.call.index} {self.role}: gave up joining")
        self.gave_up = True

    def _person_new(self) -> Person:
        person = Person(
            self,
            [self.url],
            f"{self.role}@call{self.call.index}",
            "",
            self.call.room_id,
            name=f"call {self.call.index} {self.role}",
            resume_within=60,
            video=HARNESS_VIDEO,
        )
        person.cookies = dict(self.cookies)
        self.people.append(person)
        return person

    def welcomed(self) -> None:
        """In the call from the first welcome on (a resume after a drop the script did not
        make, a Daphne dying, continues it)."""
        present = self.call.present[self.role]
        if not present or present[-1][1]:
            present.append([wall(), 0.0])

    def away(self) -> None:
        for interval in self.call.present[self.role][-1:]:
            if interval[1] == 0:
                interval[1] = wall()

    def drop(self, seconds: float) -> None:
        """The socket goes for `seconds` (the network under it); the media goes on. The
        server does not bill a reconnect's gap (PRODUCT.md): the person is out of the call
        until the welcome of the socket that comes back."""
        if self.person is not None:
            self.away()
            self.person.drop(away=seconds)

    async def leave(self) -> None:
        if self.person is not None:
            self.away()
            await self.person.leave()
            await self.person.close()

    async def end_for_everyone(self) -> None:
        """As Side's: pressed again on the next socket until `ended` comes back."""
        deadline = time.monotonic() + 30
        while not self.finished and time.monotonic() < deadline and self.person is not None:
            person, admission = self.person, self.person.admissions
            self.call.ended_by = wall()
            if not await person.end():
                await asyncio.sleep(0.1)
                continue
            while person.admissions == admission and not self.finished:
                await asyncio.sleep(0.05)

    async def send(self, message: dict[str, Any]) -> None:
        if self.person is not None:
            await self.person.send(message)

    def frames(self) -> list[list[float]]:
        """The video this side received from the other over the call, all pages together."""
        out: list[list[float]] = []
        for person in self.people:
            log = person.received.get(self.peer_id)
            out += log.intervals if log else []
        return sorted(out)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for person in self.people:
            with contextlib.suppress(Exception):
                await person.close()


RETRIED = {"unavailable", "server_error"}
# Real media in the harness: small and slow enough for a few calls at once on two cores.
HARNESS_VIDEO = Video(width=160, height=120, fps=10)
OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}
ANSWER = {"description": {"type": "answer", "sdp": "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n"}}


# --- booking ------------------------------------------------------------------------------------


def calls_book(
    count: int,
    *,
    length_s: tuple[int, int],
    seed: int,
    progress: Callable[[str], None],
) -> tuple[list[Call], int]:
    """`count` private rooms of as many experts and clients, each seat held at localstripe
    through the product's own card step, booked two days ahead (`calls_schedule` moves them
    to now). Returns the calls and the staff user's id."""
    import stripe
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction

    from accounts.models import User
    from billing import services as billing
    from rooms.models import Pricing, Room, RoomKind, Seat, SeatState

    rng = random.Random(seed)  # noqa: S311
    api = stripe.StripeClient(
        STRIPE_KEY, base_addresses={"api": f"http://127.0.0.1:{LOCALSTRIPE_PORT}"}
    )
    label = f"f{int(wall())}"
    users = [
        User(email=f"{who}{i}@{label}.test", display_name=f"{who.title()} {i}", time_zone="UTC")
        for i in range(count)
        for who in ("expert", "client")
    ]
    for user in users:
        user.set_unusable_password()
    User.objects.bulk_create(users)
    staff = User.objects.create(email=f"staff@{label}.test", display_name="Staff", is_staff=True)
    experts, clients = users[0::2], users[1::2]
    far = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    calls: list[Call] = []
    progress(f"booking {count} calls, each seat held at the provider")
    for i, (expert, client) in enumerate(zip(experts, clients, strict=True)):
        length = rng.randint(*length_s)
        booked = far + timedelta(minutes=10 * i)
        fixed = i % 2 == 0
        with transaction.atomic():
            room = Room.objects.create(
                expert=expert,
                kind=RoomKind.PRIVATE,
                title="Fault drill",
                starts_at=booked,
                ends_at=booked + timedelta(seconds=length),
                blocked_from=booked,
                blocked_until=booked + timedelta(seconds=length),
                pricing=Pricing.FIXED if fixed else Pricing.PER_MINUTE,
                price_minor=3000 if fixed else 100,
                currency="EUR",
                late_cancel_fee_percent=50,
                no_show_fee_percent=50,
            )
            payment = billing.payment_open(
                payer=client,
                payee=expert,
                amount_minor=room.max_amount_minor,
                currency="EUR",
                description=room.title,
                starts_at=room.starts_at,
            )
            Seat.objects.create(
                room=room,
                client=client,
                state=SeatState.RESERVED,
                reserved_until=booked,
                payment=payment,
            )
        billing.payment_checkout(payment.pk)
        payment.refresh_from_db()
        method = api.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "cvc": "123",
                },
            }
        )
        api.v1.payment_intents.update(payment.intent_id, params={"payment_method": method.id})
        api.v1.payment_intents.confirm(payment.intent_id)
        billing.payment_sync(payment.pk, source="fault harness")
        if not Seat.objects.filter(room=room, state=SeatState.CONFIRMED).exists():
            raise RuntimeError(f"call {i}: the seat was not confirmed after the hold")
        cookies = {}
        for user in (expert, client):
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.save()
            cookies[user.pk] = f"sessionid={session.session_key}"
        calls.append(
            Call(
                index=i,
                room_id=room.pk,
                payment_id=payment.pk,
                intent_id=payment.intent_id,
                expert_id=expert.pk,
                client_id=client.pk,
                expert_cookie=cookies[expert.pk],
                client_cookie=cookies[client.pk],
                starts_at=booked.timestamp(),
                ends_at=booked.timestamp() + length,
                pricing="fixed" if fixed else "per_minute",
                script=Script(expert_join=-rng.uniform(1, 4), client_join=rng.uniform(-3, 3)),
            )
        )
        if (i + 1) % 100 == 0:
            progress(f"  {i + 1} booked")
    return calls, staff.pk


def calls_schedule(calls: list[Call], *, first_start: float, spread_s: float, seed: int) -> None:
    """Move the booked rooms to start from `first_start` over `spread_s` seconds, each keeping
    its length (and so its hold)."""
    from rooms.models import Room

    rng = random.Random(seed + 3)  # noqa: S311
    for call in calls:
        length = call.ends_at - call.starts_at
        call.starts_at = float(
            int(first_start + spread_s * call.index / len(calls) + rng.uniform(0, 2))
        )
        call.ends_at = call.starts_at + length
        starts = datetime.fromtimestamp(call.starts_at, UTC)
        ends = datetime.fromtimestamp(call.ends_at, UTC)
        Room.objects.filter(pk=call.room_id).update(
            starts_at=starts, ends_at=ends, blocked_from=starts, blocked_until=ends
        )


def real_media_choose(calls: list[Call], count: int) -> None:
    """`count` calls, evenly spread over the run, are played with real media (MediaSide)."""
    count = min(count, len(calls))
    for k in range(count):
        calls[int(len(CALL_KINDS) + k * len(calls) / count) % len(calls)].real_media = True


def scripts_write(calls: list[Call], seed: int) -> None:
    """Each call's faults and breaks. The first calls get one of each kind, so a small run
    has them all."""
    rng = random.Random(seed + 1)  # noqa: S311
    for call in calls:
        length = call.ends_at - call.starts_at
        events = call.script.events
        forced = CALL_KINDS[call.index] if call.index < len(CALL_KINDS) else None
        # One thing at a time in a call: a break starts after an outage is over, and an
        # end comes after both.
        free_from = 8.0
        if forced == "participant_drop" or (forced is None and rng.random() < 0.3):
            side = rng.choice(("expert", "client"))
            at, seconds = rng.uniform(8, length - 30), rng.uniform(2, 8)
            events.append((at, "participant_drop", {"side": side, "seconds": seconds}))
            free_from = at + seconds + 5
        if forced is None and rng.random() < 0.1 and free_from < length - 25:
            at, seconds = rng.uniform(free_from, length - 25), rng.uniform(2, 6)
            events.append((at, "client_break", {"seconds": seconds}))
            free_from = at + seconds + 5
        ending = rng.random()
        end_from = max(length / 2, min(free_from, length - 6))
        if forced == "expert_end" or (forced is None and ending < 0.06):
            events.append((rng.uniform(end_from, length - 5), "expert_end", {}))
        elif forced == "staff_end" or (forced is None and ending < 0.12):
            events.append((rng.uniform(end_from, length - 5), "staff_end", {}))
        elif forced == "duplicate_closes" or (forced is None and ending < 0.2):
            events.append((length + rng.uniform(0, 0.3), "duplicate_closes", {}))
        events.sort(key=lambda e: e[0])


# --- running ------------------------------------------------------------------------------------


class Harness:
    def __init__(
        self, layout: Layout, calls: list[Call], staff_id: int, *, faults_every: float, seed: int
    ) -> None:
        self.layout = layout
        self.calls = calls
        self.staff_id = staff_id
        self.faults_every = faults_every
        self.rng = random.Random(seed + 2)  # noqa: S311
        self.injected: Counter[str] = Counter()
        self.fault_log: list[Fault] = []
        self.lines: list[str] = []
        self.harness_errors = 0

    def log(self, line: str) -> None:
        self.lines.append(f"{wall():.3f} {line}")

    def fault(self, kind: str, detail: str = "", call: Call | None = None) -> Fault:
        self.injected[kind] += 1
        fault = Fault(kind, detail, wall(), call.index if call else None)
        self.fault_log.append(fault)
        return fault

    async def run(self) -> None:
        last_end = max(c.ends_at for c in self.calls)
        first = min(c.starts_at for c in self.calls)
        infra = asyncio.create_task(self.faults_infra(first + 5, last_end - 5))
        await asyncio.gather(*(self.call_play(call) for call in self.calls))
        infra.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await infra
        # Anything killed comes back before the checks.
        await asyncio.to_thread(self.revive_all)

    # --- one call -------------------------------------------------------------------------------
    async def call_play(self, call: Call) -> None:
        kind = MediaSide if call.real_media else Side
        expert = kind(call, "expert", self.layout.url, self.log)
        client = kind(call, "client", self.layout.url, self.log)
        call.sides = {"expert": expert, "client": client}
        call.media_wanted = True
        actions = [
            (call.starts_at + call.script.expert_join, "join", {"side": "expert"}),
            (call.starts_at + call.script.client_join, "join", {"side": "client"}),
        ] + [(call.starts_at + at, kind, details) for at, kind, details in call.script.events]
        actions.sort(key=lambda a: a[0])
        for at, kind, details in actions:
            await asyncio.sleep(max(0.0, at - wall()))
            if expert.finished and client.finished:
                break
            try:
                await self.action(call, kind, details)
            except Exception as error:  # noqa: BLE001 (the harness's own fault: logged, counted)
                self.log(f"call {call.index}: {kind} failed: {error!r}")
                self.harness_errors += 1
        # The paid end (or the end the script made) closes the sockets; wait for it.
        deadline = call.ends_at + 40
        while not (expert.finished and client.finished) and wall() < deadline:
            await asyncio.sleep(0.5)
        for side in (expert, client):
            for interval in call.present[side.role]:
                if interval[1] == 0:
                    interval[1] = wall()
            if isinstance(side, MediaSide):
                side.notes += side.links_state()
            await side.stop()
        if call.media and call.media[-1][1] == 0:
            call.media[-1][1] = wall()
        for side in (expert, client):
            if isinstance(side, MediaSide):
                call.frames[side.role] = side.frames()

    async def action(self, call: Call, kind: str, details: dict[str, Any]) -> None:
        sides = call.sides
        if kind == "join":
            sides[details["side"]].spawn(sides[details["side"]].enter())
        elif kind == "participant_drop" and call.real_media:
            # The socket only: the media goes on peer to peer meanwhile (through TURN).
            self.fault(
                "participant_drop", f"{details['side']} socket {details['seconds']:.1f} s", call
            )
            call.media_side(details["side"]).drop(details["seconds"])
        elif kind == "participant_drop":
            self.fault("participant_drop", f"{details['side']} {details['seconds']:.1f} s", call)
            await self.outage(call, call.side(details["side"]), details["seconds"])
        elif kind == "client_break" and call.real_media:
            # Leaves (the page closes its connections) and comes back as a new page.
            client = call.media_side("client")
            await client.leave()
            await asyncio.sleep(details["seconds"])
            await client.enter()
        elif kind == "client_break":
            await self.away(call, call.side("client"), details["seconds"])
        elif kind == "expert_end":
            self.fault("expert_end", "", call)
            await sides["expert"].end_for_everyone()
        elif kind == "staff_end":
            self.fault("staff_end", "", call)
            call.ended_by = await asyncio.to_thread(self.staff_end, call.room_id)
        elif kind == "duplicate_closes":
            self.fault("duplicate_closes", "", call)
            await self.closes_at_once(call)

    async def outage(self, call: Call, side: Side, seconds: float) -> None:
        at = wall()
        side.in_call = False
        call.outage = True
        call.media_down(at)
        for interval in call.present[side.role][-1:]:
            interval[1] = at
        await side.lose_network()
        other = call.side("client" if side.role == "expert" else "expert")
        # Each side's ICE notices a moment later; each reports when media last arrived.
        since = {"state": "disconnected", "since": iso(at)}
        await asyncio.sleep(2)
        other.report({"type": "media_state", "peer": other.peer_id, **since})
        side.report({"type": "media_state", "peer": side.peer_id, **since})
        await asyncio.sleep(max(0.0, seconds - 2))
        call.outage = False
        call.media_wanted = True
        await side.enter()

    async def away(self, call: Call, side: Side, seconds: float) -> None:
        at = wall()
        call.media_down(at)
        for interval in call.present["client"][-1:]:
            if interval[1] == 0:
                interval[1] = at
        since = {"state": "disconnected", "since": iso(at)}
        side.report({"type": "media_state", "peer": side.peer_id, **since})
        await asyncio.sleep(0.2)
        await side.leave()
        await asyncio.sleep(1)
        call.side("expert").report({"type": "media_state", "peer": side.user_id, **since})
        await asyncio.sleep(seconds)
        call.media_wanted = True
        await side.enter()

    def staff_end(self, room_id: int) -> float | None:
        """Staff end the room (as the admin's action does); returns when the attempt that
        ended it began (PostgreSQL may be restarting: the staff member tries again)."""
        from accounts.models import User
        from moderation.services.errors import ModerationError
        from moderation.services.live import staff_room_end

        staff = self.db(lambda: User.objects.get(pk=self.staff_id))
        began = [0.0]

        def end() -> None:
            began[0] = wall()
            staff_room_end(room_id, actor=staff, reason="Fault drill: staff end")

        try:
            self.db(end)
        except ModerationError as refused:
            self.log(f"staff end of room {room_id} refused: {refused}")
            return None
        return began[0]

    async def closes_at_once(self, call: Call) -> None:
        from rooms.models import CloseReason
        from rooms.services import room_close, room_close_if_due
        from rooms.tasks import rooms_close_due

        def close() -> None:
            self.db(lambda: room_close(call.room_id, reason=CloseReason.TIME_LIMIT))

        def if_due() -> None:
            self.db(lambda: room_close_if_due(call.room_id))

        def queued() -> None:
            rooms_close_due.delay([call.room_id])

        jobs = [close, close, close, if_due, queued]
        await asyncio.gather(
            call.sides["expert"].send({"type": "end"}),
            *(asyncio.to_thread(job) for job in jobs),
            return_exceptions=True,
        )

    def db(self, action: Callable[[], T]) -> T:
        """A database action of the harness, retried while PostgreSQL restarts."""
        import psycopg
        from django.db import OperationalError, close_old_connections
        from django.db.utils import InterfaceError

        deadline = time.monotonic() + 60
        while True:
            close_old_connections()
            try:
                return action()
            except (OperationalError, InterfaceError, psycopg.Error):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # --- the infrastructure's faults -----------------------------------------------------------
    async def faults_infra(self, first: float, last: float) -> None:
        kinds = list(INFRA_KINDS)
        self.rng.shuffle(kinds)
        at = first
        n = 0
        while at < last:
            await asyncio.sleep(max(0.0, at - wall()))
            kind = kinds[n % len(kinds)]
            n += 1
            try:
                await asyncio.to_thread(self.infra, kind)
            except Exception as error:  # noqa: BLE001 (the run goes on; the log says what failed)
                self.log(f"fault {kind} failed: {error!r}")
            for fault in self.fault_log:
                if fault.kind == kind and not fault.ended:
                    fault.ended = wall()
            at = max(at + self.faults_every * self.rng.uniform(0.7, 1.3), wall() + 1)

    def infra(self, kind: str) -> None:
        layout = self.layout
        if kind == "daphne_kill":
            name = f"daphne-{self.rng.randint(1, DAPHNES)}"
            self.fault(kind, name)
            layout.kill(name)
            time.sleep(2)
            layout.cluster("revive", name)
        elif kind == "worker_kill":
            name = f"celery-worker-{self.rng.randint(1, 2)}"
            self.fault(kind, name)
            layout.kill(name)
            time.sleep(3)
            layout.cluster("revive", name)
        elif kind == "beat_kill":
            self.fault(kind, "celery-beat")
            layout.kill("celery-beat")
            time.sleep(3)
            layout.cluster("revive", "celery-beat")
        elif kind == "redis_restart":
            name = f"redis-channels-{self.rng.randint(1, 2)}"
            self.fault(kind, name)
            layout.kill(name)
            time.sleep(1)
            layout.cluster("revive", name)
        elif kind == "postgres_restart":
            immediate = self.injected[kind] % 2 == 1
            self.fault(kind, "immediate" if immediate else "fast")
            layout.postgres_restart(immediate)
        elif kind in ("provider_errors", "provider_timeouts"):
            self.fault(kind)
            layout.proxy.mode = kind.removeprefix("provider_")
            time.sleep(6)
            layout.proxy.mode = "ok"

    def revive_all(self) -> None:
        for name in [f"daphne-{k}" for k in range(1, DAPHNES + 1)] + [
            "celery-worker-1",
            "celery-worker-2",
            "celery-beat",
            "redis-channels-1",
            "redis-channels-2",
        ]:
            pid = self.layout.pid(name)
            if pid is None or not Path(f"/proc/{pid}").exists():
                self.layout.cluster("revive", name)


# --- the verdict ----------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    detail: str
    at: float
    call: int | None
    ended: float = 0.0


def fault_effects(
    harness: Harness,
    *,
    errors_by_call: dict[int, float],
    rooms: dict[int, Any],
    closes_ran: dict[int, float],
) -> tuple[dict[str, dict[str, Any]], set[int]]:
    """What each kind of fault did to the calls it hit. A call's own fault hits that call. A
    fault of the infrastructure hits the calls that felt it while it lasted (until what was
    killed was back, and a few seconds more): a Daphne's death the calls whose sockets it
    dropped; a Redis shard or PostgreSQL restarting those told `unavailable` (a message not
    taken, a socket refused 4503); a worker or beat down the rooms that closed meanwhile; the
    provider failing the seats whose requests it failed."""
    effects: dict[str, dict[str, Any]] = {}
    touched: set[int] = set()
    for kind in FAULT_KINDS:
        faults = [f for f in harness.fault_log if f.kind == kind]
        hit: set[int] = set()
        running: set[int] = set()
        dropped = 0
        for fault in faults:
            until = max(fault.ended, fault.at) + 3
            for call in harness.calls:
                sides = call.sides.values()
                drops = [
                    code for side in sides for at, code in side.drops if fault.at <= at <= until
                ]
                if fault.call is not None:
                    if call.index == fault.call:
                        hit.add(call.index)
                        running.add(call.index)
                        dropped += sum(1 for code in drops if code != 4000)
                    continue
                begun = call.starts_at + min(call.script.expert_join, call.script.client_join)
                if begun <= until and fault.at <= call.ends_at:
                    running.add(call.index)
                troubled = any(fault.at <= at <= until for side in sides for at, _ in side.troubles)
                if kind == "daphne_kill":
                    felt = 1006 in drops
                elif kind in ("redis_restart", "postgres_restart"):
                    felt = troubled or 4503 in drops
                elif kind in ("worker_kill", "beat_kill"):
                    felt = fault.at <= closes_ran.get(call.index, 0) <= until + 7
                else:
                    felt = False
                if felt:
                    hit.add(call.index)
                    dropped += sum(1 for code in drops if code != 4000)
        if kind in ("provider_errors", "provider_timeouts"):
            failed = harness.layout.proxy.failed_intents
            hit = {c.index for c in harness.calls if c.intent_id in failed}
            # Both kinds fail the same seats' requests: each kind counts the seats whose
            # requests failed while it was on.
            hit = {
                i
                for i in hit
                if kind.removeprefix("provider_")
                in harness.layout.proxy.modes_by_intent.get(harness.calls[i].intent_id, set())
            }
        touched |= hit
        errors = [errors_by_call[i] for i in hit if i in errors_by_call]
        effects[kind] = {
            "injected": len(faults),
            "calls_running": len(running),
            "calls_hit": len(hit),
            "sockets_dropped": dropped,
            "max_billing_error_s": round(max(errors), 3) if errors else None,
            "close_reasons": dict(
                Counter(rooms[harness.calls[i].room_id].close_reason for i in hit)
            ),
        }
    return effects, touched


def verdict(harness: Harness, *, drain_s: float, progress: Callable[[str], None]) -> dict[str, Any]:
    import stripe
    from django.db.models import Count

    from billing.models import CommandKind, CommandState, PaymentCommand, Settlement, WebhookEvent
    from rooms.models import Room, RoomEvent, RoomState

    calls = harness.calls
    room_ids = [c.room_id for c in calls]
    relay = harness.layout.webhooks
    progress("waiting for the rooms to close, the payment commands and the webhooks")
    deadline = time.monotonic() + drain_s
    while True:
        open_rooms = harness.db(
            lambda: (
                Room.objects.filter(pk__in=room_ids)
                .exclude(state__in=(RoomState.CLOSED, RoomState.CANCELED))
                .count()
            )
        )
        pending = harness.db(
            lambda: PaymentCommand.objects.filter(
                payment_id__in=[c.payment_id for c in calls], state=CommandState.PENDING
            ).count()
        )
        unprocessed = harness.db(
            lambda: WebhookEvent.objects.filter(processed_at__isnull=True).count()
        )
        # The provider sends an event a second after the change; the relay delays it up to 3.
        quiet = time.monotonic() - relay.last_taken > 6 and relay.pending() == 0
        settled = open_rooms == 0 and pending == 0 and quiet and unprocessed == 0
        if settled or time.monotonic() > deadline:
            break
        time.sleep(2)
    progress(
        f"  {open_rooms} rooms open, {pending} payment commands pending, "
        f"{relay.pending()} webhooks on their way, {unprocessed} stored and not processed"
    )
    webhooks = webhooks_verdict(harness)

    rooms = harness.db(lambda: {r.pk: r for r in Room.objects.filter(pk__in=room_ids)})
    closes = harness.db(
        lambda: {
            e.room_id: e for e in RoomEvent.objects.filter(room_id__in=room_ids, kind="closed")
        }
    )
    settlements = harness.db(
        lambda: {
            s.payment_id: s
            for s in Settlement.objects.filter(payment_id__in=[c.payment_id for c in calls])
        }
    )
    captures = harness.db(
        lambda: dict(
            PaymentCommand.objects.filter(
                payment_id__in=[c.payment_id for c in calls], kind=CommandKind.CAPTURE
            )
            .values_list("payment_id")
            .annotate(n=Count("id"))
        )
    )
    api = stripe.StripeClient(
        STRIPE_KEY, base_addresses={"api": f"http://127.0.0.1:{LOCALSTRIPE_PORT}"}
    )
    stuck, lost, held, double = [], [], [], []
    errors: list[tuple[float, int]] = []
    rows = []
    for call in calls:
        room = rooms[call.room_id]
        event = closes.get(call.room_id)
        ran_at = datetime.fromisoformat(event.data["ran_at"]).timestamp() if event else None
        if room.state != RoomState.CLOSED or ran_at is None or ran_at > call.ends_at + 30:
            stuck.append(call.index)
        settlement = settlements.get(call.payment_id)
        intent = api.v1.payment_intents.retrieve(call.intent_id)
        if intent.status == "requires_capture":
            held.append(call.index)
        if (
            captures.get(call.payment_id, 0) > 1
            or harness.layout.proxy.captures[call.intent_id] > 1
        ):
            double.append(call.index)
        if settlement is None:
            lost.append(call.index)
            continue
        expected_status = "succeeded" if settlement.amount_minor > 0 else "canceled"
        if intent.status != expected_status:
            lost.append(call.index)
        seat = next(
            (
                s
                for s in (event.data.get("seats") if event else []) or []
                if s.get("client") == call.client_id
            ),
            None,
        )
        server = (
            float(seat["billable_exact_seconds"])
            if seat and "billable_exact_seconds" in seat
            else 0.0
        )
        closed_at = room.closed_at.timestamp() if room.closed_at else call.ends_at
        truth = call.truth_seconds(closed_at)
        errors.append((abs(server - truth), call.index))
        rows.append(
            {
                "call": call.index,
                "reason": room.close_reason,
                "real_media": call.real_media,
                "truth_s": round(truth, 2),
                "billed_s": round(server, 2),
                "charged_minor": settlement.amount_minor,
                "provider": intent.status,
                "script": [(round(a, 1), k, d) for a, k, d in call.script.events],
                "starts_at": call.starts_at,
                "truth": {
                    "expert": call.present["expert"],
                    "client": call.present["client"],
                    "media": call.media,  # a protocol-level call's
                    "video": call.frames,  # a call with real media: what each side received
                },
                "server": {
                    k: seat.get(k)
                    for k in (
                        "expert_presence",
                        "client_presence",
                        "media_links",
                        "booked",
                        "live_window",
                    )
                }
                if seat
                else None,
                "drops": {r: s.drops for r, s in call.sides.items()},
                "refusals": {r: s.refusals for r, s in call.sides.items()},
                "media_notes": {
                    r: s.notes for r, s in call.sides.items() if isinstance(s, MediaSide)
                },
                "reports_sent": {r: s.reports_sent for r, s in call.sides.items()},
            }
        )
    logs = harness.layout.logs()
    crashes = {name: len(CRASH_PATTERNS.findall(text)) for name, text in logs.items()}
    crashes = {k: v for k, v in crashes.items() if v}
    error_records = {name: len(ERROR_RECORD.findall(text)) for name, text in logs.items()}
    error_kinds: Counter[str] = Counter()
    for text in logs.values():
        for line in text.splitlines():
            if ERROR_RECORD.search(line):
                # The message without its time, process and the numbers in it.
                error_kinds[re.sub(r"\d+", "N", line.split("ERROR", 1)[1])[:160]] += 1
    errors.sort(reverse=True)
    closes_ran = {
        c.index: datetime.fromisoformat(closes[c.room_id].data["ran_at"]).timestamp()
        for c in calls
        if c.room_id in closes and "ran_at" in closes[c.room_id].data
    }
    by_kind, touched = fault_effects(
        harness, errors_by_call={i: e for e, i in errors}, rooms=rooms, closes_ran=closes_ran
    )
    calm = [e for e, i in errors if i not in touched]
    real = [e for e, i in errors if calls[i].real_media]
    return {
        "summary": {
            "calls": len(calls),
            "faults_injected": {kind: harness.injected[kind] for kind in FAULT_KINDS},
            "double_captures": len(double),
            "lost_settlements": len(lost),
            "holds_left_at_provider": len(held),
            "stuck_rooms": len(stuck),
            "max_billing_error_s": round(errors[0][0], 3) if errors else 0.0,
            "crashes": sum(crashes.values()),
        },
        "details": {
            "stuck": stuck,
            "lost": lost,
            "held": held,
            "double": double,
            "calls": [{k: v for k, v in r.items() if k != "truth"} for r in rows],
            "worst_billing": [
                {"error_s": round(e, 3), **next(r for r in rows if r["call"] == i)}
                for e, i in errors[:10]
            ],
            "crashes_by_log": crashes,
            "error_records": {k: v for k, v in error_records.items() if v},
            "error_kinds": dict(error_kinds.most_common(12)),
            "close_reasons": dict(Counter(rooms[c.room_id].close_reason for c in calls)),
            "provider_failed_requests": dict(harness.layout.proxy.failed),
            "webhooks": webhooks,
            "by_kind": by_kind,
            "untouched": {
                "calls": len(calls) - len(touched),
                "max_billing_error_s": round(max(calm), 3) if calm else None,
            },
            "real_media": {
                "calls": len(real),
                "max_billing_error_s": round(max(real), 3) if real else None,
                "stuck": [i for i in stuck if calls[i].real_media],
                "lost": [i for i in lost if calls[i].real_media],
                # Calls in which a side never received the other's video: a harness that
                # could not make media would otherwise pass with nothing billed.
                "without_video": [
                    c.index
                    for c in calls
                    if c.real_media and not (c.frames.get("expert") and c.frames.get("client"))
                ],
            },
            "faults": [
                (round(f.at, 3), round(f.ended - f.at, 1), f.kind, f.detail, f.call)
                for f in harness.fault_log
            ],
            "harness_errors": harness.harness_errors,
            "harness_log": harness.lines[-50:],
        },
    }


def webhooks_verdict(harness: Harness) -> dict[str, Any]:
    """What became of the provider's events: each must be stored once (whatever the number of
    deliveries) and processed without error once the deployment answered 2xx for it."""
    from billing.models import WebhookEvent

    relay = harness.layout.webhooks
    with relay.lock:
        events, delivered = dict(relay.events), set(relay.delivered)
    stored = {
        e.event_id: e
        for e in harness.db(
            lambda: list(WebhookEvent.objects.filter(provider="stripe", event_id__in=events))
        )
    }
    return {
        "events": len(events),
        "delivered": len(delivered),
        "deliveries": sum(relay.answers.values()),
        "duplicates": relay.duplicates,
        "retries": relay.retries,
        "answers": dict(relay.answers),
        "undelivered": sorted(set(events) - delivered)[:20],
        # Answered 2xx but not in the inbox: an event the provider will never send again.
        "lost_after_2xx": sorted(delivered - set(stored))[:20],
        "unprocessed": sorted(k for k, e in stored.items() if e.processed_at is None)[:20],
        "failed_attempts": sorted(k for k, e in stored.items() if e.last_error)[:20],
        "types": dict(Counter(events.values())),
    }


def crash_excerpts(logs: dict[str, str], limit: int = 3) -> str:
    out = []
    for name, text in logs.items():
        lines = text.splitlines()
        hits = [i for i, line in enumerate(lines) if CRASH_PATTERNS.search(line)]
        for i in hits[:limit]:
            out.append(f"--- {name}:{i + 1}\n" + "\n".join(lines[max(0, i - 3) : i + 60]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--spread", type=float, default=None, help="seconds over which calls start")
    parser.add_argument("--length", default="60-90", help="call lengths in seconds, min-max")
    parser.add_argument("--faults-every", type=float, default=8.0)
    parser.add_argument("--drain", type=float, default=150.0)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--media", type=int, default=2, help="calls played with real media")
    parser.add_argument("--json", dest="json_out", help="write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the deployment's folder")
    args = parser.parse_args(argv)
    if not loopback_only():
        print(
            "Run this inside a network namespace with only loopback (unshare -n).", file=sys.stderr
        )
        return 2
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {line}", flush=True)

    low, high = (int(x) for x in args.length.split("-"))
    spread = args.spread if args.spread is not None else max(10.0, args.calls * 0.4)
    os.chdir(PROJECT_DIR)
    sys.path.insert(0, str(PROJECT_DIR))
    with Deployment(keep=args.keep) as deployment:
        layout = layout_start(deployment, progress, args.seed)
        try:
            calls, staff_id = calls_book(
                args.calls, length_s=(low, high), seed=args.seed, progress=progress
            )
            # The first participants join a few seconds before their start.
            calls_schedule(calls, first_start=wall() + 8, spread_s=spread, seed=args.seed)
            scripts_write(calls, args.seed)
            real_media_choose(calls, args.media)
            harness = Harness(
                layout, calls, staff_id, faults_every=args.faults_every, seed=args.seed
            )
            last = max(c.ends_at for c in calls)
            progress(f"{len(calls)} calls from {iso(calls[0].starts_at)} to {iso(last)}")
            asyncio.run(harness.run())
            progress("calls done; " + ", ".join(f"{k} {v}" for k, v in harness.injected.items()))
            result = verdict(harness, drain_s=args.drain, progress=progress)
            result["seconds"] = round(time.monotonic() - started, 1)
            if result["summary"]["crashes"]:
                result["details"]["crash_excerpts"] = crash_excerpts(layout.logs())
            text = json.dumps(result, indent=1, default=str)
            if args.json_out:
                Path(args.json_out).write_text(text)
            print(json.dumps(result["summary"]), flush=True)
        finally:
            with contextlib.suppress(Exception):
                layout.cluster("stop", timeout=60)
            layout.proxy.close()
            layout.webhooks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
