"""The channel layer's pub/sub connection when Redis restarts under it (found by
bench/faults.py): the layer's receiver and a subscription made at that moment can both read the
shard's one pub/sub connection while it is reopened, and the second reader fails with asyncio's
"read() called while another coroutine is already waiting for incoming data", a RuntimeError
that escaped the consumer's join (Daphne: "Exception inside application"). A subscription made
while Redis is down or coming back must fail as a lost connection does (the consumer answers
`unavailable`, the page dials again) or succeed; and the layer delivers again once Redis is
back, with nothing restarted. A Redis server of this test's own, on a free port; the second
reader is made to happen in the second test (in the first it happens only by chance, as in
the fault harness: twice in 18 Redis restarts under 150 live calls)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from channels_redis import pubsub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from rooms.layers import RelayPubSubChannelLayer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Redis:
    def __init__(self, port: int, folder: Path) -> None:
        self.port, self.folder = port, folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None, "redis-server is not installed (scripts/services.sh)"
        self.process = subprocess.Popen(  # noqa: S603
            [server, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def redis_server() -> Iterator[Redis]:
    with tempfile.TemporaryDirectory(prefix="layer-redis-") as folder:
        server = Redis(_free_port(), Path(folder))
        server.start()
        yield server
        server.kill()


async def test_subscriptions_while_redis_restarts_fail_as_a_lost_connection_or_succeed(
    redis_server: Redis,
) -> None:
    layer = RelayPubSubChannelLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"])
    channel = await layer.new_channel()
    await layer.group_add("room", channel)  # the receiver now reads the pub/sub connection
    await layer.group_send("room", {"type": "hello"})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "hello"
    unexpected: list[BaseException] = []
    for restart in range(3):
        redis_server.kill()
        # Joins while Redis is down, and while it comes back: every one at once, as the
        # sockets of a room's worth of pages dialling again.
        down = await asyncio.gather(
            *(layer.group_add(f"down-{restart}-{i}", channel) for i in range(20)),
            return_exceptions=True,
        )
        redis_server.start()
        back: list[object] = []
        for wave in range(20):
            back += await asyncio.gather(
                *(layer.group_add(f"back-{restart}-{wave}-{i}", channel) for i in range(3)),
                layer.group_discard(f"back-{restart}-{wave}-0", channel),
                return_exceptions=True,
            )
            await asyncio.sleep(0.01)
        unexpected += [
            outcome
            for outcome in down + back
            if isinstance(outcome, BaseException) and not isinstance(outcome, RedisError | OSError)
        ]
    assert unexpected == [], [repr(e) for e in unexpected[:5]]
    # Delivering again, with nothing restarted: the receiver subscribed the room again.
    deadline = time.monotonic() + 10
    while True:
        await layer.group_send("room", {"type": "back"})
        try:
            message = await asyncio.wait_for(layer.receive(channel), 0.5)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the layer did not deliver after Redis came back"
    assert message["type"] == "back"
    await layer.flush()


async def test_a_subscription_that_meets_the_receiver_reconnecting_fails_as_a_lost_connection(
    redis_server: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = RelayPubSubChannelLayer(hosts=[f"redis://127.0.0.1:{redis_server.port}/0"])
    channel = await layer.new_channel()
    subscribe = pubsub.RedisSingleShardConnection.subscribe
    raced: list[str] = []

    async def second_reader(self: pubsub.RedisSingleShardConnection, name: str) -> None:
        if not raced:
            raced.append(name)
            # What asyncio says to the second task reading one connection.
            raise RuntimeError(
                "read() called while another coroutine is already waiting for incoming data"
            )
        await subscribe(self, name)

    monkeypatch.setattr(pubsub.RedisSingleShardConnection, "subscribe", second_reader)
    with pytest.raises(RedisConnectionError, match="being reopened"):
        await layer.group_add("room", channel)
    # The page dials again: the next join subscribes, and the room is delivered.
    await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "hello"})
    assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "hello"
    # Any other RuntimeError is not a connection's: it is not disguised as one.
    raced.clear()

    async def broken(self: pubsub.RedisSingleShardConnection, name: str) -> None:
        raise RuntimeError("something else")

    monkeypatch.setattr(pubsub.RedisSingleShardConnection, "subscribe", broken)
    with pytest.raises(RuntimeError, match="something else"):
        await layer.group_add("other", channel)
    await layer.flush()
