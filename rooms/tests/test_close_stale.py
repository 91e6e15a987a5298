"""What the close bills for a connection that went silent before it: a process that died, a
sweep that is late or a worker that is down must not bill its silence, and a beat that is only
waiting in its process's batch must not cut a live connection short."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from billing.models import Settlement
from rooms import services
from rooms.models import MediaLink, Offering, Presence, Room, RoomState, Seat
from rooms.tests.factories import CALL_START, seat_booked

pytestmark = pytest.mark.django_db

START = CALL_START
END = START + dt.timedelta(hours=1)


def _at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


def _live_call(offering: Offering) -> tuple[Seat, Room]:
    """A paid call that went live at START, both sides in with media up, beating until
    `_beats` says otherwise."""
    seat = seat_booked(offering)
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()
    for user in (room.expert, seat.client):
        Presence.objects.create(
            room=room,
            user=user,
            connection_id=f"in-{user.pk}",
            opened_at=_at(0),
            last_heartbeat_at=_at(0),
        )
    assert services.room_mark_live(room.pk, at=_at(0))
    MediaLink.objects.create(
        room=room,
        client=seat.client,
        reported_by=seat.client,
        started_at=_at(0),
        ended_at=None,
        candidate_type="host",
    )
    return seat, room


def _beats(room: Room, user_id: int, last: dt.datetime) -> None:
    Presence.objects.filter(room=room, user_id=user_id).update(last_heartbeat_at=last)


def _settlement(seat: Seat) -> Settlement:
    return Settlement.objects.get(payment=Seat.objects.get(pk=seat.pk).payment)


def test_a_connection_silent_since_its_process_died_is_billed_to_its_last_heartbeat(
    offering: Offering,
) -> None:
    """The client's Daphne died at minute 40 and no sweeper ran after it: the paid end closes
    the room (the expert's own socket does that without any worker), and the client's time
    ends at their last heartbeat, not at the close."""
    seat, room = _live_call(offering)
    _beats(room, room.expert_id, END)
    _beats(room, seat.client_id, _at(40))

    services.room_close(room.pk, reason="time_limit", actor=None, now=END)

    settlement = _settlement(seat)
    assert settlement.inputs["billable_seconds"] == 40 * 60
    client = Presence.objects.get(room=room, user=seat.client)
    assert (client.closed_at, client.close_reason) == (_at(40), "stale")
    expert = Presence.objects.get(room=room, user=room.expert)
    assert (expert.closed_at, expert.close_reason) == (END, "room_closed")
    assert Room.objects.get(pk=room.pk).state == RoomState.CLOSED


def test_a_connection_whose_last_beat_may_still_be_in_its_process_batch_is_billed_to_the_close(
    offering: Offering,
) -> None:
    """Heartbeats reach the database up to a flush margin late: 16 s of silence in the
    database is past the 15 s rule but within the margin, so the connection is still in."""
    seat, room = _live_call(offering)
    close_at = _at(20)
    stored_beat = close_at - dt.timedelta(seconds=16)
    assert services.presence_stale_before(close_at) < stored_beat
    _beats(room, room.expert_id, close_at)
    _beats(room, seat.client_id, stored_beat)

    services.room_close(room.pk, reason="ended_by_expert", actor=room.expert, now=close_at)

    assert _settlement(seat).inputs["billable_seconds"] == 20 * 60
    client = Presence.objects.get(room=room, user=seat.client)
    assert (client.closed_at, client.close_reason) == (close_at, "room_closed")


def test_a_close_that_runs_late_ends_a_connection_that_beat_past_the_paid_end_there(
    offering: Offering,
) -> None:
    """The sweep ran ten minutes late and the client's connection went silent after the paid
    end: the call still ends at the paid end, never at the later heartbeat."""
    seat, room = _live_call(offering)
    _beats(room, room.expert_id, END + dt.timedelta(minutes=10))
    _beats(room, seat.client_id, END + dt.timedelta(minutes=5))

    with time_machine.travel(END + dt.timedelta(minutes=10), tick=False):
        services.rooms_advance()

    assert _settlement(seat).inputs["billable_seconds"] == 60 * 60
    client = Presence.objects.get(room=room, user=seat.client)
    assert client.closed_at == END
