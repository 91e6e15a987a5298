"""The WebSocket stack every consumer sits behind, and the channel layer across processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django.urls import path

from accounts.tests.factories import UserFactory
from config.asgi import websocket_stack
from config.collector import FULL_COLLECTION_AFTER
from rooms.layers import RelayPubSubChannelLayer


class WhoAmI(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Says who the stack authenticated, then closes: enough to see the middleware work."""

    async def connect(self) -> None:
        await self.accept()
        user = self.scope["user"]
        await self.send_json({"email": user.email if user.is_authenticated else None})


application = websocket_stack([path("ws/whoami/", WhoAmI.as_asgi())])


async def _connect(headers: list[tuple[bytes, bytes]]) -> tuple[bool, Any]:
    communicator = WebsocketCommunicator(application, "/ws/whoami/", headers=headers)
    connected, _ = await communicator.connect()
    message = await communicator.receive_json_from() if connected else None
    await communicator.disconnect()
    return connected, message


@pytest.mark.django_db(transaction=True)
async def test_socket_from_our_origin_carries_the_session_user() -> None:
    user = await database_sync_to_async(UserFactory.create)()
    client = Client()
    await database_sync_to_async(client.force_login)(user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"

    connected, message = await _connect(
        [(b"origin", b"http://testserver"), (b"cookie", cookie.encode())]
    )

    assert connected
    assert message == {"email": user.email}


@pytest.mark.django_db(transaction=True)
async def test_socket_without_a_session_is_anonymous() -> None:
    connected, message = await _connect([(b"origin", b"http://testserver")])
    assert connected
    assert message == {"email": None}


@pytest.mark.parametrize(
    "headers",
    [[(b"origin", b"https://evil.example")], [(b"origin", b"null")], []],
    ids=["another site", "opaque origin", "no origin"],
)
@pytest.mark.django_db(transaction=True)
async def test_socket_from_another_site_is_refused_with_a_reason(
    headers: list[tuple[bytes, bytes]],
) -> None:
    communicator = WebsocketCommunicator(application, "/ws/whoami/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    error = await communicator.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "forbidden_origin")
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4406}


async def test_redis_channel_layer_delivers_between_two_processes_layers() -> None:
    # Two layer instances stand for two Daphne processes sharing one Redis.
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "rooms.layers.RelayPubSubChannelLayer"
    sender, receiver = RelayPubSubChannelLayer(**config), RelayPubSubChannelLayer(**config)
    try:
        channel = await receiver.new_channel()
        await receiver.group_add("room-1", channel)
        # Subscriptions are asynchronous in Redis: send again until the first message lands.
        # One receive stays waiting throughout (a receive cancelled by a timeout and begun
        # again can miss what arrived in between, which a busy machine made happen for 5 s).
        receiving = asyncio.ensure_future(receiver.receive(channel))
        deadline = asyncio.get_running_loop().time() + 20
        while not receiving.done():
            if asyncio.get_running_loop().time() > deadline:
                receiving.cancel()
                pytest.fail("no message crossed Redis within 20 s")
            await sender.group_send("room-1", {"type": "peer.joined", "who": "ada"})
            await asyncio.wait({receiving}, timeout=0.2)
        assert receiving.result() == {"type": "peer.joined", "who": "ada"}
    finally:
        await sender.flush()
        await receiver.flush()


def test_the_serving_process_defers_full_garbage_collections() -> None:
    # A fresh interpreter, as Daphne starts: loading the application is what sets the bound.
    probe = "import gc, config.asgi; print(*gc.get_threshold())"
    out = subprocess.run(  # noqa: S603 (our own interpreter)
        [sys.executable, "-c", probe],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert int(out[2]) == FULL_COLLECTION_AFTER > 10
