"""The consumer's message loop (rooms.consumers.messages_dispatch): the socket's frames and the
channel layer's messages reach the handlers one at a time, in the order they arrived, and the
loop ends as Channels' own does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.exceptions import StopConsumer

from rooms.consumers import messages_dispatch


class Source:
    """A source of messages like Daphne's `receive` or the channel layer's: awaited for the
    next message; records whether the loop cancelled it on the way out."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.cancelled = False

    async def __call__(self) -> dict[str, Any]:
        try:
            return await self.queue.get()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_messages_of_both_sources_are_handled_one_at_a_time_in_arrival_order() -> None:
    frames, layer = Source(), Source()
    handled: list[str] = []
    handling = False

    async def dispatch(message: dict[str, Any]) -> None:
        nonlocal handling
        assert not handling, "two messages were handled at once"
        handling = True
        # A handler that awaits (a database call, a send) while more messages arrive.
        await asyncio.sleep(0.005)
        handled.append(message["n"])
        handling = False
        if message["n"] == "stop":
            raise StopConsumer

    loop = asyncio.create_task(messages_dispatch([frames, layer], dispatch))
    await asyncio.sleep(0.01)  # both sources are being read
    for n in range(6):
        (frames if n % 2 else layer).queue.put_nowait({"n": str(n)})
        await asyncio.sleep(0)
    frames.queue.put_nowait({"n": "stop"})
    layer.queue.put_nowait({"n": "after the stop"})
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(loop, 5)
    assert handled == ["0", "1", "2", "3", "4", "5", "stop"]
    # Both sources were stopped: the channel layer's receive unsubscribes when cancelled.
    assert frames.cancelled and layer.cancelled


async def test_a_failing_source_ends_the_loop_with_its_error_and_stops_the_other() -> None:
    frames = Source()

    async def layer() -> dict[str, Any]:
        raise ConnectionResetError("Redis went away")

    async def dispatch(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing should be handled, got {message}")

    with pytest.raises(ConnectionResetError, match="Redis went away"):
        await asyncio.wait_for(messages_dispatch([frames, layer], dispatch), 5)
    assert frames.cancelled


async def test_an_error_in_a_handler_ends_the_loop_and_stops_both_sources() -> None:
    frames, layer = Source(), Source()

    async def dispatch(message: dict[str, Any]) -> None:
        raise ValueError("No handler for message type nonsense")

    frames.queue.put_nowait({"type": "nonsense"})
    with pytest.raises(ValueError, match="nonsense"):
        await asyncio.wait_for(messages_dispatch([frames, layer], dispatch), 5)
    assert frames.cancelled and layer.cancelled


async def test_a_loop_cancelled_while_its_sources_clean_up_lets_them_finish() -> None:
    """The channel layer's receive unsubscribes its channel when cancelled. Daphne may cancel
    the socket's task again while that runs (an application slow to close, a shutdown); the
    unsubscribe must still finish, or the channel stays subscribed for the process's life."""
    unsubscribed = asyncio.Event()
    cleaning = asyncio.Event()

    async def layer() -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await asyncio.sleep(0.05)  # the UNSUBSCRIBE's round trip
            unsubscribed.set()
            raise
        raise AssertionError

    async def dispatch(message: dict[str, Any]) -> None:
        raise StopConsumer

    frames = Source()
    frames.queue.put_nowait({"type": "websocket.disconnect"})
    loop = asyncio.create_task(messages_dispatch([frames, layer], dispatch))
    await asyncio.wait_for(cleaning.wait(), 5)
    loop.cancel()  # the second cancel, while the unsubscribe is under way
    with pytest.raises(asyncio.CancelledError):
        await loop
    await asyncio.wait_for(unsubscribed.wait(), 5)
