"""Relay latency, a join storm and idle-socket capacity of the room signaling socket
(docs/SIGNALING.md).

Everything here goes through the real stack: real Daphne processes serving
``config.asgi:application``, the real ``RoomConsumer``, sessions, Origin check and admission
against PostgreSQL, and the Redis pub/sub channel layer that production uses. The clients are
``websockets`` clients in this process, each with a real ``sessionid`` cookie and an ``Origin``
header, one socket per participant, each waiting for its ``welcome`` before it counts as in.

**Relay latency.** In every room the expert's socket is on one Daphne process and the client's
on another, so each relayed message crosses Redis as it does in production when the two sides
land on different processes. The two sides ping-pong ``signal`` messages carrying an ICE
candidate (the size the browser sends): the expert sends, the client answers as soon as the
message arrives, and so on, one message in flight per room. The latency of a message is from
just before the sender's ``send`` to the moment the addressee's client has read it; both clients
are in this process, so both ends are on the same clock. Each socket sends at most 40 messages a
second (one round every 25 ms at least) to stay under the consumer's limit of 50, and keeps its
5 s heartbeats going as a browser does; so ``msgs/s``, the rate all rooms of a row achieved
together, cannot pass 80 a room (about 75 at 1 room). Levels: 1 room, and 200 rooms all
ping-ponging at once; each level uses rooms of its own and begins with a warm-up that is not
counted. The baseline, measured in the same run with the same clients, messages and pacing, is a
plain ``websockets`` relay in a process of its own that forwards each ``signal`` to the
addressed peer and answers heartbeats (no authentication, no database, no channel layer): the
floor under any relay in Python. ``p50 ratio`` is Daphne's p50 over the baseline's at the same
level. ``server cpu %`` is the CPU the server processes used during the measurement (200 % is
both cores of a 2-core machine), ``client cpu %`` that of this process, which generates the
load: on a small machine the two compete for the same cores.

**Join storm.** Every participant of 250 rooms of their own (500 sockets, each room's expert on
Daphne A and its client on Daphne B) starts its handshake at a random moment within 10 s, as
people clicking Join at the top of the hour do, none waiting for another. Each socket is timed
from just before its handshake to its ``welcome`` (the admission: session, Origin, the
consumer's join transaction); one that has no welcome 10 s after it began has failed, as have
refusals and errors. ``admissions/s`` is the sockets admitted over the time from the first
handshake to the last welcome (the arrivals come at about 50 a second: a server that keeps up
shows that rate, one that falls behind a lower one and a long tail). The baseline is the same
500 arrivals, at the same moments, on the plain relay; ``p99 ratio`` is Daphne's p99 over its.

**Idle sockets.** One fresh Daphne process; participants of rooms of their own (an expert and a
client per room, so the rooms go live as in a call) open sockets in steps (100, 250, 500, 750,
1000, 1500, 2000, 3000, 4000, 5000, 7500, 10,000, up to ``--max-sockets``), 20 handshakes at
a time, each socket then sending a ``heartbeat`` every 5 s (staggered) and nothing else.
``joins/s`` is how many sockets the step admitted per second (handshake to ``welcome``). After
each step the sockets are left alone for one heartbeat period to settle, then for two more that
are measured; the row shows the heartbeat round trips (sent to ``heartbeat_ack`` read) of those,
acknowledgements still missing 2 s later (``lost``), sockets the server closed (``dropped``), the
CPU the server and the clients (this one process) used in the measured window (a client at
100 % of its core would be the limit, not the server), the process's resident memory (VmRSS) and
the memory per socket: the growth since before the first step (read after a warm-up of a few
sockets opened and closed) divided by the sockets open. A step is healthy when every socket was
admitted, none dropped, no acknowledgement was lost and the heartbeat p99 is at most 1 s;
stepping stops at the first unhealthy step, and the largest healthy step is the number of idle
sockets one process holds. Each heartbeat and each admission is a database call of the
consumer's, so this measures its database path as much as Daphne. What the server logs after the
first unhealthy step began is shown as a note, not an error: the bench overloaded it on purpose.

    .venv/bin/python bench/signaling.py [--json] [--quick] [--messages N] [--max-sockets N]
        [--parts relay,storm,idle] [--server daphne|uvicorn]

``--server uvicorn`` runs the same app on Uvicorn (uvloop, httptools, the sans-I/O websockets
protocol) instead of Daphne, for comparing the two; its rows are named ``uvicorn + redis``.

With the defaults (1,000 messages at 1 room, 10,000 at 200 rooms, the storm, idle steps up to
10,000 or the first unhealthy one) a run takes some 10 to 20 minutes on a 2-core machine, much of
it opening and closing Daphne's sockets, which the consumer admits at some 30 to 50 a second;
``--quick`` (400 messages, 4,000 at 200 rooms, the same storm, one measured heartbeat period per
idle step, up to 500 idle sockets) takes about 3. The last line says how many CPUs the
machine has and how busy it was when the run began: the clients, the servers, Redis and
PostgreSQL all share it.

The database comes from ``DATABASE_URL`` and must be PostgreSQL; as in ``bench/booking.py`` the
bench creates a throwaway ``test_<name>_signaling`` database next to it (the role needs
CREATEDB), migrates it, gives it rooms in the ``open`` state with a confirmed seat each, and
drops it at the end. The Daphne processes get that database, ``REDIS_URL`` (``scripts/bench.sh``
gives benches a Redis database of their own) and a channel-layer prefix of this run's own
(``CHANNEL_LAYER_PREFIX``), because pub/sub channels are shared by the whole Redis server;
Celery tasks they queue (a dropped presence's grace check) go to an in-memory broker that no
worker reads. The bench raises its open-file limit to the hard limit, which the servers inherit
(10,000 idle sockets need some 11,000 descriptors on each side). Their output goes to log
files; errors and tracebacks found there are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import logging
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from _database import BenchError, django_setup, postgres_url_check, throwaway_database
from _table import number, table
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Origin

LEVELS = (1, 200)
DEFAULT_MESSAGES = 1000
QUICK_MESSAGES = 400
MIN_MESSAGES = 100  # fewer make p99 the maximum
# At 200 rooms each room does at least this many measured rounds (two messages each).
MIN_ROUNDS_PER_ROOM = 25
QUICK_MIN_ROUNDS_PER_ROOM = 10
# Warm-up: about 40 messages' worth of rounds, at least 3 per room (not counted).
WARMUP_MESSAGES = 40
MIN_WARMUP_ROUNDS = 3
# The consumer's token bucket allows SIGNALING_MAX_MESSAGES_PER_SECOND (50) per socket; a round
# at most every 25 ms keeps each socket at 40 signals a second plus its heartbeats.
ROUND_SPACING_S = 0.025
# A relayed message that has not arrived by then is lost (the channel layer is at-most-once).
SIGNAL_TIMEOUT_S = 5.0

HEARTBEAT_S = 5.0
# Far enough that no 5- or 1-minute warning and no time limit falls inside the run.
ROOM_LENGTH = timedelta(hours=3)
# Finer in the hundreds, where one process gave out when this bench was written; coarser
# beyond, for when it holds more.
IDLE_STEPS = (100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500, 10_000)
DEFAULT_MAX_SOCKETS = 10_000
QUICK_MAX_SOCKETS = 500
MAX_SOCKETS_BOUND = 10_000
# Sockets opened and closed before the memory baseline is read: first-use allocations (the
# database thread, the driver, the consumer's code paths) are not per-socket memory.
IDLE_WARMUP_SOCKETS = 20
# After a step's sockets are in, one heartbeat period passes before the measured window, so
# the window holds idle sockets, not the tail of the admissions.
SETTLE_S = HEARTBEAT_S
HOLD_S = 2 * HEARTBEAT_S
QUICK_HOLD_S = HEARTBEAT_S
ACK_GRACE_S = 2.0
HEALTHY_P99_MS = 1000.0

# Join storm: every participant of these rooms (expert on Daphne A, client on Daphne B) starts
# its handshake at a random moment of the spread, as a class clicking Join at the top of the
# hour; a socket without its welcome by the timeout has failed, as a person would give up.
STORM_ROOMS = 250
STORM_SPREAD_S = 10.0
STORM_TIMEOUT_S = 10.0
# Until every socket of the storm is in or has failed, and a moment after, all stay open.
STORM_HOLD_S = 2.0

# Handshakes in flight at once: a browser fleet does not arrive in one instant either, and each
# admission is a transaction on the consumer's database thread.
OPEN_CONCURRENCY = 20
OPEN_TIMEOUT_S = 15.0
WELCOME_TIMEOUT_S = 15.0
PEERS_TIMEOUT_S = 15.0
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 10.0
MAX_ERROR_MESSAGES = 5
# Sockets beyond the bench's own that the process needs (database, Redis, log files, Python).
SPARE_FILE_DESCRIPTORS = 1024

# What a run can measure; `--parts` picks some (all by default).
PARTS = ("relay", "storm", "idle")
PLAIN = "plain websockets"
DAPHNE = "daphne + redis"
# The ASGI servers the product can be measured on (--server): Daphne is what it runs; Uvicorn
# (uvloop, httptools, the sans-I/O websockets protocol) is the alternative the issue asked to
# compare. The row's name says which one a run measured.
SERVERS = {"daphne": DAPHNE, "uvicorn": "uvicorn + redis"}
SEQ_DIGITS = 10
HEARTBEAT_TEXT = json.dumps({"v": 1, "type": "heartbeat"})


class Refused(Exception):
    """A socket did not get its `welcome`; the message says what happened instead."""


@dataclass(frozen=True)
class Participant:
    user_id: int
    room_id: int
    session_key: str


@dataclass(frozen=True)
class Pair:
    expert: Participant
    client: Participant


@dataclass(frozen=True)
class Workload:
    relay: dict[int, list[Pair]]  # rooms of each level
    storm: list[Pair]
    idle: list[Pair]
    warmup: list[Pair]
    cookie_name: str


@dataclass(frozen=True)
class Plan:
    messages: int  # measured at 1 room
    min_rounds_per_room: int  # at 200 rooms
    hold_s: float  # per idle step
    max_sockets: int  # the last idle step
    storm_rooms: int
    parts: frozenset[str]  # which of PARTS this run measures
    server: str = "daphne"  # a key of SERVERS

    @property
    def contender(self) -> str:
        return SERVERS[self.server]


@dataclass(frozen=True)
class Endpoint:
    """Where sockets connect: a server's port, and whether it is the baseline relay (which
    learns who is speaking from the URL instead of the session)."""

    port: int
    plain: bool

    def url(self, participant: Participant) -> str:
        url = f"ws://127.0.0.1:{self.port}/ws/rooms/{participant.room_id}/"
        return f"{url}?participant={participant.user_id}" if self.plain else url


@dataclass(frozen=True)
class RelayResult:
    server: str
    rooms: int
    messages: int
    lost: int
    errors: int
    seconds: float
    msgs_per_s: float
    server_cpu_percent: float
    client_cpu_percent: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p50_ratio_to_baseline: float | None = None


@dataclass(frozen=True)
class IdleStep:
    sockets: int
    opened: int
    failed: int
    dropped: int
    heartbeats: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    # Sockets this step admitted per second (handshake to `welcome`, a few at a time).
    joins_per_s: float
    # CPU in the measured window, in % of one core: the server's, and this process's (the
    # clients), which on a small machine competes with it for the same cores.
    server_cpu_percent: float
    client_cpu_percent: float
    rss_kib: int
    kib_per_socket: float | None
    healthy: bool
    problem: str | None


@dataclass
class Tally:
    """What one relay measurement saw, across all its rooms."""

    seq: Iterator[int]
    latencies_ms: list[float] = field(default_factory=list)
    lost: int = 0
    send_failures: int = 0


STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if len(values) < 2:
        return None, None, None
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[89], 3), round(cuts[98], 3)


def grouped(messages: Sequence[str], prefix: str) -> list[str]:
    """Each kind of message once (with how often), at most a few."""
    times = Counter(messages)
    shown = [
        f"{prefix}{text}" + (f" ({count} times)" if count > 1 else "")
        for text, count in list(times.items())[:MAX_ERROR_MESSAGES]
    ]
    if len(times) > MAX_ERROR_MESSAGES:
        shown.append(f"{prefix}… and {len(times) - MAX_ERROR_MESSAGES} other kinds")
    return shown


# --- Database -------------------------------------------------------------------------------


def database_url_check() -> str:
    url = postgres_url_check()
    if not os.environ.get("REDIS_URL"):
        raise BenchError(
            "REDIS_URL is not set; the relay must cross the Redis channel layer "
            "(source scripts/test-env.sh, or run scripts/bench.sh)."
        )
    return url


def workload_create(relay_levels: Sequence[int], storm_rooms: int, idle_rooms: int) -> Workload:
    """Private rooms in the `open` state, each with its expert and one client holding a
    confirmed seat, and a logged-in session for every one of them.

    Rows are bulk-created rather than booked through the services (which would take longer
    than the bench); what matters is that the consumer admits them through its own
    `room_admission_check`, which every socket here passes.
    """
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.db import transaction
    from django.utils import timezone

    from accounts.models import User
    from rooms.models import Pricing, Room, RoomKind, RoomState, Seat, SeatState

    room_count = sum(relay_levels) + storm_rooms + idle_rooms + IDLE_WARMUP_SOCKETS // 2
    progress(f"creating {room_count} open rooms, {2 * room_count} participants and sessions")
    now = timezone.now()
    starts_at = now - timedelta(minutes=1)
    ends_at = now + ROOM_LENGTH
    with transaction.atomic():
        experts = [
            User(email=f"expert{i}@bench.test", display_name=f"Expert {i}", time_zone="UTC")
            for i in range(room_count)
        ]
        clients = [
            User(email=f"client{i}@bench.test", display_name=f"Client {i}", time_zone="UTC")
            for i in range(room_count)
        ]
        for user in experts + clients:
            # Hashing a real password per participant would take longer than the bench.
            user.set_unusable_password()
        User.objects.bulk_create(experts + clients)
        rooms = Room.objects.bulk_create(
            Room(
                expert=expert,
                kind=RoomKind.PRIVATE,
                title=f"Bench call {i}",
                starts_at=starts_at,
                ends_at=ends_at,
                blocked_from=starts_at,
                blocked_until=ends_at,
                capacity=1,
                state=RoomState.OPEN,
                opened_at=now,
                pricing=Pricing.FIXED,
                price_minor=12000,
                currency="EUR",
                late_cancel_fee_percent=50,
                no_show_fee_percent=50,
            )
            for i, expert in enumerate(experts)
        )
        Seat.objects.bulk_create(
            Seat(
                room=room,
                client=client,
                state=SeatState.CONFIRMED,
                reserved_until=now,
                confirmed_at=now,
            )
            for room, client in zip(rooms, clients, strict=True)
        )
        store_class = import_module(settings.SESSION_ENGINE).SessionStore
        backend = settings.AUTHENTICATION_BACKENDS[0]
        session_keys: dict[int, str] = {}
        for user in experts + clients:
            # What django.contrib.auth.login() stores, so the socket's AuthMiddleware loads it.
            store = store_class()
            store[SESSION_KEY] = str(user.pk)
            store[BACKEND_SESSION_KEY] = backend
            store[HASH_SESSION_KEY] = user.get_session_auth_hash()
            store.create()
            session_keys[user.pk] = str(store.session_key)

    def participant(user: User, room: Room) -> Participant:
        return Participant(user.pk, room.pk, session_keys[user.pk])

    pairs = [
        Pair(participant(expert, room), participant(client, room))
        for expert, client, room in zip(experts, clients, rooms, strict=True)
    ]
    relay: dict[int, list[Pair]] = {}
    for level in relay_levels:
        relay[level], pairs = pairs[:level], pairs[level:]
    storm, pairs = pairs[:storm_rooms], pairs[storm_rooms:]
    warmup, idle = pairs[: IDLE_WARMUP_SOCKETS // 2], pairs[IDLE_WARMUP_SOCKETS // 2 :]
    return Workload(relay, storm, idle, warmup, settings.SESSION_COOKIE_NAME)


# --- Processes ------------------------------------------------------------------------------


def file_descriptors_raise(sockets: int) -> None:
    """This process holds one descriptor per client socket and each server one per accepted
    socket; children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = sockets + SPARE_FILE_DESCRIPTORS
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"the open-file limit is {hard}, the bench needs about {needed} for {sockets} "
            "sockets; raise it (ulimit -Hn) or lower --max-sockets"
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def server_start(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> Server:
    """Start `command` ("{port}" in it becomes a free port) and wait until it listens."""
    port = free_port()
    log = log_dir / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and Daphne, no shell)
            [part.format(port=port) for part in command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
        )
    server = Server(name, process, port, log)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(
                f"{name} exited with {process.returncode} at start:\n{server.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    server_stop(server)
    raise BenchError(f"{name} did not listen within {SERVER_START_TIMEOUT_S:.0f} s")


def server_stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def daphne_start(name: str, env: dict[str, str], log_dir: Path, server: str = "daphne") -> Server:
    """One process of the product's ASGI app on `server` (a key of SERVERS)."""
    if server == "uvicorn":
        command = [
            str(Path(sys.executable).with_name("uvicorn")),
            "--host", "127.0.0.1", "--port", "{port}",
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
            "--log-level", "warning", "--no-access-log",
            "config.asgi:application",
        ]  # fmt: skip
    else:
        daphne = str(Path(sys.executable).with_name("daphne"))
        command = [daphne, "-b", "127.0.0.1", "-p", "{port}", "config.asgi:application"]
    return server_start(name, command, env, log_dir)


def daphne_env(database_url: str, bench_name: str, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = urlsplit(database_url)._replace(path=f"/{bench_name}").geturl()
    env["CHANNEL_LAYER_PREFIX"] = prefix
    # With a host, or kombu warns about its absence on every connection.
    env["CELERY_BROKER_URL"] = "memory://localhost/"
    # Errors and warnings only: every line left in the log is worth reading.
    env["LOG_LEVEL"] = "WARNING"
    # Every room is created at the start and joined only when its part comes, the last idle
    # steps ten minutes later in a full run: past the no-show rule's 10 minutes, admission would
    # close them as no-shows (4410). They last as long as the rooms.
    env["NO_SHOW_MINUTES"] = str(int(ROOM_LENGTH.total_seconds() // 60))
    return env


def plain_relay_start(log_dir: Path) -> Server:
    return server_start(
        PLAIN,
        [sys.executable, str(Path(__file__).resolve()), "--serve-plain-relay", "{port}"],
        dict(os.environ),
        log_dir,
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces) start at the state, field 3;
    # utime and stime are fields 14 and 15, in clock ticks.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_problems(server: Server, start: int = 0, end: int | None = None) -> list[str]:
    """Warnings, errors and tracebacks a server logged (its log level is WARNING), from byte
    `start` to `end` of its log."""
    with server.log.open("rb") as log:
        log.seek(start)
        text = log.read(None if end is None else max(0, end - start))
    lines = text.decode(errors="replace").splitlines()
    found: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            # The exception is the first unindented line after the traceback.
            last = next(
                (later for later in lines[i + 1 :] if later and not later.startswith(" ")), ""
            )
            found.append(f"traceback: {last.strip()}")
        elif any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL")):
            found.append(log_kind(line))
    return grouped(found, f"{server.name} log: ")


def log_kind(line: str) -> str:
    """A log line without what differs between repeats of one kind: the timestamp, and the
    reprs of tasks and connections (ids, ports)."""
    line = line.split(" ", 2)[-1].strip()
    previous = ""
    while previous != line:
        previous, line = line, re.sub(r"<[^<>]*>", "…", line)
    return line


# --- The baseline relay (runs in its own process) -------------------------------------------


async def plain_relay_serve(port: int) -> None:
    """A relay with nothing but WebSocket and JSON: signals to the addressed peer in the same
    room, heartbeats answered, a `welcome` and `peer_joined` so clients run the same code."""
    rooms: dict[str, dict[int, ServerConnection]] = {}

    async def tell(connection: ServerConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.send(json.dumps({"v": 1, **message}))

    async def handle(connection: ServerConnection) -> None:
        target = urlsplit(connection.request.path if connection.request else "")
        room_key = target.path
        me = int(parse_qs(target.query).get("participant", ["0"])[0])
        room = rooms.setdefault(room_key, {})
        peers = [{"id": peer, "status": "present"} for peer in room if peer != me]
        room[me] = connection
        await tell(connection, {"type": "welcome", "you": {"id": me}, "peers": peers})
        for peer, other in list(room.items()):
            if peer != me:
                await tell(other, {"type": "peer_joined", "peer": {"id": me}})
        try:
            async for text in connection:
                message = json.loads(text)
                if not isinstance(message, dict) or message.get("v") != 1:
                    await tell(connection, {"type": "error", "code": "bad_version"})
                elif message.get("type") == "signal":
                    peer_connection = room.get(message.get("to", 0))
                    if peer_connection is None:
                        await tell(connection, {"type": "error", "code": "peer_not_here"})
                    else:
                        relayed = {"type": "signal", "from": me, "data": message.get("data")}
                        await tell(peer_connection, relayed)
                elif message.get("type") == "heartbeat":
                    now = datetime.now(UTC).isoformat()
                    await tell(connection, {"type": "heartbeat_ack", "server_time": now})
        except (ConnectionClosed, ValueError):
            pass
        finally:
            if room.get(me) is connection:
                del room[me]

    # A handshake that fails here is the bench's readiness probe (a bare TCP connect); the
    # clients see and report any other.
    logging.getLogger("websockets.server").setLevel(logging.CRITICAL)
    async with serve(
        handle, "127.0.0.1", port, compression=None, ping_interval=None, max_size=65_536
    ):
        await asyncio.Future()  # until the bench terminates the process


# --- Clients --------------------------------------------------------------------------------


def signal_text(to: int, seq: int) -> str:
    # The sequence number is the candidate's foundation, zero-padded so every message has the
    # same size; the rest is what a browser sends for a host candidate.
    candidate = (
        f"candidate:{seq:0{SEQ_DIGITS}d} 1 udp 2122260223 127.0.0.1 54321 typ host "
        "generation 0 ufrag Xh3v network-id 1"
    )
    data = {
        "candidate": {
            "candidate": candidate,
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "Xh3v",
        }
    }
    return json.dumps({"v": 1, "type": "signal", "to": to, "data": data})


def signal_seq(message: dict[str, Any]) -> int:
    candidate = message.get("data", {}).get("candidate") or {}
    foundation = str(candidate.get("candidate", "")).removeprefix("candidate:").split(" ", 1)[0]
    return int(foundation) if foundation.isdigit() else -1


class Socket:
    """One participant's signaling socket, as its browser tab would hold it."""

    def __init__(self, participant: Participant, endpoint: Endpoint, cookie_name: str) -> None:
        self.participant = participant
        self.endpoint = endpoint
        self.cookie_name = cookie_name
        self.connection: ClientConnection | None = None
        self.signals: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        self.peer_here = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.errors: Counter[str] = Counter()
        self.heartbeats_sent: list[float] = []
        self.heartbeats_pending: deque[float] = deque()
        # (sent at, round trip in ms)
        self.heartbeat_rtts: list[tuple[float, float]] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, heartbeat_offset: float) -> None:
        """Connect and wait for `welcome`; raise Refused with what happened instead."""
        try:
            self.connection = await connect(
                self.endpoint.url(self.participant),
                origin=Origin(f"http://127.0.0.1:{self.endpoint.port}"),
                additional_headers={"Cookie": f"{self.cookie_name}={self.participant.session_key}"},
                # Daphne does not offer permessage-deflate; the baseline must not get it either.
                compression=None,
                # The protocol's heartbeats keep the socket alive, as in the browser.
                ping_interval=None,
                proxy=None,
                open_timeout=OPEN_TIMEOUT_S,
                max_size=2**20,
            )
        except (OSError, TimeoutError, WebSocketException) as error:
            raise Refused(f"handshake failed: {type(error).__name__}: {error}") from error
        try:
            async with asyncio.timeout(WELCOME_TIMEOUT_S):
                first = json.loads(await self.connection.recv())
        except TimeoutError:
            await self.close()
            raise Refused(f"no welcome within {WELCOME_TIMEOUT_S:.0f} s") from None
        except ConnectionClosed as closed:
            frame = closed.rcvd.code if closed.rcvd else "no close frame"
            raise Refused(f"closed before welcome ({frame})") from None
        if first.get("type") != "welcome":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self.connection.wait_closed()
            code = self.connection.close_code
            raise Refused(f"{first.get('type')} {first.get('code')} (close {code})")
        if first.get("peers"):
            self.peer_here.set()
        self.tasks = [
            asyncio.create_task(self.read()),
            asyncio.create_task(self.beat(heartbeat_offset)),
        ]

    async def read(self) -> None:
        assert self.connection is not None
        try:
            async for text in self.connection:
                arrived = time.perf_counter()
                message = json.loads(text)
                kind = message.get("type")
                if kind == "signal":
                    self.signals.put_nowait((signal_seq(message), arrived))
                elif kind == "heartbeat_ack":
                    if self.heartbeats_pending:
                        sent = self.heartbeats_pending.popleft()
                        self.heartbeat_rtts.append((sent, (arrived - sent) * 1000))
                elif kind in ("peer_joined", "peer_resumed"):
                    self.peer_here.set()
                elif kind == "error":
                    self.errors[str(message.get("code"))] += 1
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code
            self.closed.set()

    async def beat(self, offset: float) -> None:
        assert self.connection is not None
        await asyncio.sleep(offset)
        with contextlib.suppress(ConnectionClosed):
            while True:
                sent = time.perf_counter()
                self.heartbeats_sent.append(sent)
                self.heartbeats_pending.append(sent)
                await self.connection.send(HEARTBEAT_TEXT)
                await asyncio.sleep(HEARTBEAT_S)

    async def send(self, text: str) -> None:
        assert self.connection is not None
        await self.connection.send(text)

    async def wait_signal(self, seq: int, timeout: float) -> float | None:
        """When message `seq` arrived, skipping late arrivals of earlier ones; None if lost."""
        deadline = time.perf_counter() + timeout
        while (remaining := deadline - time.perf_counter()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    arrived_seq, arrived_at = await self.signals.get()
            except TimeoutError:
                return None
            if arrived_seq == seq:
                return arrived_at
        return None

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.connection is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self.connection.close()


async def sockets_open(
    participants: Sequence[Participant], endpoints: Sequence[Endpoint], cookie_name: str
) -> tuple[list[Socket], list[str]]:
    """Open a socket per participant (on the endpoint at the same index), a few at a time;
    returns those that got their welcome and why the others did not."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    failures: list[str] = []

    async def one(participant: Participant, endpoint: Endpoint) -> Socket | None:
        async with gate:
            opened = Socket(participant, endpoint, cookie_name)
            try:
                await opened.open(heartbeat_offset=random.uniform(0, HEARTBEAT_S))
            except Refused as refused:
                failures.append(str(refused))
                return None
            return opened

    results = await asyncio.gather(
        *(one(p, e) for p, e in zip(participants, endpoints, strict=True))
    )
    return [s for s in results if s is not None], failures


async def sockets_close(sockets: Sequence[Socket]) -> None:
    await asyncio.gather(*(s.close() for s in sockets))


@contextlib.asynccontextmanager
async def cpu_watch(servers: Sequence[Server]) -> AsyncIterator[dict[str, float]]:
    """CPU used by the servers and by this process while the block runs, in % of one core."""
    usage: dict[str, float] = {}
    wall = time.perf_counter()
    own = time.process_time()
    theirs = sum(cpu_seconds(s.pid) for s in servers)
    yield usage
    elapsed = time.perf_counter() - wall
    usage["server"] = round(100 * (sum(cpu_seconds(s.pid) for s in servers) - theirs) / elapsed)
    usage["client"] = round(100 * (time.process_time() - own) / elapsed)


# --- Relay latency --------------------------------------------------------------------------


async def ping_pong(expert: Socket, client: Socket, rounds: int, tally: Tally) -> None:
    """One message in flight per room: each side answers the other's as soon as it arrives."""
    # Rooms start out of step, as calls do, instead of all in the same millisecond.
    await asyncio.sleep(random.uniform(0, ROUND_SPACING_S))
    for _ in range(rounds):
        for sender, receiver in ((expert, client), (client, expert)):
            seq = next(tally.seq)
            text = signal_text(receiver.participant.user_id, seq)
            sent_at = time.perf_counter()
            try:
                await sender.send(text)
            except ConnectionClosed:
                tally.send_failures += 1
                return
            arrived_at = await receiver.wait_signal(seq, SIGNAL_TIMEOUT_S)
            if arrived_at is None:
                tally.lost += 1
            else:
                tally.latencies_ms.append((arrived_at - sent_at) * 1000)
        await asyncio.sleep(ROUND_SPACING_S)


async def relay_measure(
    server_name: str,
    servers: Sequence[Server],
    expert_endpoint: Endpoint,
    client_endpoint: Endpoint,
    pairs: list[Pair],
    rounds: int,
    cookie_name: str,
) -> tuple[RelayResult, list[str]]:
    rooms = len(pairs)
    problems: list[str] = []
    experts: list[Socket] = []
    clients: list[Socket] = []
    try:
        # Experts first, so each client's welcome already lists its expert and each expert
        # hears `peer_joined`: both consumers know the peer before the first signal.
        experts, failed = await sockets_open(
            [p.expert for p in pairs], [expert_endpoint] * rooms, cookie_name
        )
        clients, failed_clients = await sockets_open(
            [p.client for p in pairs], [client_endpoint] * rooms, cookie_name
        )
        failed += failed_clients
        progress(f"{server_name} x{rooms}: {len(experts) + len(clients)} sockets in; warming up")
        by_room = {s.participant.room_id: s for s in experts}
        matched = [
            (by_room[c.participant.room_id], c) for c in clients if c.participant.room_id in by_room
        ]
        try:
            async with asyncio.timeout(PEERS_TIMEOUT_S):
                await asyncio.gather(*(e.peer_here.wait() for e, _ in matched))
        except TimeoutError:
            problems.append(f"not every expert heard peer_joined within {PEERS_TIMEOUT_S:.0f} s")
        if failed:
            problems += grouped(failed, f"{server_name} x{rooms}: socket refused: ")
        if not matched:
            raise BenchError(f"{server_name} x{rooms}: no room had both sides in")

        warmup = Tally(itertools.count(1))
        warmup_rounds = max(MIN_WARMUP_ROUNDS, WARMUP_MESSAGES // (2 * rooms))
        await asyncio.gather(*(ping_pong(e, c, warmup_rounds, warmup) for e, c in matched))
        progress(f"{server_name} x{rooms}: measuring {rounds} rounds per room")
        tally = Tally(itertools.count(next(warmup.seq)))
        gc.collect()
        started = time.perf_counter()
        async with cpu_watch(servers) as cpu:
            await asyncio.gather(*(ping_pong(e, c, rounds, tally) for e, c in matched))
        elapsed = time.perf_counter() - started
        protocol_errors = Counter[str]()
        for s in experts + clients:
            protocol_errors += s.errors
        closes = [f"close code {s.close_code}" for s in experts + clients if s.closed.is_set()]
        problems += grouped(closes, f"{server_name} x{rooms}: the server closed a socket: ")
    finally:
        progress(f"{server_name} x{rooms}: closing {len(experts) + len(clients)} sockets")
        await sockets_close(experts + clients)

    if protocol_errors:
        problems.append(
            f"{server_name} x{rooms}: error messages from the server: "
            + ", ".join(f"{code} x{n}" for code, n in protocol_errors.most_common())
        )
    if tally.lost:
        problems.append(
            f"{server_name} x{rooms}: {tally.lost} messages lost (not in {SIGNAL_TIMEOUT_S:.0f} s)"
        )
    messages = len(tally.latencies_ms)
    p50, p90, p99 = percentiles(tally.latencies_ms)
    result = RelayResult(
        server=server_name,
        rooms=rooms,
        messages=messages,
        lost=tally.lost,
        errors=len(failed) + sum(protocol_errors.values()) + tally.send_failures,
        seconds=round(elapsed, 3),
        msgs_per_s=round(messages / elapsed, 1) if elapsed > 0 else 0.0,
        server_cpu_percent=cpu["server"],
        client_cpu_percent=cpu["client"],
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
    )
    return result, problems


# --- Join storm -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StormResult:
    server: str
    participants: int
    admitted: int
    failed: int
    # From the first handshake's start to the last welcome.
    seconds: float
    admissions_per_s: float
    server_cpu_percent: float
    client_cpu_percent: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    p99_ratio_to_baseline: float | None = None


async def storm_measure(
    server_name: str,
    servers: Sequence[Server],
    expert_endpoint: Endpoint,
    client_endpoint: Endpoint,
    pairs: list[Pair],
    offsets: Sequence[float],
    cookie_name: str,
) -> tuple[StormResult, list[str]]:
    """Every participant of `pairs` starts its handshake `offset` seconds into the storm, all at
    once (no gate); each is timed from just before its handshake to its `welcome`."""
    arrivals = [(p.expert, expert_endpoint) for p in pairs] + [
        (p.client, client_endpoint) for p in pairs
    ]
    failures: list[str] = []
    welcomed: list[tuple[float, float]] = []  # (started, welcome read)
    sockets: list[Socket] = []
    began = time.perf_counter()

    async def one(participant: Participant, endpoint: Endpoint, offset: float) -> None:
        await asyncio.sleep(max(0.0, began + offset - time.perf_counter()))
        joining = Socket(participant, endpoint, cookie_name)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(STORM_TIMEOUT_S):
                await joining.open(heartbeat_offset=random.uniform(0, HEARTBEAT_S))
        except Refused as refused:
            failures.append(str(refused))
            return
        except TimeoutError:
            failures.append(f"no welcome within {STORM_TIMEOUT_S:.0f} s")
            await joining.close()
            return
        welcomed.append((started, time.perf_counter()))
        sockets.append(joining)

    try:
        async with cpu_watch(servers) as cpu:
            await asyncio.gather(
                *(one(p, e, at) for (p, e), at in zip(arrivals, offsets, strict=True))
            )
        await asyncio.sleep(STORM_HOLD_S)
        errors = Counter[str]()
        for s in sockets:
            errors += s.errors
        closes = [f"close code {s.close_code}" for s in sockets if s.closed.is_set()]
    finally:
        progress(f"{server_name} storm: closing {len(sockets)} sockets")
        await sockets_close(sockets)

    problems = grouped(failures, f"{server_name} storm: socket not admitted: ")
    problems += grouped(closes, f"{server_name} storm: the server closed a socket: ")
    if errors:
        problems.append(
            f"{server_name} storm: error messages from the server: "
            + ", ".join(f"{code} x{n}" for code, n in errors.most_common())
        )
    latencies = [(done - started) * 1000 for started, done in welcomed]
    p50, p90, p99 = percentiles(latencies)
    first = min((started for started, _ in welcomed), default=began)
    last = max((done for _, done in welcomed), default=began)
    seconds = last - first
    result = StormResult(
        server=server_name,
        participants=len(arrivals),
        admitted=len(welcomed),
        failed=len(failures),
        seconds=round(seconds, 3),
        admissions_per_s=round(len(welcomed) / seconds, 1) if seconds > 0 else 0.0,
        server_cpu_percent=cpu["server"],
        client_cpu_percent=cpu["client"],
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=round(max(latencies), 3) if latencies else None,
    )
    return result, problems


# --- Idle sockets ---------------------------------------------------------------------------


def idle_steps(max_sockets: int) -> list[int]:
    steps = [step for step in IDLE_STEPS if step < max_sockets]
    return [*steps, max_sockets]


@dataclass(frozen=True)
class IdleReport:
    rss_before_kib: int
    steps: list[IdleStep]
    errors: list[str]
    # Where the server's log stood when the first unhealthy step began: what it logged after
    # that is the overload the bench caused on purpose, not an error of the run.
    overload_log_offset: int | None


async def idle_measure(daphne: Server, workload: Workload, plan: Plan) -> IdleReport:
    endpoint = Endpoint(daphne.port, plain=False)
    warm = [p for pair in workload.warmup for p in (pair.expert, pair.client)]
    warm_sockets, warm_failed = await sockets_open(
        warm, [endpoint] * len(warm), workload.cookie_name
    )
    await asyncio.sleep(1)
    await sockets_close(warm_sockets)
    if warm_failed:
        return IdleReport(0, [], grouped(warm_failed, "idle warm-up: socket refused: "), None)
    # Let the disconnects' transactions finish before the baseline is read.
    await asyncio.sleep(2)
    gc.collect()
    rss_before = rss_kib(daphne.pid)

    participants = [p for pair in workload.idle for p in (pair.expert, pair.client)]
    sockets: list[Socket] = []
    steps: list[IdleStep] = []
    overload_log_offset: int | None = None
    try:
        for target in idle_steps(plan.max_sockets):
            log_offset = daphne.log.stat().st_size
            batch = participants[len(sockets) : target]
            progress(f"idle: opening {len(batch)} more sockets (to {target})")
            opening = time.perf_counter()
            opened, failed = await sockets_open(
                batch, [endpoint] * len(batch), workload.cookie_name
            )
            joins_per_s = len(opened) / (time.perf_counter() - opening)
            sockets += opened
            progress(f"idle: holding {len(sockets)} sockets for {SETTLE_S + plan.hold_s:.0f} s")
            await asyncio.sleep(SETTLE_S)
            window_start = time.perf_counter()
            async with cpu_watch([daphne]) as cpu:
                await asyncio.sleep(plan.hold_s)
            window_end = time.perf_counter()
            await asyncio.sleep(ACK_GRACE_S)
            rtts = [
                rtt
                for s in sockets
                for sent, rtt in s.heartbeat_rtts
                if window_start <= sent < window_end
            ]
            sent = sum(window_start <= at < window_end for s in sockets for at in s.heartbeats_sent)
            lost = sent - len(rtts)
            dropped = sum(s.closed.is_set() for s in sockets)
            p50, _, p99 = percentiles(rtts)
            rss = rss_kib(daphne.pid)
            problem = idle_problem(len(batch), failed, dropped, lost, p99, sockets)
            steps.append(
                IdleStep(
                    sockets=target,
                    opened=len(sockets),
                    failed=len(failed),
                    dropped=dropped,
                    heartbeats=len(rtts),
                    lost=lost,
                    p50_ms=p50,
                    p99_ms=p99,
                    joins_per_s=round(joins_per_s, 1),
                    server_cpu_percent=cpu["server"],
                    client_cpu_percent=cpu["client"],
                    rss_kib=rss,
                    kib_per_socket=round((rss - rss_before) / len(sockets), 1) if sockets else None,
                    healthy=problem is None,
                    problem=problem,
                )
            )
            if problem is not None:
                overload_log_offset = log_offset
                break
    finally:
        progress(f"idle: closing {len(sockets)} sockets")
        await sockets_close(sockets)
    return IdleReport(rss_before, steps, [], overload_log_offset)


def idle_problem(
    batch: int, failed: list[str], dropped: int, lost: int, p99: float | None, sockets: list[Socket]
) -> str | None:
    if failed:
        first = Counter(failed).most_common(1)[0][0]
        return f"{len(failed)} of {batch} sockets not admitted (first kind: {first})"
    if dropped:
        codes = Counter(s.close_code for s in sockets if s.closed.is_set())
        return f"{dropped} sockets closed by the server (codes: {dict(codes)})"
    if lost:
        return f"{lost} heartbeats unanswered after {ACK_GRACE_S:.0f} s"
    if p99 is None:
        return "no heartbeat answered"
    if p99 > HEALTHY_P99_MS:
        return f"heartbeat p99 {p99:.0f} ms > {HEALTHY_P99_MS:.0f} ms"
    errors = Counter[str]()
    for s in sockets:
        errors += s.errors
    if errors:
        return "error messages: " + ", ".join(f"{c} x{n}" for c, n in errors.most_common())
    return None


# --- Running --------------------------------------------------------------------------------


@dataclass
class Report:
    relay: list[RelayResult]
    storm: list[StormResult]
    idle: IdleReport
    errors: list[str]
    # What the idle server logged once overloaded: worth reading, not a failure of the run.
    notes: list[str]


def rounds_at(level: int, plan: Plan) -> int:
    return max(plan.min_rounds_per_room if level > 1 else 1, -(-plan.messages // (2 * level)))


async def measure_all(workload: Workload, env: dict[str, str], plan: Plan, log_dir: Path) -> Report:
    report = Report([], [], IdleReport(0, [], [], None), [], [])
    servers: list[Server] = []
    daphne_c: Server | None = None
    try:
        if plan.parts & {"relay", "storm"}:
            await relay_and_storm_measure(workload, env, plan, log_dir, report, servers)
        if "idle" in plan.parts:
            progress("starting a fresh Daphne process for the idle sockets")
            daphne_c = daphne_start("daphne C", env, log_dir, plan.server)
            servers.append(daphne_c)
            report.idle = await idle_measure(daphne_c, workload, plan)
            report.errors.extend(report.idle.errors)
    finally:
        for server in servers:
            server_stop(server)
    overload_at = report.idle.overload_log_offset
    for server in servers:
        if server is daphne_c and overload_at is not None:
            report.errors.extend(log_problems(server, end=overload_at))
            report.notes.extend(log_problems(server, start=overload_at))
        else:
            report.errors.extend(log_problems(server))
    return report


async def relay_and_storm_measure(
    workload: Workload,
    env: dict[str, str],
    plan: Plan,
    log_dir: Path,
    report: Report,
    servers: list[Server],
) -> None:
    """The relay levels and the join storm, on the plain relay and on two Daphne processes
    (added to `servers` as they start, so the caller stops them and reads their logs)."""
    progress("starting the plain websockets relay and two Daphne processes")
    plain = plain_relay_start(log_dir)
    servers.append(plain)
    daphne_a = daphne_start("daphne A", env, log_dir, plan.server)
    servers.append(daphne_a)
    daphne_b = daphne_start("daphne B", env, log_dir, plan.server)
    servers.append(daphne_b)
    # The baseline first, then the expert on Daphne A and the client on Daphne B.
    contenders = (
        (PLAIN, [plain], Endpoint(plain.port, True), Endpoint(plain.port, True)),
        (
            plan.contender,
            [daphne_a, daphne_b],
            Endpoint(daphne_a.port, False),
            Endpoint(daphne_b.port, False),
        ),
    )
    for level in LEVELS if "relay" in plan.parts else ():
        rounds = rounds_at(level, plan)
        baseline_p50: float | None = None
        for name, measured, expert_at, client_at in contenders:
            progress(f"measuring {name}: {level} rooms x {rounds} rounds")
            result, problems = await relay_measure(
                name,
                measured,
                expert_at,
                client_at,
                workload.relay[level],
                rounds,
                workload.cookie_name,
            )
            report.errors.extend(problems)
            if name == PLAIN:
                baseline_p50 = result.p50_ms
            elif baseline_p50 and result.p50_ms is not None:
                result = replace(
                    result, p50_ratio_to_baseline=round(result.p50_ms / baseline_p50, 2)
                )
            report.relay.append(result)

    if "storm" in plan.parts:
        # The same arrival times for the baseline and for Daphne.
        offsets = [random.uniform(0, STORM_SPREAD_S) for _ in range(2 * len(workload.storm))]
        baseline_p99: float | None = None
        for name, measured, expert_at, client_at in contenders:
            progress(
                f"join storm on {name}: {len(offsets)} participants within {STORM_SPREAD_S:.0f} s"
            )
            stormed, problems = await storm_measure(
                name, measured, expert_at, client_at, workload.storm, offsets, workload.cookie_name
            )
            report.errors.extend(problems)
            if name == PLAIN:
                baseline_p99 = stormed.p99_ms
            elif baseline_p99 and stormed.p99_ms is not None:
                stormed = replace(
                    stormed, p99_ratio_to_baseline=round(stormed.p99_ms / baseline_p99, 1)
                )
            report.storm.append(stormed)
    for server in (daphne_a, daphne_b, plain):
        server_stop(server)


# --- Output ---------------------------------------------------------------------------------


def cpu_and_latency_cells(result: RelayResult | StormResult, spec: str) -> tuple[str, ...]:
    return (
        f"{result.server_cpu_percent:.0f}",
        f"{result.client_cpu_percent:.0f}",
        number(result.p50_ms, spec),
        number(result.p90_ms, spec),
        number(result.p99_ms, spec),
    )


def format_relay(results: list[RelayResult]) -> str:
    header = (
        "server",
        "rooms",
        "msgs",
        "lost",
        "errors",
        "msgs/s",
        "server cpu %",
        "client cpu %",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p50 ratio",
    )
    rows = [
        (
            r.server,
            str(r.rooms),
            str(r.messages),
            str(r.lost),
            str(r.errors),
            f"{r.msgs_per_s:,.0f}",
            *cpu_and_latency_cells(r, ".2f"),
            "-" if r.p50_ratio_to_baseline is None else f"{r.p50_ratio_to_baseline:.2f}x",
        )
        for r in results
    ]
    return table(header, rows, left=1)


def format_idle(steps: list[IdleStep]) -> str:
    header = (
        "sockets",
        "open",
        "failed",
        "dropped",
        "heartbeats",
        "lost",
        "hb p50 ms",
        "hb p99 ms",
        "joins/s",
        "server cpu %",
        "client cpu %",
        "RSS MiB",
        "KiB/socket",
        "healthy",
    )
    rows = [
        (
            str(s.sockets),
            str(s.opened),
            str(s.failed),
            str(s.dropped),
            str(s.heartbeats),
            str(s.lost),
            number(s.p50_ms, ".1f"),
            number(s.p99_ms, ".1f"),
            f"{s.joins_per_s:.1f}",
            f"{s.server_cpu_percent:.0f}",
            f"{s.client_cpu_percent:.0f}",
            f"{s.rss_kib / 1024:.1f}",
            number(s.kib_per_socket, ".1f"),
            "yes" if s.healthy else "no",
        )
        for s in steps
    ]
    return table(header, rows, left=0)


def format_storm(results: list[StormResult]) -> str:
    header = (
        "server",
        "joining",
        "admitted",
        "failed",
        "seconds",
        "admissions/s",
        "server cpu %",
        "client cpu %",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "p99 ratio",
    )
    rows = [
        (
            r.server,
            str(r.participants),
            str(r.admitted),
            str(r.failed),
            f"{r.seconds:.1f}",
            f"{r.admissions_per_s:.1f}",
            *cpu_and_latency_cells(r, ".1f"),
            number(r.max_ms, ".1f"),
            "-" if r.p99_ratio_to_baseline is None else f"{r.p99_ratio_to_baseline:.1f}x",
        )
        for r in results
    ]
    return table(header, rows, left=1)


def max_healthy(steps: list[IdleStep]) -> int:
    return max((s.sockets for s in steps if s.healthy), default=0)


def summary(
    relay: list[RelayResult], storm: list[StormResult], steps: list[IdleStep]
) -> dict[str, float]:
    """The figures the issues name, under their keys; one a run did not measure is left out
    (numbers only)."""
    figures: dict[str, float | None] = {}
    for r in relay:
        if r.server != PLAIN and r.rooms in (1, 200):
            suffix = "1_room" if r.rooms == 1 else "200_rooms"
            figures[f"relay_p50_ratio_{suffix}"] = r.p50_ratio_to_baseline
            if r.rooms == 200:
                figures["relay_msgs_per_s_200_rooms"] = r.msgs_per_s
    for stormed in storm:
        if stormed.server != PLAIN:
            figures["join_storm_p99_ms"] = stormed.p99_ms
            figures["join_storm_admissions_per_s"] = stormed.admissions_per_s
            figures["join_storm_failures"] = stormed.failed
    healthy = [s for s in steps if s.healthy]
    if steps:
        figures["idle_sockets_held"] = max_healthy(steps)
    if healthy:
        figures["kib_per_socket"] = max(healthy, key=lambda s: s.sockets).kib_per_socket
    return {key: value for key, value in figures.items() if value is not None}


def parts_read(text: str) -> frozenset[str]:
    parts = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(parts - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(PARTS)}"
        )
    return parts


def message_count(text: str) -> int:
    value = int(text)
    if value < MIN_MESSAGES:
        raise argparse.ArgumentTypeError(f"needs at least {MIN_MESSAGES} messages for a p99")
    return value


def socket_count(text: str) -> int:
    value = int(text)
    if not IDLE_STEPS[0] <= value <= MAX_SOCKETS_BOUND:
        raise argparse.ArgumentTypeError(f"must be between {IDLE_STEPS[0]} and {MAX_SOCKETS_BOUND}")
    return value


def tables_print(report: Report, plan: Plan) -> None:
    """The tables of the parts this run measured."""
    if report.relay:
        print(
            "signaling relay, one message in flight per room, expert on Daphne A and client on "
            "Daphne B (Redis pub/sub between them); baseline = plain websockets relay; "
            "p50 ratio = p50 / baseline p50"
        )
        print(format_relay(report.relay))
        print()
    if report.storm:
        print(
            f"join storm: {2 * plan.storm_rooms} participants of {plan.storm_rooms} rooms (expert "
            f"on Daphne A, client on Daphne B) start their handshakes at random within "
            f"{STORM_SPREAD_S:.0f} s, none waiting for another; latency = handshake start to "
            f"welcome, over {STORM_TIMEOUT_S:.0f} s = failed; p99 ratio = p99 / baseline p99"
        )
        print(format_storm(report.storm))
        print()
    steps = report.idle.steps
    if steps:
        print(
            f"idle sockets on one Daphne process, heartbeat every {HEARTBEAT_S:.0f} s, "
            f"{SETTLE_S:.0f} s to settle and {plan.hold_s:.0f} s measured per step; "
            f"RSS before: {report.idle.rss_before_kib / 1024:.1f} MiB"
        )
        print(format_idle(steps))
        stopped = next((s for s in steps if not s.healthy), None)
        verdict = f"held healthily: {max_healthy(steps)} sockets"
        if stopped is not None:
            verdict += f"; stopped at {stopped.sockets}: {stopped.problem}"
        else:
            verdict += f" (the bound, --max-sockets {plan.max_sockets})"
        print(verdict)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_MESSAGES} messages, at least {QUICK_MIN_ROUNDS_PER_ROOM} round trips per "
        f"room at 200 rooms, {QUICK_HOLD_S:.0f} s per idle step, up to {QUICK_MAX_SOCKETS} "
        "idle sockets",
    )
    parser.add_argument(
        "--messages",
        type=message_count,
        help=f"measured messages at 1 room (default {DEFAULT_MESSAGES}); at 200 rooms the "
        f"same, but at least {MIN_ROUNDS_PER_ROOM} round trips per room",
    )
    parser.add_argument(
        "--max-sockets",
        type=socket_count,
        help=f"the last idle step (default {DEFAULT_MAX_SOCKETS})",
    )
    parser.add_argument(
        "--parts",
        type=parts_read,
        default=frozenset(PARTS),
        help=f"what to measure, comma-separated, of {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="daphne",
        help="the ASGI server the product runs on (default daphne, what it runs in production)",
    )
    # How the bench runs its baseline relay in a process of its own.
    parser.add_argument("--serve-plain-relay", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_plain_relay:
        asyncio.run(plain_relay_serve(args.serve_plain_relay))
        return 0

    plan = Plan(
        messages=args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES),
        min_rounds_per_room=QUICK_MIN_ROUNDS_PER_ROOM if args.quick else MIN_ROUNDS_PER_ROOM,
        hold_s=QUICK_HOLD_S if args.quick else HOLD_S,
        max_sockets=args.max_sockets or (QUICK_MAX_SOCKETS if args.quick else DEFAULT_MAX_SOCKETS),
        storm_rooms=STORM_ROOMS if "storm" in args.parts else 0,
        parts=args.parts,
        server=args.server,
    )
    # The clients, the servers, Redis and PostgreSQL share this machine: say how busy it was.
    cpus = os.cpu_count() or 1
    load_at_start = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    try:
        file_descriptors_raise(max(plan.max_sockets, 2 * plan.storm_rooms, 2 * max(LEVELS)))
        database_url = database_url_check()
        django_setup()
        with (
            throwaway_database("signaling", progress) as bench_name,
            tempfile.TemporaryDirectory(prefix="parley-signaling-") as logs,
        ):
            workload = workload_create(
                LEVELS if "relay" in plan.parts else (),
                plan.storm_rooms,
                plan.max_sockets // 2 if "idle" in plan.parts else 0,
            )
            from django.db import connection

            connection.close()
            prefix = f"parley-bench-{uuid.uuid4().hex[:8]}"
            env = daphne_env(database_url, bench_name, prefix)
            report = asyncio.run(measure_all(workload, env, plan, Path(logs)))
    except BenchError as error:
        print(f"signaling: {error}", file=sys.stderr)
        return 2
    seconds = round(time.monotonic() - started, 1)

    steps = report.idle.steps
    if args.json:
        output = {
            "summary": summary(report.relay, report.storm, steps),
            "bench": "signaling",
            "server": plan.server,
            "messages": plan.messages,
            "min_rounds_per_room": plan.min_rounds_per_room,
            "warmup_messages": WARMUP_MESSAGES,
            "min_warmup_rounds": MIN_WARMUP_ROUNDS,
            "round_spacing_ms": ROUND_SPACING_S * 1000,
            "parts": sorted(plan.parts),
            "levels": list(LEVELS),
            "relay": [asdict(r) for r in report.relay],
            "storm": {
                "rooms": plan.storm_rooms,
                "spread_seconds": STORM_SPREAD_S,
                "timeout_seconds": STORM_TIMEOUT_S,
                "results": [asdict(r) for r in report.storm],
            },
            "idle": {
                "heartbeat_seconds": HEARTBEAT_S,
                "settle_seconds": SETTLE_S,
                "hold_seconds": plan.hold_s,
                "healthy_p99_ms": HEALTHY_P99_MS,
                "max_sockets": plan.max_sockets,
                "rss_before_kib": report.idle.rss_before_kib,
                "steps": [asdict(s) for s in steps],
                "max_healthy_sockets": max_healthy(steps),
            },
            "seconds": seconds,
            "cpus": cpus,
            "load_average_at_start": load_at_start,
            "errors": report.errors,
            "notes": report.notes,
        }
        print(json.dumps(output))
    else:
        tables_print(report, plan)
        print(f"run time: {seconds:.0f} s on {cpus} CPUs (load average {load_at_start} at start)")
    for message in report.errors:
        print(f"signaling: {message}", file=sys.stderr)
    for message in report.notes:
        print(f"signaling: after the overload: {message}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
