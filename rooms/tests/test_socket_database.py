"""The signaling socket's database path (docs/ARCHITECTURE.md, The socket's database path):
heartbeats batched into one UPDATE per process per flush, the stale rule as the database sees
it, beats kept through a failed flush, admission's round trips, and a relay that touches no
database."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError, connection
from django.db.backends.utils import CursorWrapper
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import UserFactory
from rooms import selectors, services
from rooms.models import Presence, RoomState, Seat, SeatState
from rooms.socket_database import HeartbeatBatch, heartbeats
from rooms.tests.signaling import Call, Socket, call_create, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


@contextmanager
def statements_everywhere() -> Iterator[list[str]]:
    """Every SQL statement any thread runs meanwhile (the socket's calls run on threads of
    their own, which a connection's CaptureQueriesContext does not see)."""
    seen: list[str] = []
    lock = threading.Lock()
    original = vars(CursorWrapper)["_execute_with_wrappers"]

    def recorded(self: CursorWrapper, sql: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            seen.append(sql)
        return original(self, sql, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CursorWrapper, "_execute_with_wrappers", recorded)
        yield seen


@pytest.fixture(autouse=True)
def _fresh_batch() -> Iterator[None]:
    # The process's batch outlives each test's event loop: start every test with it empty.
    heartbeats.pending.clear()
    heartbeats.listeners.clear()
    yield
    heartbeats.interval = HeartbeatBatch().interval


async def _in(call: Call) -> tuple[Socket, Socket]:
    expert = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.expert))
    client = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    await expert.open()
    await client.open()
    await expert.receive_type("peer_joined")
    return expert, client


async def _heartbeat(socket: Socket) -> dt.datetime:
    """One heartbeat; the time the server stamped it (its acknowledgement's server_time)."""
    await socket.send(type="heartbeat")
    ack = await socket.receive_type("heartbeat_ack")
    return dt.datetime.fromisoformat(ack["server_time"])


async def _presence(connection_id: str) -> Presence:
    presence: Presence = await database_sync_to_async(Presence.objects.get)(
        connection_id=connection_id
    )
    return presence


