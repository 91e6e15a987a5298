"""The channel layer for the signaling sockets: channels_redis's pub/sub layer whose publishes do
not wait for each other and go to Redis in pipelines (docs/SIGNALING.md).

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
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis
from channels_redis import pubsub
from channels_redis.utils import _consistent_hash, _wrap_close, decode_hosts

# Pipelines in flight at once per shard: one slow answer from Redis holds back only its own
# batch, and the pool's 100 connections are never reached (redis-py refuses a command beyond
# them rather than waiting).
PIPELINES_IN_FLIGHT = 8
# A Redis that hangs costs a blocking publish (after a commit) this long, not the worker.
BLOCKING_TIMEOUT_S = 2.0


class ConcurrentPublishShard(pubsub.RedisSingleShardConnection):  # type: ignore[misc]
    """Publishes without the shard's lock, and in batches: the publishes made during one turn
    of the event loop (and while every pipeline is busy) go to Redis as one pipeline, one write
    and one read for all of them, instead of a command and a reply each. With a hundred calls
    signaling at once, the per-command round trip was a quarter of a relaying process's time
    (bench/signaling.py, py-spy). Each publisher still awaits its own message's reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._flush_due = False
        self._pipelines = asyncio.Semaphore(PIPELINES_IN_FLIGHT)
        # The event loop keeps only weak references to tasks.
        self._flushes: set[asyncio.Task[None]] = set()

    async def subscribe(self, channel: str) -> None:
        async with self._reader_race():
            await super().subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._reader_race():
            await super().unsubscribe(channel)

    @contextlib.asynccontextmanager
    async def _reader_race(self) -> AsyncIterator[None]:
        """redis-py reads one pub/sub connection from whichever task needs it: the shard's
        receiver (its `get_message` reconnects a connection it finds closed) and a
        subscription (which reconnects it too, and reads the new connection's handshake).
        When Redis has just restarted, both can read it at once, and the second fails with
        asyncio's "read() called while another coroutine is already waiting for incoming
        data", a RuntimeError that escaped the consumer's join (found by bench/faults.py).
        That subscription fails as a lost connection does (the socket is told `unavailable`
        and the page dials again). asyncio refuses the second read before it takes anything
        from the connection, so the first reader goes on; closing the connection here instead
        made every subscription of the process reconnect and race again, a storm that took
        the fault harness's Daphnes down with it."""
        try:
            yield
        except RuntimeError as error:
            if "already waiting for incoming data" not in str(error):
                raise
            raise redis.exceptions.ConnectionError(
                "The channel layer's connection was being reopened; try again."
            ) from error

    async def publish(self, channel: str, message: bytes) -> None:
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()
        self._outbox.append((channel, message, sent))
        if not self._flush_due:
            # After the callbacks already due: every publish of this turn joins the batch.
            self._flush_due = True
            flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        await sent

    async def _flush(self) -> None:
        async with self._pipelines:
            # What accumulated while waiting for a pipeline goes too.
            batch, self._outbox, self._flush_due = self._outbox, [], False
            if not batch:
                return
            try:
                # Creating the client is synchronous; the pool gives each pipeline a
                # connection of its own. Subscriptions still take the shard's lock.
                self._ensure_redis()
                pipe = self._redis.pipeline(transaction=False)
                for channel, message, _ in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
            except Exception as error:
                for _, _, sent in batch:
                    if not sent.done():
                        sent.set_exception(error)
            except BaseException:
                for _, _, sent in batch:
                    sent.cancel()
                raise
            else:
                for _, _, sent in batch:
                    if not sent.done():
                        sent.set_result(None)


class RelayPubSubLoopLayer(pubsub.RedisPubSubLoopLayer):  # type: ignore[misc]
    _shards: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [ConcurrentPublishShard(shard.host, self) for shard in self._shards]


class RelayPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._blocking_lock = threading.Lock()
        self._blocking: tuple[int, list[redis.Redis]] | None = None

    def group_send_blocking(self, messages: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """`group_send` for each (group, message), in order, from synchronous code (a Celery
        task, a view, a socket's database thread): the same PUBLISH of the same bytes to the
        same shard as the async path, on redis-py clients this process keeps (one pipeline per
        shard), instead of an event loop and a new connection for every send through
        `async_to_sync` (some 3 ms of every room close: bench/close_storm.py). Raises what
        Redis raises; the caller decides what a failed broadcast means."""
        clients = self._blocking_clients()
        prefix = self._kwargs.get("prefix", "asgi")
        pipes: dict[int, Any] = {}
        for group, message in messages:
            channel = f"{prefix}__group__{group}"
            shard = _consistent_hash(channel, len(clients))
            if shard not in pipes:
                pipes[shard] = clients[shard].pipeline(transaction=False)
            pipes[shard].publish(channel, self.serialize(message))
        for pipe in pipes.values():
            pipe.execute()

    def blocking_supported(self) -> bool:
        """Whether `group_send_blocking` can reach this layer's hosts (a Sentinel setup
        cannot: its callers use the async path)."""
        return all("master_name" not in host for host in decode_hosts(self._kwargs.get("hosts")))

    def _blocking_clients(self) -> list[redis.Redis]:
        # One set per process: a Celery worker's children fork from a parent that may have
        # made one, and a connection must never be shared across a fork.
        with self._blocking_lock:
            if self._blocking is None or self._blocking[0] != os.getpid():
                clients = []
                for host in decode_hosts(self._kwargs.get("hosts")):
                    options = {
                        "socket_timeout": BLOCKING_TIMEOUT_S,
                        "socket_connect_timeout": BLOCKING_TIMEOUT_S,
                        **{k: v for k, v in host.items() if k != "address"},
                    }
                    if "address" in host:
                        clients.append(redis.Redis.from_url(host["address"], **options))
                    else:
                        clients.append(redis.Redis(**options))
                self._blocking = (os.getpid(), clients)
            return self._blocking[1]

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
