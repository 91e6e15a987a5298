"""/healthz: is each component this process depends on reachable right now?

Each check does a real round trip (a query, a message through the channel layer, a broker
connection) under a timeout, so a hung dependency reports "down" instead of hanging the probe.
The answer is public, so it says only up or down per component; why a component is down
(host names, ports, roles) goes to the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from config.celery import app as celery_app

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[None]]


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def check_database() -> None:
    await sync_to_async(_database)()


async def check_channel_layer() -> None:
    # A private layer instance per probe, closed afterwards: a probe must not leave
    # subscriptions or connections behind in the layer that serves real sockets.
    from channels.layers import channel_layers

    layer = channel_layers.make_backend("default")
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        message = await layer.receive(channel)
        if message.get("type") != "health.ping":
            raise RuntimeError(f"unexpected message {message!r}")
    finally:
        # RedisChannelLayer.flush() would delete every group in Redis; close_pools() only
        # closes this instance's connections. The pub/sub and in-memory layers' flush() only
        # forgets this instance's own state.
        close = getattr(layer, "close_pools", None) or getattr(layer, "flush", None)
        if close is not None:
            await close()


def _broker() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=int(_timeout()))


async def check_broker() -> None:
    await sync_to_async(_broker, thread_sensitive=False)()


CHECKS: dict[str, Check] = {
    "database": check_database,
    "channel_layer": check_channel_layer,
    "broker": check_broker,
}


def _timeout() -> float:
    return float(settings.HEALTH_CHECK_TIMEOUT_SECONDS)


async def _run(name: str, check: Check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout=_timeout())
    except TimeoutError:
        logger.error("health: %s did not answer within %g s", name, _timeout())
        return {"status": "down"}
    except Exception:
        logger.exception("health: %s is down", name)
        return {"status": "down"}
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    return {"status": "up", "latency_ms": elapsed_ms}


@never_cache
@transaction.non_atomic_requests
async def healthz(request: HttpRequest) -> JsonResponse:
    results = await asyncio.gather(*(_run(name, check) for name, check in CHECKS.items()))
    components = dict(zip(CHECKS, results, strict=True))
    down = [name for name, result in components.items() if result["status"] != "up"]
    body = {"status": "down" if down else "ok", "down": down, "components": components}
    return JsonResponse(body, status=503 if down else 200)
