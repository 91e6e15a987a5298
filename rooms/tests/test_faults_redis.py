"""Redis goes down under a live call and comes back (issue 16, defect E, the socket's side).

A real Daphne process serves the room on a Redis server this test starts on a free port and
kills (SIGKILL) itself, so the shared Redis of the other tests is never touched. While Redis is
down: a `signal` is answered with `error unavailable` and the socket stays open (no 1011), the
heartbeats go on (they need only the database), and a new connection is accepted, told
`unavailable` and closed 4503 (no HTTP 500 at the handshake). When Redis is back, with nothing
restarted: the open sockets relay again and a reconnect is admitted as a resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from accounts.models import User
from rooms.models import Presence
from rooms.tests.e2e_harness import seed
from rooms.tests.e2e_services import (
    Deployment,
    Service,
    http_ok,
    port_open,
    tail,
    wait_for,
)
from rooms.tests.signaling import session_cookie

WAIT_SECONDS = 10.0
LISTENING = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")
OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Stack:
    deployment: Deployment
    daphne: str
    redis_port: int
    redis: Service | None
    daphne_process: Service | None = None

    def redis_start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None, "redis-server is not installed (scripts/services.sh)"
        self.redis = self.deployment.start(
            f"redis-{uuid.uuid4().hex[:4]}",
            [server, "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.deployment.root)],
        )
        wait_for("Redis", lambda: port_open(self.redis_port), 10, self.redis.log)

    def redis_kill(self) -> None:
        assert self.redis is not None
        self.deployment.kill(self.redis)
        self.deployment.services.remove(self.redis)
        self.redis = None


def _daphne_port(service: Service) -> int | None:
    if service.process.poll() is not None:
        raise AssertionError(f"{service.name} exited:\n{tail(service.log)}")
    found = LISTENING.search(service.log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


@pytest.fixture
def stack(transactional_db: None) -> Iterator[Stack]:
    """One Daphne on this run's test database and on a Redis of its own."""
    database = connection.settings_dict["NAME"]
    database_url = urlsplit(settings.DATABASE_URL)._replace(path=f"/{database}").geturl()
    with Deployment() as deployment:
        stack = Stack(deployment, "", _free_port(), None)
        stack.redis_start()
        env = deployment.django_env(database_url, f"redis://127.0.0.1:{stack.redis_port}/0")
        env.update(
            # Short: a channel name (prefix + 41 characters) is a presence's connection id (64).
            CHANNEL_LAYER_PREFIX=f"pf-{uuid.uuid4().hex[:8]}",
            SECRET_KEY=settings.SECRET_KEY,
            CELERY_BROKER_URL="memory://localhost/",
            DATABASE_POOL_MIN="1",
            DATABASE_POOL_MAX="4",
        )
        daphne = deployment.daphne("daphne", 0, env)
        stack.daphne_process = daphne
        wait_for("daphne's port", lambda: _daphne_port(daphne) is not None, 60, daphne.log)
        stack.daphne = f"http://127.0.0.1:{_daphne_port(daphne)}"
        wait_for("daphne", functools.partial(http_ok, f"{stack.daphne}/healthz"), 30, daphne.log)
        yield stack
        # What the processes said; pytest shows it only when the test failed.
        print(deployment.logs())  # noqa: T201


class Live:
    """A participant's socket on the Daphne process, read in the background."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for text in self.connection:
                self.inbox.put_nowait(json.loads(text))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def send(self, **message: Any) -> None:
        await self.connection.send(json.dumps({"v": 1, **message}))

    async def next(self, kind: str) -> dict[str, Any]:
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    message = await self.inbox.get()
                    self.seen.append(message)
                    if message["type"] == kind:
                        return message
        except TimeoutError:
            raise AssertionError(
                f"no {kind} (closed: {self.connection.close_code}); got {self.seen}"
            ) from None

    async def close_code(self) -> int | None:
        async with asyncio.timeout(WAIT_SECONDS):
            await self.closed.wait()
        return self.connection.close_code

    async def close(self) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.connection.close()
        await self.reader


@pytest.fixture
async def opened() -> AsyncIterator[list[Live]]:
    sockets: list[Live] = []
    yield sockets
    await asyncio.gather(*(socket.close() for socket in sockets))


async def _open(stack: Stack, room_id: int, cookie: str, opened: list[Live]) -> Live:
    connection = await connect(
        f"ws://{urlsplit(stack.daphne).netloc}/ws/rooms/{room_id}/",
        origin=Origin(stack.daphne),
        additional_headers={"Cookie": cookie},
        open_timeout=WAIT_SECONDS,
        ping_interval=None,
        proxy=None,
    )
    live = Live(connection)
    opened.append(live)
    return live


def _people() -> tuple[int, int, int, str, str]:
    people = seed()
    expert = User.objects.get(pk=people["expert"]["id"])
    client = User.objects.get(pk=people["client"]["id"])
    return (
        people["room"],
        expert.pk,
        client.pk,
        session_cookie(expert)[1].decode(),
        session_cookie(client)[1].decode(),
    )


async def test_a_redis_outage_is_answered_cleanly_and_recovers_by_itself(
    stack: Stack, opened: list[Live]
) -> None:
    room_id, expert_id, client_id, expert_cookie, client_cookie = await database_sync_to_async(
        _people
    )()
    expert = await _open(stack, room_id, expert_cookie, opened)
    assert (await expert.next("welcome"))["type"] == "welcome"
    client = await _open(stack, room_id, client_cookie, opened)
    await client.next("welcome")
    await expert.next("peer_joined")
    await client.send(type="signal", to=expert_id, data=OFFER)
    assert (await expert.next("signal"))["from"] == client_id

    stack.redis_kill()

    # A signal cannot be relayed: answered, and the socket stays.
    await client.send(type="signal", to=expert_id, data=OFFER)
    refused = await client.next("error")
    assert (refused["code"], refused["ref"]) == ("unavailable", "signal")
    # Heartbeats need only the database: acknowledged, the presence kept.
    await client.send(type="heartbeat")
    await client.next("heartbeat_ack")
    await expert.send(type="heartbeat")
    await expert.next("heartbeat_ack")
    assert not client.closed.is_set() and not expert.closed.is_set()

    # A new connection gets a clean refusal, not an HTTP 500.
    try:
        again = await _open(stack, room_id, client_cookie, opened)
    except InvalidStatus as status:  # the handshake failed
        pytest.fail(f"the handshake was answered {status.response.status_code}")
    error = await again.next("error")
    assert error["code"] == "unavailable"
    assert await again.close_code() == 4503
    # Nobody was dropped by the outage itself.
    open_presences = await Presence.objects.filter(room_id=room_id, closed_at__isnull=True).acount()
    assert open_presences == 2

    stack.redis_start()

    # The open sockets relay again, with nothing restarted (the layer reconnects and
    # subscribes again by itself).
    async with asyncio.timeout(30):
        while True:
            await client.send(type="signal", to=expert_id, data=OFFER)
            try:
                async with asyncio.timeout(1):
                    relayed = await expert.next("signal")
                break
            except TimeoutError:
                continue
    assert relayed["from"] == client_id
    # And a reconnect is admitted, as a resume of the same participant.
    back = await _open(stack, room_id, client_cookie, opened)
    welcome = await back.next("welcome")
    assert welcome["resumed"] is True
    assert await client.close_code() == 4001  # the older socket is replaced
    await expert.next("peer_resumed")
    # The Daphne process never died or restarted along the way.
    assert stack.daphne_process is not None and stack.daphne_process.process.poll() is None
