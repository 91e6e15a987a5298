"""Writers that decide on what they read before a lock, attacked while they wait on it: the
waiter must act on what the lock holder committed, not on what it read before."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import time_machine
from django.db import connection, transaction

from rooms import services
from rooms.models import CloseReason, Presence, Room, RoomEvent, RoomState, Seat
from rooms.tests.factories import CALL_START, seat_booked
from rooms.tests.races import lock_held_until_waited_on

START = CALL_START


def _live_call() -> tuple[Room, Seat]:
    seat = seat_booked()
    room = seat.room
    with time_machine.travel(START - dt.timedelta(minutes=5), tick=False):
        assert services.room_open(room.pk)
    with time_machine.travel(START, tick=False):
        services.presence_open(room.pk, room.expert, connection_id="expert")
        services.presence_open(room.pk, seat.client, connection_id="client")
    room.refresh_from_db()
    assert room.state == RoomState.LIVE
    return room, seat


def _in_thread(action: object) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(action())  # type: ignore[operator]
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_batch_skips_a_row_a_close_holds_and_then_finds_it_closed() -> None:
    _room, _seat = _live_call()
    at = START + dt.timedelta(minutes=3)
    holding, release = threading.Event(), threading.Event()

    def close_and_hold() -> None:
        # The connection is closed (a leave, a replace, the sweep) in a transaction that
        # has not committed while the batch runs.
        try:
            with transaction.atomic():
                Presence.objects.filter(connection_id="client").update(
                    closed_at=at, close_reason="left"
                )
                holding.set()
                assert release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=close_and_hold)
    holder.start()
    try:
        assert holding.wait(30)
        with time_machine.travel(at, tick=False):
            # The batch does not wait on the held row (a batch that waited could deadlock
            # against a room's close locking the same rows in another order): it answers
            # at once that the beat must be sent again, and stores the other socket's.
            beaten = _in_thread(lambda: services.presences_heartbeat({"client": at, "expert": at}))
            beaten[0].join(5)
            assert not beaten[0].is_alive()
    finally:
        release.set()
        holder.join(30)
    found = beaten[1][0]
    assert isinstance(found, services.Heartbeats)
    assert (set(found.alive), set(found.busy), set(found.gone)) == ({"expert"}, {"client"}, set())
    # Sent again after the close committed: the close stands, the beat is not stored.
    again = services.presences_heartbeat({"client": at})
    assert again.gone == {"client"}
    presence = Presence.objects.get(connection_id="client")
    assert (presence.closed_at, presence.last_heartbeat_at) == (at, START)
    assert Presence.objects.get(connection_id="expert").last_heartbeat_at == at


@pytest.mark.django_db(transaction=True)
def test_a_sweep_that_found_a_room_empty_does_not_close_it_after_a_join_committed_meanwhile() -> (
    None
):
    room, seat = _live_call()
    left = START + dt.timedelta(minutes=1)
    Presence.objects.filter(room=room).update(closed_at=left, close_reason="left")
    sweep_at = left + dt.timedelta(minutes=6)  # everyone gone for longer than the 5 min timeout

    def join() -> None:
        Presence.objects.create(
            room=room,
            user=seat.client,
            connection_id="back",
            opened_at=sweep_at,
            last_heartbeat_at=sweep_at,
        )

    with time_machine.travel(sweep_at, tick=False):
        # The sweep reads the room empty, then waits for the room's lock, which a join holds;
        # the join commits a connection before the sweep gets the lock.
        with lock_held_until_waited_on(
            lambda: Room.objects.select_for_update().get(pk=room.pk), waiters=1, then=join
        ) as held:
            thread, result = _in_thread(services.rooms_advance)
        thread.join(30)
    assert held.seen
    room.refresh_from_db()
    assert room.state == RoomState.LIVE
    assert result == [{"opened": 0, "closed": 0, "failed": 0}]
    assert not RoomEvent.objects.filter(room=room, kind="closed").exists()
    # Once the newcomer has gone too, for the timeout, the sweep closes it as empty.
    Presence.objects.filter(connection_id="back").update(closed_at=sweep_at)
    with time_machine.travel(sweep_at + dt.timedelta(minutes=6), tick=False):
        assert services.rooms_advance()["closed"] == 1
    room.refresh_from_db()
    assert room.close_reason == CloseReason.EMPTY
