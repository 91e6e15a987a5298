"""The channel layer for the signaling sockets: channels_redis's pub/sub layer whose publishes do
not wait for each other (docs/SIGNALING.md).

channels_redis holds one lock per process across every publish's round trip to Redis, so a
process relayed its signals one at a time, each waiting for Redis to answer the one before, and
for the event loop to come back to it: with a hundred calls signaling at once that queue, not
the CPU, was most of a relayed message's latency (bench/signaling.py). Redis-py's connection
pool carries concurrent commands on connections of their own, so the lock protects nothing a
publish needs. Order is kept where the protocol needs it: a socket's frames are handled one
after the other, each publish awaited before the next frame is read, so one sender's signals
reach Redis, and its subscribers, in the order they were sent.

Selected in CHANNEL_LAYERS with ``"BACKEND": "rooms.layers.RelayPubSubChannelLayer"``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis import pubsub
from channels_redis.utils import _wrap_close

# Publishes in flight at once per process: well under the pool's 100 connections (redis-py
# refuses a command beyond them rather than waiting), and plenty to keep Redis busy.
PUBLISHES_IN_FLIGHT = 32


class ConcurrentPublishShard(pubsub.RedisSingleShardConnection):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._publishing = asyncio.Semaphore(PUBLISHES_IN_FLIGHT)

    async def publish(self, channel: str, message: bytes) -> None:
        # Without the shard's lock: creating the client is synchronous, and the pool gives
        # each concurrent publish a connection of its own. Subscriptions still take the lock.
        async with self._publishing:
            self._ensure_redis()
            await self._redis.publish(channel, message)


class RelayPubSubLoopLayer(pubsub.RedisPubSubLoopLayer):  # type: ignore[misc]
    _shards: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [ConcurrentPublishShard(shard.host, self) for shard in self._shards]


class RelayPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):  # type: ignore[misc]
    def _get_layer(self) -> RelayPubSubLoopLayer:
        # channels_redis's own, with the loop layer above: one per event loop.
        loop = asyncio.get_running_loop()
        try:
            layer: RelayPubSubLoopLayer = self._layers[loop]
        except KeyError:
            layer = RelayPubSubLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
        return layer
