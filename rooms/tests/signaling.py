"""Helpers of the signaling tests: an open room with a paid seat, and sockets that log in the
way a browser does (session cookie, our Origin) through the whole ASGI application."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import time_machine
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db.models import F
from django.test import Client
from django.utils.timezone import now as datetime_now

from accounts.models import User
from config.asgi import application
from rooms import services
from rooms.models import Room, Seat
from rooms.tests.factories import CALL_START, seat_booked

START = CALL_START
ORIGIN = (b"origin", b"http://testserver")


@dataclass(frozen=True)
class Call:
    room: Room
    seat: Seat
    expert: User
    client: User


def call_create() -> Call:
    """A private room whose lobby is open, its expert and a client who paid for the seat.

    The room runs by the clock of the test (the real one unless a test travels): it started a
    minute ago and has an hour to go, since admission follows the clock."""
    seat = seat_booked()
    with time_machine.travel(START - dt.timedelta(minutes=10), tick=False):
        services.rooms_advance()
    room_running_now(seat.room_id)
    room = Room.objects.select_related("expert").get(pk=seat.room_id)
    return Call(room, seat, room.expert, seat.client)


def room_running_now(room_id: int) -> None:
    """Move a room booked at CALL_START to the test's clock (the real one unless a test
    travels): started a minute ago, its length to go. Sockets are admitted by the clock."""
    shift = datetime_now() - dt.timedelta(minutes=1) - START
    Room.objects.filter(pk=room_id).update(
        starts_at=F("starts_at") + shift,
        ends_at=F("ends_at") + shift,
        blocked_from=F("blocked_from") + shift,
        blocked_until=F("blocked_until") + shift,
    )


def session_cookie(user: User) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    value = client.cookies[settings.SESSION_COOKIE_NAME].value
    return (b"cookie", f"{settings.SESSION_COOKIE_NAME}={value}".encode())


class Socket:
    """One participant's signaling socket."""

    def __init__(
        self,
        room_id: int,
        cookie: tuple[bytes, bytes] | None,
        origin: Any = ORIGIN,
        *,
        join_later: bool = False,
    ):
        """`join_later`: opened as the room page opens it on the preflight, admitted to
        nothing until it sends `join`."""
        headers = [h for h in (origin, cookie) if h is not None]
        path = f"/ws/rooms/{room_id}/" + ("?join=later" if join_later else "")
        self.communicator = WebsocketCommunicator(application, path, headers=headers)

    async def open(self) -> dict[str, Any]:
        connected, _ = await self.communicator.connect()
        assert connected
        return await self.receive()

    async def send(self, **message: Any) -> None:
        await self.communicator.send_to(text_data=json.dumps({"v": 1, **message}))

    async def send_raw(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 3) -> dict[str, Any]:
        message: dict[str, Any] = await self.communicator.receive_json_from(timeout)
        return message

    async def receive_type(self, kind: str, timeout: float = 3) -> dict[str, Any]:
        """The next message of `kind`, skipping others (heartbeat acks, room state…)."""
        while True:
            message = await self.receive(timeout)
            if message["type"] == kind:
                return message

    async def closed_with(self, timeout: float = 3) -> int | None:
        """The close code the server sent (skipping messages before it)."""
        while True:
            output = await self.communicator.receive_output(timeout)
            if output["type"] == "websocket.close":
                code: int | None = output.get("code")
                return code

    async def silent(self) -> bool:
        return bool(await self.communicator.receive_nothing(timeout=0.3))

    async def close(self) -> None:
        await self.communicator.disconnect()
