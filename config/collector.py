"""When a serving process runs a full collection of CPython's cyclic garbage collector.

A full collection scans every object the process holds while its sockets wait, and an idle
socket is some 180 of them: 0.4–0.7 s at 4,000 sockets, 2.2 s at 10,000 on a 2-core machine.
CPython starts one whenever the objects moved to the oldest generation since the last grow by a
quarter, and a socket's wait for its next message (its consumer's receive task and futures)
outlives two younger collections and moves there at every heartbeat: at 4,000 idle sockets a
full collection came every 7–15 s, found nothing to free, and the heartbeats behind it missed
the 1 s p99 (bench/signaling.py with gc.callbacks, 2026-12-07).

What a full collection does free here is what closed sockets leave: Twisted's, autobahn's and
the consumer's objects refer to each other, so about half of a closed socket's memory waits for
one (1,000 sockets opened and closed six times grew the process by 22 MiB a round without it).
So the process starts one when sockets have closed, not when sockets beat: after `CLOSED_MIN`
closes, or a quarter of the sockets open if that is more, since the last (every WebSocket is
counted, refusals too, by `SocketsCounted` around the socket stack); and CPython's own
trigger waits for `FULL_COLLECTION_AFTER` middle-generation collections (its default is 10),
which bounds what other work (HTTP requests) leaves. Younger collections still free short-lived
cycles at once.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

FULL_COLLECTION_AFTER = 1000
# Below this a full collection would cost more (the ~130,000 objects a process loads at start,
# ~0.1 s) than the memory it frees (some 20 KiB a closed socket).
CLOSED_MIN = 500
# Daphne lets go of a finished socket's protocol and application once a second: the collection
# waits until it has, or the last sockets' objects would still be in use.
REAP_WAIT_S = 2.0


def collector_configure() -> None:
    """At the serving process's start (config/asgi.py)."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)


class SocketGarbage:
    """The sockets this process holds, and those closed since the last full collection."""

    def __init__(self) -> None:
        self.open = 0
        self.closed = 0
        # The closes the scheduled collection is for, and the loop it waits on.
        self.collecting = 0
        self.scheduled_on: asyncio.AbstractEventLoop | None = None

    def opened(self) -> None:
        self.open += 1

    def gone(self) -> None:
        self.open -= 1
        self.closed += 1
        loop = asyncio.get_running_loop()
        # A collection scheduled on a loop that has since ended (each test has its own) never
        # runs: this loop schedules its own.
        if self.scheduled_on is loop:
            return
        if self.closed >= max(CLOSED_MIN, self.open // 4):
            self.collecting = self.closed
            self.scheduled_on = loop
            loop.call_later(REAP_WAIT_S, self.collect)

    def collect(self) -> None:
        gc.collect()
        # Sockets that closed while it waited may still have been held: they count toward
        # the next one.
        self.closed = max(0, self.closed - self.collecting)
        self.collecting = 0
        self.scheduled_on = None


sockets = SocketGarbage()


class SocketsCounted:
    """ASGI middleware: every WebSocket the process serves, counted from its start to its end
    (refusals included: a refused socket's objects are garbage like any other's)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        sockets.opened()
        try:
            return await self.app(scope, receive, send)
        finally:
            sockets.gone()
