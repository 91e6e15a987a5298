"""/healthz: is each component this process depends on reachable right now?

Each check does a real round trip (a query, a message through the channel layer, a broker
connection) under a timeout, so a hung dependency reports "down" instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from config.celery import app as celery_app

Check = Callable[[], Awaitable[dict[str, Any]]]


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


async def check_database() -> dict[str, Any]:
    return await sync_to_async(_database)()


async def check_channel_layer() -> dict[str, Any]:
    # A private layer instance per probe, flushed afterwards: a probe must not leave
    # subscriptions behind in the layer that serves real sockets.
    from channels.layers import channel_layers

    layer = channel_layers.make_backend("default")
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        message = await layer.receive(channel)
        if message.get("type") != "health.ping":
            raise RuntimeError(f"unexpected message {message!r}")
    finally:
        flush = getattr(layer, "flush", None)
        if flush is not None:
            await flush()
    return {"backend": type(get_channel_layer()).__name__}


def _broker() -> dict[str, Any]:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=int(_timeout()))
        return {"transport": conn.transport_cls}


async def check_broker() -> dict[str, Any]:
    return await sync_to_async(_broker, thread_sensitive=False)()


CHECKS: dict[str, Check] = {
    "database": check_database,
    "channel_layer": check_channel_layer,
    "broker": check_broker,
}


def _timeout() -> float:
    return float(settings.HEALTH_CHECK_TIMEOUT_SECONDS)


async def _run(check: Check) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        details = await asyncio.wait_for(check(), timeout=_timeout())
    except TimeoutError:
        return {"status": "down", "error": f"no answer within {_timeout():g} s"}
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    return {"status": "up", "latency_ms": elapsed_ms, **details}


@never_cache
async def healthz(request: HttpRequest) -> JsonResponse:
    results = await asyncio.gather(*(_run(check) for check in CHECKS.values()))
    components = dict(zip(CHECKS, results, strict=True))
    down = [name for name, result in components.items() if result["status"] != "up"]
    body = {"status": "down" if down else "ok", "down": down, "components": components}
    return JsonResponse(body, status=503 if down else 200)
