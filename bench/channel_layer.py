"""Latency of relaying one message through a Channels channel layer, per backend.

Room signaling (SDP offers, ICE candidates) goes from one participant's consumer to the other's
through the channel layer: the sending consumer calls ``group_send`` (or ``send`` to the peer's
channel) and the receiving consumer, usually in another Daphne process, is awaiting ``receive``.
That hop sits on the critical path of every call setup, so this bench measures exactly it,
without WebSockets or Daphne around it:

- ``channels.layers.InMemoryChannelLayer``, the baseline: no network, one process, so sender and
  receiver share one instance (it cannot span processes and is no option for production);
- ``channels_redis.pubsub.RedisPubSubChannelLayer``, which the production layer
  (``rooms.layers.RelayPubSubChannelLayer``, ``config/settings.py``) extends only by letting
  concurrent publishes overlap, which one message at a time does not exercise, and
- ``channels_redis.core.RedisChannelLayer``, the list-based alternative it was chosen over.

For the Redis layers the sender and the receiver are separate layer instances with their own
connections, as two Daphne processes would be. Messages go one at a time (ping-pong): the next
is sent only once the previous one has arrived, so each latency is that of one message on an
idle layer, from the start of the send to the return of ``receive``. Messages per second is
that sequential rate, not the layer's saturated throughput. The payload is the size of an ICE
candidate message. After a warm-up that is not counted, the bench prints p50/p90/p99 and the
ratio of each p50 to the in-memory p50 for the same kind of send.

    .venv/bin/python bench/channel_layer.py [--json] [--messages N]

Redis comes from ``REDIS_URL`` (default ``redis://127.0.0.1:6379/1``). Every run uses its own
prefix, so it neither sees nor deletes anyone else's keys or pub/sub channels (those are
server-wide, not per database). The reverse does not hold: the test suite empties its Redis
database before every test, so ``scripts/bench.sh`` gives the benches a database of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from redis import asyncio as aioredis
from redis.exceptions import RedisError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/1"
DEFAULT_MESSAGES = 2000
WARMUP_MESSAGES = 100
# A message that has not arrived by then is counted as lost (the Redis layers are at-most-once).
RECEIVE_TIMEOUT_S = 1.0
# Bounds the run when a layer is broken rather than slow.
MAX_LOST = 5
# Right after subscribing, a Redis pub/sub receiver may not be listening yet; probe until one
# message makes it through before the warm-up starts.
PROBE_ATTEMPTS = 20
PROBE_TIMEOUT_S = 0.25
# Roughly what the browser sends for one ICE candidate.
PAYLOAD = {
    "candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx "
    "raddr 192.168.1.23 rport 54321 generation 0 ufrag Xh3v network-cost 999",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


class ChannelLayer(Protocol):
    """The part of the Channels layer API the bench uses (the layers themselves are untyped)."""

    async def new_channel(self) -> str: ...
    async def send(self, channel: str, message: dict[str, Any]) -> None: ...
    async def receive(self, channel: str) -> dict[str, Any]: ...
    async def group_add(self, group: str, channel: str) -> None: ...
    async def group_discard(self, group: str, channel: str) -> None: ...
    async def group_send(self, group: str, message: dict[str, Any]) -> None: ...
    async def flush(self) -> None: ...


@dataclass(frozen=True)
class LayerUnderTest:
    name: str
    # Returns (sender, receiver); the same object twice when the backend is in-process only.
    make: Callable[[], tuple[ChannelLayer, ChannelLayer]]
    close: Callable[[ChannelLayer, ChannelLayer], Awaitable[None]]
    needs_redis: bool


@dataclass(frozen=True)
class Result:
    layer: str
    mode: str
    messages: int
    lost: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    msgs_per_s: float
    p50_ratio_to_baseline: float | None = None


class BenchError(Exception):
    """A layer could not be measured; the message says why."""


Arrival = tuple[int, float] | BaseException


def layers_under_test(redis_url: str, prefix: str) -> list[LayerUnderTest]:
    # As config/settings.py configures it: pub/sub waits in get_message() with its own short
    # timeout, so redis-py 8's default socket timeout does not bite it.
    pubsub_hosts = [redis_url]

    def make_in_memory() -> tuple[ChannelLayer, ChannelLayer]:
        layer = InMemoryChannelLayer()
        return layer, layer

    async def close_in_memory(sender: ChannelLayer, receiver: ChannelLayer) -> None:
        await receiver.flush()

    def make_pubsub() -> tuple[ChannelLayer, ChannelLayer]:
        return (
            RedisPubSubChannelLayer(hosts=pubsub_hosts, prefix=prefix),
            RedisPubSubChannelLayer(hosts=pubsub_hosts, prefix=prefix),
        )

    async def close_pubsub(sender: ChannelLayer, receiver: ChannelLayer) -> None:
        # Pub/sub keeps no keys; flush cancels the reader task and closes the connections.
        await receiver.flush()
        await sender.flush()

    # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that RedisChannelLayer
    # blocks in BZPOPMIN, so an idle receive() raises TimeoutError (django/channels_redis#422).
    # Deployed with redis-py 8 it needs socket_timeout=None; measure it as it would have to run.
    core_hosts = [{"address": redis_url, "socket_timeout": None}]

    def make_core() -> tuple[ChannelLayer, ChannelLayer]:
        return (
            RedisChannelLayer(hosts=core_hosts, prefix=prefix),
            RedisChannelLayer(hosts=core_hosts, prefix=prefix),
        )

    async def close_core(sender: ChannelLayer, receiver: ChannelLayer) -> None:
        # flush() deletes every key under the prefix (only this run's) and closes the pools.
        await receiver.flush()
        await sender.flush()

    return [
        LayerUnderTest("InMemoryChannelLayer", make_in_memory, close_in_memory, False),
        LayerUnderTest("RedisPubSubChannelLayer", make_pubsub, close_pubsub, True),
        LayerUnderTest("RedisChannelLayer", make_core, close_core, True),
    ]


async def receive_forever(
    layer: ChannelLayer, channel: str, arrivals: asyncio.Queue[Arrival]
) -> None:
    """What a consumer does: await the layer, note when each message arrived."""
    try:
        while True:
            message = await layer.receive(channel)
            arrived = time.perf_counter()
            arrivals.put_nowait((int(message["seq"]), arrived))
    except asyncio.CancelledError:
        raise
    except Exception as error:  # handed to the sender, which raises it
        arrivals.put_nowait(error)


async def wait_for_seq(arrivals: asyncio.Queue[Arrival], seq: int, timeout: float) -> float | None:
    """The arrival time of message `seq`, skipping late arrivals of earlier ones; None if lost."""
    deadline = time.perf_counter() + timeout
    while (remaining := deadline - time.perf_counter()) > 0:
        try:
            # asyncio.timeout, unlike wait_for, starts no task per message: less harness in
            # the in-memory baseline.
            async with asyncio.timeout(remaining):
                arrival = await arrivals.get()
        except TimeoutError:
            return None
        if isinstance(arrival, BaseException):
            raise BenchError(f"receive failed: {type(arrival).__name__}: {arrival}") from arrival
        arrived_seq, arrived_at = arrival
        if arrived_seq == seq:
            return arrived_at
    return None


async def measure(layer: LayerUnderTest, mode: str, messages: int) -> Result:
    sender, receiver = layer.make()
    group = f"bench.{uuid.uuid4().hex}"
    arrivals: asyncio.Queue[Arrival] = asyncio.Queue()
    receiving: asyncio.Task[None] | None = None
    channel: str | None = None
    try:
        channel = await receiver.new_channel()
        if mode == "group_send":
            await receiver.group_add(group, channel)
        receiving = asyncio.create_task(receive_forever(receiver, channel, arrivals))

        async def send(seq: int) -> None:
            message = {"type": "signal.relay", "seq": seq, "payload": PAYLOAD}
            if mode == "group_send":
                await sender.group_send(group, message)
            else:
                await sender.send(channel, message)

        seq = 0
        for _ in range(PROBE_ATTEMPTS):
            seq += 1
            await send(seq)
            if await wait_for_seq(arrivals, seq, PROBE_TIMEOUT_S) is not None:
                break
        else:
            raise BenchError(f"no message arrived in {PROBE_ATTEMPTS} attempts")

        for _ in range(WARMUP_MESSAGES):
            seq += 1
            await send(seq)
            await wait_for_seq(arrivals, seq, RECEIVE_TIMEOUT_S)

        latencies: list[float] = []
        lost = 0
        gc.collect()
        started = time.perf_counter()
        for _ in range(messages):
            seq += 1
            sent_at = time.perf_counter()
            await send(seq)
            arrived_at = await wait_for_seq(arrivals, seq, RECEIVE_TIMEOUT_S)
            if arrived_at is None:
                lost += 1
                if lost > MAX_LOST:
                    raise BenchError(
                        f"more than {MAX_LOST} messages lost; if the test suite was running, "
                        "its cache.clear() empties REDIS_URL's database before every test "
                        "(groups included): point REDIS_URL at another database"
                    )
            else:
                latencies.append((arrived_at - sent_at) * 1000)
        elapsed = time.perf_counter() - started
    finally:
        if receiving is not None:
            # Cancelling receive() is how Channels stops a consumer; the layers clean up on it.
            receiving.cancel()
            try:
                await receiving
            except asyncio.CancelledError:
                pass
        try:
            if channel is not None and mode == "group_send":
                await receiver.group_discard(group, channel)
        finally:
            await layer.close(sender, receiver)

    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(
        layer=layer.name,
        mode=mode,
        messages=len(latencies),
        lost=lost,
        p50_ms=round(cuts[49], 4),
        p90_ms=round(cuts[89], 4),
        p99_ms=round(cuts[98], 4),
        msgs_per_s=round(len(latencies) / elapsed, 1),
    )


def redacted(url: str) -> str:
    """The URL without its password, fit for a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


