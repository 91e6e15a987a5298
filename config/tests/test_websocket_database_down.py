"""A socket opened while PostgreSQL restarts: Channels reads the session's user before any
consumer runs, so the database's error used to escape every handler (Daphne logged an
exception inside the application and failed the handshake). It is told `unavailable` and
closed 4503, as a consumer tells one, and the page dials again (found by bench/faults.py)."""

from __future__ import annotations

from typing import Any

import channels.auth
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import OperationalError

from config.asgi import application
from rooms.tests.signaling import ORIGIN, call_create, session_cookie


@pytest.mark.django_db(transaction=True)
async def test_a_socket_whose_session_cannot_be_read_is_told_unavailable_and_closed_4503(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = await database_sync_to_async(call_create)()
    cookie = await database_sync_to_async(session_cookie)(call.client)

    async def restarting(scope: Any) -> None:
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(channels.auth, "get_user", restarting)
    socket = WebsocketCommunicator(application, f"/ws/rooms/{call.room.pk}/", [ORIGIN, cookie])
    connected, _ = await socket.connect()
    assert connected
    error = await socket.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "unavailable")
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4503}
    await socket.wait()

    # Back up: the same socket is admitted.
    monkeypatch.undo()
    socket = WebsocketCommunicator(application, f"/ws/rooms/{call.room.pk}/", [ORIGIN, cookie])
    connected, _ = await socket.connect()
    assert connected
    assert (await socket.receive_json_from())["type"] == "welcome"
    await socket.disconnect()
