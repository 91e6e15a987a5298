"""A Daphne behind the balancer dies mid-call, and every call on it goes on (issue 18).

`scripts/cluster.sh` starts the production layout on ports of its own (HAProxy, two Daphne
processes, the channel layer sharded over two Redis servers, a broker Redis, two Celery
workers with beat, coturn) on this run's test database. Three calls join through the balancer,
round-robin with no stickiness, so their six sockets alternate between the two Daphnes: one
call has a side on each, one has both sides on the Daphne that will die, one both on the
other. That Daphne is SIGKILLed (a crash: no disconnect handler runs). Every socket it held
must come back through the balancer, on the other Daphne, as the same participant resuming
(`welcome.resumed`, `peer_resumed` to the peer, no new join) within the 20 s grace; the
sockets on the surviving Daphne are never dropped; requests sent before the balancer notices
are all answered; signaling relays again in every call; and the presence rows and the rooms'
stories say the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Origin

from accounts.models import User
from rooms.models import Presence, RoomEvent
from rooms.tests.e2e_harness import seed
from rooms.tests.e2e_services import PROJECT_DIR, http_ok, tail
from rooms.tests.signaling import session_cookie

# Clear of scripts/cluster.sh's defaults (8600, 6391–6393, 3491), so a cluster someone runs
# on this machine and this test do not meet.
PORT = 8610  # the balancer; the Daphnes on 8611 and 8612
REDIS_PORT = 6394  # 6394, 6395: the channel layer's shards; 6396: broker and cache
TURN_PORT = 3494
GRACE_SECONDS = 20.0
WAIT_SECONDS = 10.0
FINAL_CLOSE_CODES = {1000, 4000, 4001, 4002} | set(range(4400, 4500))
OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


@dataclass
class Cluster:
    root: Path
    url: str

    def pid(self, service: str) -> int:
        return int((self.root / "run" / f"{service}.pid").read_text())

    def daphnes(self) -> dict[int, str]:
        """Each Daphne's pid and name."""
        return {self.pid(f"daphne-{k}"): f"daphne-{k}" for k in (1, 2)}

    def haproxy(self, command: str) -> str:
        """A command on HAProxy's admin socket."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(5)
            admin.connect(str(self.root / "run" / "haproxy.sock"))
            admin.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := admin.recv(65536):
                answer += chunk
        return answer.decode()

    def server_status(self, name: str) -> str:
        """UP, DOWN, … of one server in the balancer's own view."""
        for line in self.haproxy("show stat").splitlines():
            fields = line.split(",")
            if fields[:2] == ["daphne", name]:
                return fields[17]
        raise LookupError(name)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name} ---\n{tail(log)}" for log in sorted((self.root / "log").glob("*.log"))
        )