async def _until(condition: Callable[[], Any], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def test_the_beats_of_many_sockets_are_stored_by_one_update() -> None:
    calls = [await database_sync_to_async(call_create)() for _ in range(5)]
    sockets = [socket for call in calls for socket in await _in(call)]
    opened = {
        p.connection_id: p.last_heartbeat_at
        for p in await database_sync_to_async(list)(Presence.objects.all())
    }
    # One flush for all of them: a longer interval than sending ten beats takes.
    heartbeats.interval = 2.0
    with statements_everywhere() as statements:
        stamped = [await _heartbeat(socket) for socket in sockets]
        await _until(lambda: _nothing_pending(), 10)
    updates = [sql for sql in statements if "last_heartbeat_at" in sql]
    assert len(updates) == 1
    stored = {
        p.connection_id: p.last_heartbeat_at
        for p in await database_sync_to_async(list)(Presence.objects.all())
    }
    assert set(stored) == set(opened) and len(stored) == 10
    # Each row holds its own socket's beat, the time the server received it.
    assert sorted(stored.values()) == sorted(stamped)
    assert all(stored[c] > opened[c] for c in stored)
    for socket in sockets:
        await socket.close()


async def _nothing_pending() -> bool:
    return not heartbeats.pending and (heartbeats.task is None or heartbeats.task.done())


@override_settings(HEARTBEAT_STALE_SECONDS=2)
async def test_a_beating_socket_is_never_swept_and_a_silent_one_ends_at_its_last_beat() -> None:
    """Real time, with the stale rule shortened to 2 s: a sweeper runs all the time in a
    thread of its own while one socket beats well inside the rule and the other stops."""
    call = await database_sync_to_async(call_create)()
    expert, client = await _in(call)
    swept: list[int] = []
    stop = threading.Event()

    def sweeper() -> None:
        try:
            while not stop.is_set():
                swept.append(services.presences_sweep_stale())
                time.sleep(0.1)
        finally:
            connection.close()

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        last_client_beat = await _heartbeat(client)
        # The expert beats every 1.5 s, inside the 2 s rule; each beat then waits up to a
        # flush interval in the batch, so the database may see it 2.5 s after the one
        # before: a sweeper without the flush margin would end this presence.
        for _ in range(6):
            await _heartbeat(expert)
            await asyncio.sleep(1.5)
        # The client, silent since its one beat, is gone by now.
        await _until(lambda: _closed(call, call.client.pk), 5)
    finally:
        stop.set()
        thread.join(10)
    expert_rows = await database_sync_to_async(list)(
        Presence.objects.filter(room=call.room, user=call.expert)
    )
    assert [row.closed_at for row in expert_rows] == [None]
    client_rows = await database_sync_to_async(list)(
        Presence.objects.filter(room=call.room, user=call.client)
    )
    assert [(row.close_reason, row.closed_at) for row in client_rows] == [
        ("stale", last_client_beat)
    ]
    assert sum(swept) == 1
    # The swept socket learns it at its next heartbeat's flush.
    await client.send(type="heartbeat")
    assert await client.closed_with(timeout=5) == 4008
    await expert.close()


async def _closed(call: Call, user_id: int) -> bool:
    return bool(
        await database_sync_to_async(
            Presence.objects.filter(room=call.room, user_id=user_id, closed_at__isnull=False).exists
        )()
    )


async def test_a_beat_still_in_the_batch_is_written_with_the_close() -> None:
    call = await database_sync_to_async(call_create)()
    expert, client = await _in(call)
    heartbeats.interval = 60.0  # no flush before the socket closes
    beat = await _heartbeat(client)
    await client.close()
    await _until(lambda: _closed(call, call.client.pk), 5)
    row = await database_sync_to_async(Presence.objects.get)(room=call.room, user=call.client)
    assert row.close_reason == "dropped"
    assert row.closed_at is not None
    assert row.last_heartbeat_at == beat <= row.closed_at
    await expert.close()
    if heartbeats.task is not None:
        heartbeats.task.cancel()


async def test_a_failed_flush_keeps_its_beats_and_the_next_one_stores_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    call = await database_sync_to_async(call_create)()
    joined = await database_sync_to_async(services.presence_open)(
        call.room.pk, call.client, connection_id="beating"
    )
    opened_at = joined.presence.opened_at
    store = services.presences_heartbeat
    failures = [OperationalError("the database is down"), OperationalError("still down")]

    def flaky(beats: dict[str, dt.datetime]) -> services.Heartbeats:
        if failures:
            raise failures.pop(0)
        return store(beats)

    monkeypatch.setattr(services, "presences_heartbeat", flaky)
    gone: list[str] = []

    async def told() -> None:
        gone.append("beating")

    batch = HeartbeatBatch(interval=60.0)  # flushed by hand below
    beat = opened_at + dt.timedelta(seconds=5)
    batch.beat("beating", beat, told)
    try:
        await batch.flush()
        assert batch.pending == {"beating": beat}
        await batch.flush()
        assert batch.pending == {"beating": beat}
        # Logged once for the outage, not once per flush.
        assert [r.message for r in caplog.records].count(
            "Heartbeats could not be stored; kept"
        ) == 1
        row = await _presence("beating")
        assert row.last_heartbeat_at == opened_at
        await batch.flush()
    finally:
        assert batch.task is not None
        batch.task.cancel()
    assert batch.pending == {}
    row = await _presence("beating")
    # The beat's own time, not the time the database came back.
    assert row.last_heartbeat_at == beat
    assert gone == []


async def test_relaying_signals_touches_no_database() -> None:
    call = await database_sync_to_async(call_create)()
    expert, client = await _in(call)
    await client.receive_type("room_state")
    with statements_everywhere() as statements:
        for _ in range(20):
            await expert.send(type="signal", to=call.client.pk, data=OFFER)
            assert (await client.receive_type("signal"))["data"] == OFFER
            await client.send(type="signal", to=call.expert.pk, data=OFFER)
            assert (await expert.receive_type("signal"))["data"] == OFFER
    assert statements == []
    await expert.close()
    await client.close()


def _join_statements(call: Call, user: Any, connection_id: str) -> list[str]:
    """The statements of one admission as the socket runs it: presence_open, then welcome."""
    with CaptureQueriesContext(connection) as captured:
        joined = services.presence_open(call.room.pk, user, connection_id=connection_id)
        selectors.room_welcome(
            call.room.pk, user, resumed=joined.resumed, now=joined.presence.opened_at
        )
    # Savepoints stand for the transaction's BEGIN and COMMIT outside a test.
    return [query["sql"] for query in captured.captured_queries]


def test_admission_takes_a_fixed_number_of_round_trips() -> None:
    """The room's lock, then one read of everything admission decides on: seat, blocks,
    removal, recent joins, the last drop and who is in, whatever the room holds."""
    call = call_create()
    first = _join_statements(call, call.expert, "expert")
    goes_live = _join_statements(call, call.client, "client")
    replaces = _join_statements(call, call.client, "client-again")
    # The catch-up's read; BEGIN, the lock, the one read, [the replaced connection's end],
    # the presence, its event, [the live window: room_mark_live's savepoint, lock, the update
    # with its event, release], COMMIT; then welcome's room, presences [and peers' names].
    assert (len(first), len(goes_live), len(replaces)) == (9, 14, 11), (
        first,
        goes_live,
        replaces,
    )
    locked = goes_live[goes_live.index("BEGIN") : goes_live.index("COMMIT")]
    assert sum(sql.startswith("SELECT") for sql in locked) == 3  # lock, read, live's re-lock


def test_the_expert_joining_after_a_paid_client_takes_the_room_live() -> None:
    """Admission reads who is in with the seats: seat and room ids apart, as they are once a
    room has had more than one seat."""
    other = call_create()
    Seat.objects.create(
        room=other.room, client=UserFactory.create(), state=SeatState.CANCELED,
        reserved_until=other.room.starts_at,
    )  # fmt: skip
    call = call_create()
    assert call.seat.pk != call.room.pk
    client = services.presence_open(call.room.pk, call.client, connection_id="client")
    expert = services.presence_open(call.room.pk, call.expert, connection_id="expert")
    assert (client.went_live, expert.went_live) == (False, True)
    call.room.refresh_from_db()
    assert call.room.state == RoomState.LIVE


async def test_a_socket_the_server_closed_leaves_nothing_in_the_batch() -> None:
    call = await database_sync_to_async(call_create)()
    expert, client = await _in(call)
    heartbeats.interval = 60.0
    await _heartbeat(client)
    assert len(heartbeats.listeners) == 1
    # A reload: the old socket is told `replaced` and closed by the server.
    again = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    await again.open()
    assert await client.closed_with() == 4001
    await client.close()  # the server's close handshake ends, as Daphne's does
    await _until(lambda: _no_listeners(), 5)
    await again.close()
    await expert.close()
    if heartbeats.task is not None:
        heartbeats.task.cancel()


async def _no_listeners() -> bool:
    return not heartbeats.listeners