async def check_redis(redis_url: str) -> None:
    """Fail fast with a clear message instead of a layer timing out on a missing Redis."""
    try:
        async with aioredis.Redis.from_url(redis_url, socket_connect_timeout=2) as client:
            await client.ping()
    except (RedisError, OSError) as error:
        raise BenchError(
            f"Redis is not reachable at {redacted(redis_url)} ({error}); "
            "start it with scripts/services.sh or set REDIS_URL"
        ) from error


async def run(messages: int, redis_url: str) -> tuple[list[Result], list[str]]:
    prefix = f"parley-bench-{uuid.uuid4().hex[:8]}:"
    results: list[Result] = []
    errors: list[str] = []
    redis_error: str | None = None
    try:
        await check_redis(redis_url)
    except BenchError as error:
        redis_error = str(error)
        errors.append(redis_error)
    for mode in ("group_send", "send"):
        baseline_p50: float | None = None
        for layer in layers_under_test(redis_url, prefix):
            if layer.needs_redis and redis_error:
                continue
            print(f"measuring {layer.name} {mode} x{messages}", file=sys.stderr, flush=True)
            try:
                result = await measure(layer, mode, messages)
            except (BenchError, RedisError, OSError) as error:
                errors.append(f"{layer.name} {mode}: {type(error).__name__}: {error}")
                continue
            if baseline_p50 is None and layer.name == "InMemoryChannelLayer":
                baseline_p50 = result.p50_ms
            if baseline_p50:
                ratio = round(result.p50_ms / baseline_p50, 2)
                result = Result(**{**asdict(result), "p50_ratio_to_baseline": ratio})
            results.append(result)
    return results, errors