@pytest.fixture
def cluster(transactional_db: None) -> Iterator[Cluster]:
    """The layout of scripts/cluster.sh on this run's test database (already migrated)."""
    for port in (PORT, PORT + 1, PORT + 2, REDIS_PORT, REDIS_PORT + 1, REDIS_PORT + 2, TURN_PORT):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"port {port} is taken; this test needs 8610-8612, 6394-6396, 3494")
    database = connection.settings_dict["NAME"]
    database_url = urlsplit(settings.DATABASE_URL)._replace(path=f"/{database}").geturl()
    root = Path(tempfile.mkdtemp(prefix="parley-cluster-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "TEST_", "CELERY"))}
    env.update(
        CLUSTER_DIR=str(root),
        CLUSTER_PORT=str(PORT),
        CLUSTER_REDIS_PORT=str(REDIS_PORT),
        CLUSTER_TURN_PORT=str(TURN_PORT),
        CLUSTER_TURN_RELAY_PORTS="49900-49999",
        CLUSTER_MIGRATE="0",
        DATABASE_URL=database_url,
        # The test's sessions must be valid in the cluster's processes.
        SECRET_KEY=settings.SECRET_KEY,
        DATABASE_POOL_MIN="1",
        DATABASE_POOL_MAX="4",
    )
    script = str(PROJECT_DIR / "scripts" / "cluster.sh")
    try:
        started = subprocess.run(  # noqa: S603 (our own script)
            [script, "start"], env=env, capture_output=True, text=True, timeout=150, check=False
        )
        cluster = Cluster(root, f"http://127.0.0.1:{PORT}")
        if started.returncode != 0:
            pytest.fail(f"cluster.sh start failed:\n{started.stdout}{started.stderr}")
        assert f"serves on {cluster.url}" in started.stdout
        yield cluster
        # What the processes said; pytest shows it only when the test failed.
        print(cluster.logs())  # noqa: T201
    finally:
        subprocess.run([script, "stop"], env=env, timeout=60, check=False)  # noqa: S603
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Person:
    """One participant's socket through the balancer, as the page keeps it: heartbeats, and a
    dropped socket opened again through the balancer until the grace runs out."""

    name: str
    user_id: int
    room_id: int
    cookie: str
    url: str
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    drops: list[tuple[float, int | None]] = field(default_factory=list)
    socket: ClientConnection | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def join(self) -> dict[str, Any]:
        mark = len(self.messages)
        await self._open()
        return await self.next("welcome", since=mark)

    async def _open(self) -> None:
        self.socket = await connect(
            f"ws://{urlsplit(self.url).netloc}/ws/rooms/{self.room_id}/",
            origin=Origin(self.url),
            additional_headers={"Cookie": self.cookie},
            open_timeout=5,
            ping_interval=None,
            proxy=None,
        )
        self.tasks.append(asyncio.create_task(self._read(self.socket)))

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for text in connection:
                message = json.loads(text)
                self.messages.append((time.monotonic(), message))
                self.changed.set()
                if message["type"] == "welcome":
                    every = float(message["heartbeat_seconds"])
                    self.tasks.append(asyncio.create_task(self._heartbeat(connection, every)))
        except ConnectionClosed:
            pass
        if connection is not self.socket:
            return
        self.drops.append((time.monotonic(), connection.close_code))
        self.socket = None
        if connection.close_code not in FINAL_CLOSE_CODES:
            self.tasks.append(asyncio.create_task(self._resume()))

    async def _resume(self) -> None:
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline:
            try:
                await self._open()
                return
            except (OSError, TimeoutError, WebSocketException):
                await asyncio.sleep(0.25)

    async def _heartbeat(self, connection: ClientConnection, every: float) -> None:
        while connection is self.socket:
            await asyncio.sleep(every)
            with contextlib.suppress(ConnectionClosed):
                await connection.send(json.dumps({"v": 1, "type": "heartbeat"}))

    async def send(self, **message: Any) -> None:
        assert self.socket is not None, f"{self.name} has no socket"
        await self.socket.send(json.dumps({"v": 1, **message}))

    def since(self, at: float) -> list[dict[str, Any]]:
        return [message for when, message in self.messages if when >= at]

    async def next(
        self, kind: str, *, since: int = 0, timeout: float = WAIT_SECONDS, **match: Any
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for _, message in self.messages[since:]:
                        if message["type"] == kind and all(
                            message.get(k) == v for k, v in match.items()
                        ):
                            return message
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            seen = [m["type"] for _, m in self.messages[since:]]
            raise AssertionError(f"{self.name}: no {kind} {match or ''}; got {seen}") from None

    async def close(self) -> None:
        socket, self.socket = self.socket, None
        for task in self.tasks:
            task.cancel()
        if socket is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await socket.close()


@pytest.fixture
async def people() -> AsyncIterator[list[Person]]:
    everyone: list[Person] = []
    yield everyone
    await asyncio.gather(*(person.close() for person in everyone))


def _call(url: str, label: str) -> tuple[Person, Person]:
    made = seed()
    expert = User.objects.get(pk=made["expert"]["id"])
    client = User.objects.get(pk=made["client"]["id"])
    room = made["room"]
    return (
        Person(f"{label} expert", expert.pk, room, session_cookie(expert)[1].decode(), url),
        Person(f"{label} client", client.pk, room, session_cookie(client)[1].decode(), url),
    )


def _process_of(person: Person) -> int:
    """The pid of the Daphne holding the person's open presence (`host:pid`)."""
    presence = Presence.objects.get(
        room_id=person.room_id, user_id=person.user_id, closed_at__isnull=True
    )
    return int(presence.process.rsplit(":", 1)[1])


async def test_a_daphne_killed_behind_the_balancer_every_call_on_it_resumes_on_another(
    cluster: Cluster, people: list[Person]
) -> None:
    calls = [await database_sync_to_async(_call)(cluster.url, label) for label in "ABC"]
    (a_expert, a_client), (b_expert, b_client), (c_expert, c_client) = calls
    # Round-robin puts every other socket on the same Daphne: in this order, call A has a side
    # on each, both sides of B share one Daphne and both sides of C the other.
    people.extend([a_expert, a_client, b_expert, c_expert, b_client, c_client])
    for person in people:
        welcome = await person.join()
        assert welcome["resumed"] is False
    for expert, client in calls:
        joined = await expert.next("peer_joined")
        assert joined["peer"]["id"] == client.user_id

    # The channel layer is sharded: each Redis holds some of the sockets' channels and groups.
    for port in (REDIS_PORT, REDIS_PORT + 1):
        assert redis.Redis(port=port).pubsub_channels(), f"no subscriptions on Redis {port}"

    daphnes = cluster.daphnes()
    where = {p.name: await database_sync_to_async(_process_of)(p) for p in people}
    victim = where[a_expert.name]
    (survivor,) = set(daphnes) - {victim}
    moved = [p for p in people if where[p.name] == victim]
    stayed = [p for p in people if where[p.name] != victim]
    # No stickiness, strict round-robin: the sockets alternate between the two Daphnes.
    assert [p.name for p in moved] == ["A expert", "B expert", "B client"], where
    assert {where[p.name] for p in stayed} == {survivor}

    # Call A's sides are on different Daphnes: a signal crosses the sharded layer both ways.
    await a_client.send(type="signal", to=a_expert.user_id, data=OFFER)
    await a_expert.next("signal", **{"from": a_client.user_id})
    await a_expert.send(type="signal", to=a_client.user_id, data=OFFER)
    await a_client.next("signal", **{"from": a_expert.user_id})

    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    # Requests right after the kill, before the health check has noticed, are all answered:
    # a connect to the dead port is retried on the other Daphne.
    for _ in range(4):
        assert await asyncio.to_thread(http_ok, f"{cluster.url}/healthz")

    # Every socket on the dead Daphne is dropped and comes back through the balancer.
    async with asyncio.timeout(GRACE_SECONDS):
        for person in moved:
            welcome = await person.next("welcome", since=1)
            assert welcome["resumed"] is True, person.name
            assert welcome["you"]["id"] == person.user_id
            assert len(welcome["peers"]) == 1, welcome["peers"]
    resumed_within = {
        p.name: max(when for when, m in p.messages if m["type"] == "welcome") - killed_at
        for p in moved
    }
    print(f"seconds from the kill to each resumed welcome: {resumed_within}")  # noqa: T201
    assert max(resumed_within.values()) < GRACE_SECONDS, resumed_within
    for person in moved:
        assert [code for _, code in person.drops] == [1006], person.drops
        assert await database_sync_to_async(_process_of)(person) == survivor
    # The sockets on the surviving Daphne were never touched. A's client is told its expert
    # resumed; in B, whoever came back first is told the other resumed; C hears nothing.
    for person in stayed:
        assert person.drops == [] and person.socket is not None, person.name
    await a_client.next("peer_resumed", peer_id=a_expert.user_id)
    told = [
        m["peer_id"]
        for person in (b_expert, b_client)
        for m in person.since(killed_at)
        if m["type"] == "peer_resumed"
    ]
    assert told and set(told) <= {b_expert.user_id, b_client.user_id}, told
    for person in people:
        after = {m["type"] for m in person.since(killed_at)}
        assert not after & {"peer_joined", "peer_left", "ended", "error"}, (person.name, after)
    assert not {m["type"] for p in (c_expert, c_client) for m in p.since(killed_at)} & {
        "peer_reconnecting",
        "peer_resumed",
    }

    # Signaling works again in every call, both ways: the resumed sockets are subscribed anew.
    for expert, client in calls:
        mark_expert, mark_client = len(expert.messages), len(client.messages)
        await client.send(type="signal", to=expert.user_id, data=OFFER)
        await expert.next("signal", since=mark_expert, **{"from": client.user_id})
        await expert.send(type="signal", to=client.user_id, data=OFFER)
        await client.next("signal", since=mark_client, **{"from": expert.user_id})

    # The balancer took the dead server out by its health check.
    async with asyncio.timeout(WAIT_SECONDS):
        while cluster.server_status(daphnes[victim]) != "DOWN":
            await asyncio.sleep(0.2)
    assert cluster.server_status(daphnes[survivor]) == "UP"

    # The database tells the same story: the dead process's presences were replaced by the
    # resumed ones (not swept, not left), and no join after the kill was a new one.
    def story() -> None:
        for person in moved:
            rows = list(Presence.objects.filter(room_id=person.room_id, user_id=person.user_id))
            assert [(r.process.endswith(f":{victim}"), r.close_reason) for r in rows] == [
                (True, "replaced"),
                (False, ""),
            ], person.name
        opened = RoomEvent.objects.filter(
            room_id__in={p.room_id for p in people}, kind="presence_opened"
        )
        by_user = sorted((e.actor_id, e.data["resumed"]) for e in opened)
        expected = sorted([(p.user_id, False) for p in people] + [(p.user_id, True) for p in moved])
        assert by_user == expected

    await database_sync_to_async(story)()
