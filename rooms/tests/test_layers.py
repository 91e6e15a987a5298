"""The signaling channel layer on the real Redis: publishes do not wait for each other, and each
sender's messages still arrive in the order it sent them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.conf import settings
from redis.asyncio.client import Pipeline

from rooms.layers import RelayPubSubChannelLayer


@pytest.fixture
async def layer() -> AsyncIterator[RelayPubSubChannelLayer]:
    # Pub/sub channels are server-wide: a prefix of this test's own.
    made = RelayPubSubChannelLayer(hosts=[settings.REDIS_URL], prefix=f"t{uuid.uuid4().hex[:8]}")
    yield made
    await made.flush()


async def test_a_publish_does_not_wait_for_one_still_in_flight(
    layer: RelayPubSubChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = await layer.new_channel()
    real_execute = Pipeline.execute
    held = asyncio.Event()
    release = asyncio.Event()

    async def execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        if not held.is_set():
            # The first batch is slow to get its answer from Redis.
            held.set()
            await release.wait()
        return await real_execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", execute)
    slow = asyncio.create_task(layer.send(channel, {"type": "first"}))
    try:
        await held.wait()
        await asyncio.wait_for(layer.send(channel, {"type": "second"}), timeout=2)
        assert await asyncio.wait_for(layer.receive(channel), timeout=2) == {"type": "second"}
        assert not slow.done()
    finally:
        release.set()
        await slow
    assert await asyncio.wait_for(layer.receive(channel), timeout=2) == {"type": "first"}


async def test_publishes_of_one_loop_turn_go_to_redis_in_one_pipeline(
    layer: RelayPubSubChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = await layer.new_channel()
    real_execute = Pipeline.execute
    batches: list[int] = []

    async def execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        batches.append(len(self.command_stack))
        return await real_execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", execute)
    await asyncio.gather(*(layer.send(channel, {"type": "m", "seq": n}) for n in range(20)))
    arrived = [await asyncio.wait_for(layer.receive(channel), timeout=2) for _ in range(20)]
    assert sorted(message["seq"] for message in arrived) == list(range(20))
    assert batches == [20]


async def test_a_failed_batch_fails_each_of_its_publishes_and_the_next_goes_through(
    layer: RelayPubSubChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis went away mid-batch: every sender in it hears so (the consumer answers
    `unavailable`), and the layer works again once Redis answers."""
    channel = await layer.new_channel()
    real_execute = Pipeline.execute
    failures = [ConnectionError("Connection reset by peer")]

    async def execute(self: Pipeline, raise_on_error: bool = True) -> Any:
        if failures:
            raise failures.pop()
        return await real_execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", execute)
    sent = await asyncio.gather(
        *(layer.send(channel, {"type": "m", "seq": n}) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, ConnectionError) for result in sent), sent
    await layer.send(channel, {"type": "m", "seq": 3})
    assert await asyncio.wait_for(layer.receive(channel), timeout=2) == {"type": "m", "seq": 3}


async def test_each_senders_messages_arrive_in_the_order_it_sent_them(
    layer: RelayPubSubChannelLayer,
) -> None:
    """As a socket's frames are: several senders at once, each awaiting its publish before the
    next, as the consumer does; between senders any interleaving is fine."""
    channel = await layer.new_channel()
    senders, each = 8, 100

    async def sender(name: int) -> None:
        for seq in range(each):
            await layer.send(channel, {"type": "m", "sender": name, "seq": seq})

    await asyncio.gather(*(sender(name) for name in range(senders)))
    arrived: dict[int, list[int]] = {name: [] for name in range(senders)}
    for _ in range(senders * each):
        message = await asyncio.wait_for(layer.receive(channel), timeout=5)
        arrived[message["sender"]].append(message["seq"])
    assert arrived == {name: list(range(each)) for name in range(senders)}


async def test_more_publishes_at_once_than_the_pool_has_connections_all_go_through(
    layer: RelayPubSubChannelLayer,
) -> None:
    """Two hundred rooms signaling at once: redis-py refuses a command beyond its pool's 100
    connections instead of waiting for one, so the layer holds the rest back."""
    channel = await layer.new_channel()
    await asyncio.gather(*(layer.send(channel, {"type": "m", "seq": n}) for n in range(300)))
    arrived = [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(300)]
    assert sorted(message["seq"] for message in arrived) == list(range(300))


async def test_a_blocking_group_send_reaches_the_groups_sockets_on_every_shard() -> None:
    # Two "shards" (two databases of one server: pub/sub ignores the database, the prefix
    # keeps this test apart): groups hash to one or the other, as with two Redis servers.
    hosts = [settings.REDIS_URL, settings.REDIS_URL.rsplit("/", 1)[0] + "/15"]
    layer = RelayPubSubChannelLayer(hosts=hosts, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        groups = [f"room.{n}" for n in range(6)]
        members = {}
        for group in groups:
            members[group] = await layer.new_channel()
            await layer.group_add(group, members[group])
        sent = [(group, {"type": "room.event", "n": n}) for n, group in enumerate(groups)]
        # From sync code, as a Celery task's after-commit sends it: no event loop of its own.
        await asyncio.to_thread(layer.group_send_blocking, [*sent, (groups[0], {"type": "x"})])
        for n, group in enumerate(groups):
            got = await asyncio.wait_for(layer.receive(members[group]), timeout=2)
            assert got == {"type": "room.event", "n": n}
        assert await asyncio.wait_for(layer.receive(members[groups[0]]), 2) == {"type": "x"}
        assert layer.blocking_supported()
    finally:
        await layer.flush()


def test_a_broadcast_after_commit_from_sync_code_publishes_without_an_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgiref import sync

    from rooms import broadcast

    layer = RelayPubSubChannelLayer(hosts=[settings.REDIS_URL], prefix="t-sync")
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(broadcast, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(layer, "group_send_blocking", published.extend)

    def no_loop(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("async_to_sync was used: an event loop and a connection per send")

    monkeypatch.setattr(sync.AsyncToSync, "__call__", no_loop)
    broadcast._group_send("room.1", {"type": "room.ended"})
    with broadcast.batched():
        broadcast._group_send("room.2", {"type": "a"})
        broadcast._group_send("room.3", {"type": "b"})
    assert published == [
        ("room.1", {"type": "room.ended"}),
        ("room.2", {"type": "a"}),
        ("room.3", {"type": "b"}),
    ]