def format_table(results: list[Result]) -> str:
    header = ("layer", "send", "p50 ms", "p90 ms", "p99 ms", "msgs/s", "p50 ratio")
    rows = [
        (
            r.layer,
            r.mode,
            f"{r.p50_ms:.3f}",
            f"{r.p90_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.msgs_per_s:,.0f}",
            "-" if r.p50_ratio_to_baseline is None else f"{r.p50_ratio_to_baseline:.2f}x",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * width for width in widths))
    if any(r.lost for r in results):
        lines.append(
            "lost: " + ", ".join(f"{r.layer} {r.mode} {r.lost}" for r in results if r.lost)
        )
    return "\n".join(lines)


def message_count(text: str) -> int:
    value = int(text)
    if value < 100:
        raise argparse.ArgumentTypeError("needs at least 100 messages for a p99")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--messages",
        type=message_count,
        default=DEFAULT_MESSAGES,
        help=f"measured messages per layer (default {DEFAULT_MESSAGES})",
    )
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

    results, errors = asyncio.run(run(args.messages, redis_url))

    if args.json:
        report = {
            "bench": "channel_layer",
            "messages": args.messages,
            "warmup": WARMUP_MESSAGES,
            "results": [asdict(r) for r in results],
            "errors": errors,
        }
        print(json.dumps(report))
    else:
        print(f"channel layer relay latency, {args.messages} sequential messages per row")
        print(format_table(results))
    for error in errors:
        print(f"channel_layer: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
