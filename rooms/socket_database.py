"""The signaling socket's path to the database: the threads its calls run on, and the batch
that turns every socket's heartbeat into one UPDATE per process per second.

Why the threads are sized as they are is in docs/ARCHITECTURE.md, The socket's database path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from rooms import services
from rooms.services.room_state import HEARTBEAT_FLUSH_SECONDS

logger = logging.getLogger(__name__)

# Channels' database_sync_to_async is thread-sensitive: with no request context around it (a
# WebSocket has none), every call of every socket in the process runs on asgiref's one
# shared thread, so one slow admission holds up all the others. The socket's calls get a
# pool of their own instead, as many threads as may usefully wait on PostgreSQL at once; the
# heartbeat batch gets one more of its own, so a join storm never delays a flush (the
# sweeper's margin counts on that). Each thread holds at most one pooled connection, for one
# call: settings refuse a pool too small for them.
SOCKET_EXECUTOR = ThreadPoolExecutor(
    max_workers=settings.SOCKET_DATABASE_THREADS, thread_name_prefix="socket-db"
)
FLUSH_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heartbeat-flush")


def database_call(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """`function` as a coroutine run on the socket's database threads; its connection goes
    back to the pool when it returns (Channels' DatabaseSyncToAsync closes it)."""
    call: Callable[..., Awaitable[Any]] = database_sync_to_async(
        function, thread_sensitive=False, executor=SOCKET_EXECUTOR
    )
    return call


Gone = Callable[[], Coroutine[Any, Any, None]]


class HeartbeatBatch:
    """One process's heartbeats on their way to the database.

    A socket's beat is noted here with the time it arrived (the time stored, so a presence
    still ends at its real last heartbeat) and acknowledged at once; one task flushes all
    beats every HEARTBEAT_FLUSH_SECONDS in one statement (`presences_heartbeat`). A beat is
    never dropped: when a flush fails (the database is down) or a row was held by another
    transaction, the beat stays for the next flush; a later beat of the same socket
    replaces it. A socket whose presence the flush finds gone (swept, closed with its room,
    replaced, past the paid end) is told through the callback it gave with its beat.
    """

    def __init__(self, interval: float = HEARTBEAT_FLUSH_SECONDS) -> None:
        self.interval = interval
        self.pending: dict[str, datetime] = {}
        self.listeners: dict[str, Gone] = {}
        self.task: asyncio.Task[None] | None = None
        # Callbacks running (the loop keeps only weak references to tasks).
        self.telling: set[asyncio.Task[None]] = set()
        self.failing = False

    def beat(self, connection_id: str, at: datetime, gone: Gone) -> None:
        earlier = self.pending.get(connection_id)
        self.pending[connection_id] = at if earlier is None else max(at, earlier)
        self.listeners[connection_id] = gone
        self._run()

    def pending_beat(self, connection_id: str) -> datetime | None:
        return self.pending.get(connection_id)

    def forget(self, connection_id: str) -> None:
        """The socket closed: nobody is left to tell. Its pending beat stays: it is a no-op on
        a closed row, and lands if the close itself could not be written."""
        self.listeners.pop(connection_id, None)

    def _run(self) -> None:
        # Started lazily, on the loop that serves the sockets; again if that loop changed
        # (each test has its own) or the task ended.
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._flush_every_interval())

    async def _flush_every_interval(self) -> None:
        while self.pending:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        beats, self.pending = self.pending, {}
        if not beats:
            return
        try:
            found = await database_sync_to_async(
                services.presences_heartbeat, thread_sensitive=False, executor=FLUSH_EXECUTOR
            )(beats)
        except BaseException as error:
            self._keep(beats)
            if isinstance(error, Exception):
                # Logged once per outage, not once a second.
                if not self.failing:
                    logger.warning("Heartbeats could not be stored; kept", exc_info=True)
                self.failing = True
                return
            raise  # cancelled: the beats are kept for whoever flushes next
        if self.failing:
            logger.warning("Heartbeats stored again after an outage")
        self.failing = False
        self._keep({connection_id: beats[connection_id] for connection_id in found.busy})
        for connection_id in found.gone:
            gone = self.listeners.pop(connection_id, None)
            if gone is not None:
                told: asyncio.Task[None] = asyncio.get_running_loop().create_task(gone())
                self.telling.add(told)
                told.add_done_callback(self.telling.discard)

    def _keep(self, beats: dict[str, datetime]) -> None:
        for connection_id, at in beats.items():
            newer = self.pending.get(connection_id)
            self.pending[connection_id] = at if newer is None else max(at, newer)


# One per process: every socket's beats share one flush.
heartbeats = HeartbeatBatch()
