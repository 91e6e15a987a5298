"""The socket's own message loop (`messages_dispatch`) and its timers, attacked: order, a
source that fails, a close while a handler waits, a close during the join, and what is left
on the event loop once the socket is gone, however it went."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from autobahn.exception import Disconnected
from channels.db import database_sync_to_async

from rooms.consumers import RoomConsumer, messages_dispatch
from rooms.models import Presence
from rooms.tests.signaling import Call, call_create


async def test_messages_of_two_sources_are_dispatched_one_at_a_time_in_arrival_order() -> None:
    frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    seen: list[int] = []
    busy = False

    async def dispatch(message: dict[str, Any]) -> None:
        nonlocal busy
        assert not busy, "two messages dispatched at once"
        busy = True
        await asyncio.sleep(0)
        seen.append(message["n"])
        busy = False
        if len(seen) == 200:
            raise StopAsyncIteration

    for n in range(200):
        (frames if n % 3 else events).put_nowait({"n": n})
    with pytest.raises(StopAsyncIteration):
        await messages_dispatch([frames.get, events.get], dispatch)
    assert [n for n in seen if n % 3] == [n for n in range(200) if n % 3]
    assert [n for n in seen if not n % 3] == [n for n in range(200) if not n % 3]


async def test_a_failing_source_raises_after_what_it_delivered_and_stops_the_other() -> None:
    other_cancelled = asyncio.Event()
    delivered = iter([{"n": 1}, {"n": 2}])

    async def failing() -> dict[str, Any]:
        try:
            return next(delivered)
        except StopIteration:
            raise ConnectionResetError("gone") from None

    async def quiet() -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        finally:
            other_cancelled.set()
        raise AssertionError

    seen: list[int] = []

    async def dispatch(message: dict[str, Any]) -> None:
        seen.append(message["n"])

    with pytest.raises(ConnectionResetError):
        await messages_dispatch([failing, quiet], dispatch)
    assert seen == [1, 2]
    assert other_cancelled.is_set()


# --- the consumer, driven as Daphne drives it ----------------------------------------------


@pytest.fixture
def call() -> Iterator[Call]:
    yield call_create()


class Driven:
    """One RoomConsumer called with a scope, a receive and a send, as Daphne calls it."""

    def __init__(self, call: Call) -> None:
        self.consumer = RoomConsumer()
        self.inbound: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self.outbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # The participant began the closing handshake: Daphne's send raises, as autobahn does.
        self.closing = False
        scope = {
            "type": "websocket",
            "path": f"/ws/rooms/{call.room.pk}/",
            "headers": [],
            "url_route": {"args": (), "kwargs": {"room_id": str(call.room.pk)}},
            "user": call.client,
        }
        self.task = asyncio.create_task(self.consumer(scope, self.receive, self.send))

    async def send(self, message: dict[str, Any]) -> None:
        if self.closing and message["type"] == "websocket.send":
            raise Disconnected("Attempt to send on a closed protocol")
        await self.outbound.put(message)

    async def receive(self) -> dict[str, Any]:
        message = await self.inbound.get()
        if isinstance(message, Exception):
            raise message
        return message

    async def sent(self, kind: str) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.outbound.get(), 10)
            if message["type"] == kind or kind in message.get("text", ""):
                return message

    async def timers_set(self, count: int) -> None:
        """Wait until the consumer has set `count` timers: it sets them once the join's news
        is out, a moment after the welcome was sent."""
        async with asyncio.timeout(5):
            while len(self.timers_pending()) < count:
                await asyncio.sleep(0.01)

    def timers_pending(self) -> list[Any]:
        return [timer for timer in self.consumer.timers if not timer.cancelled()]


def _presence(call: Call) -> Presence:
    return Presence.objects.get(room=call.room, user=call.client)


@pytest.mark.django_db(transaction=True)
async def test_a_socket_closed_while_it_joins_closes_its_presence_and_its_timers(
    call: Call,
) -> None:
    driven = Driven(call)
    driven.inbound.put_nowait({"type": "websocket.connect"})
    driven.inbound.put_nowait({"type": "websocket.disconnect", "code": 1006})
    await asyncio.wait_for(driven.task, 10)
    presence = await database_sync_to_async(_presence)(call)
    assert (presence.closed_at is not None, presence.close_reason) == (True, "dropped")
    assert driven.timers_pending() == []


@pytest.mark.django_db(transaction=True)
async def test_a_socket_whose_loop_is_killed_leaves_no_timer_behind(call: Call) -> None:
    # Daphne cancels an application that takes more than application_close_timeout to end
    # after its client went (a handler stuck on the database), and all of them at shutdown.
    driven = Driven(call)
    driven.inbound.put_nowait({"type": "websocket.connect"})
    await driven.sent("welcome")
    await driven.timers_set(3)  # two warnings and the paid end
    driven.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await driven.task
    assert driven.timers_pending() == []


@pytest.mark.django_db(transaction=True)
async def test_a_socket_whose_source_fails_leaves_no_timer_behind(call: Call) -> None:
    driven = Driven(call)
    driven.inbound.put_nowait({"type": "websocket.connect"})
    await driven.sent("welcome")
    await driven.timers_set(3)
    driven.inbound.put_nowait(RuntimeError("the server's receive failed"))
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(driven.task, 10)
    assert driven.timers_pending() == []


@pytest.mark.django_db(transaction=True)
async def test_frames_answered_after_the_participant_began_to_close_do_not_crash_the_socket(
    call: Call,
) -> None:
    # Frames the participant sent just before its close are still handled; their answers
    # (an ack, an error) meet a socket whose closing handshake began, where Daphne's send
    # raises. Before, the answer's failure became a `server_error` answer, whose own failure
    # ended the socket's task with a traceback in the log.
    driven = Driven(call)
    driven.inbound.put_nowait({"type": "websocket.connect"})
    await driven.sent("welcome")
    driven.closing = True
    for text in (json.dumps({"v": 1, "type": "heartbeat"}), "not json"):
        driven.inbound.put_nowait({"type": "websocket.receive", "text": text})
    driven.inbound.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(driven.task, 10)
    presence = await database_sync_to_async(_presence)(call)
    assert presence.closed_at is not None
    assert driven.timers_pending() == []
